"""Virtual keys and teams: their records, hashing, the in-memory key cache and the auth step that reads it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.http.auth import Principal, key_id
from gateway.http.errors import GatewayError, unauthorized
from gateway.tasks import cancel

KEY_PREFIX = "sk-llmp-"


def hash_key(key: str) -> str:
    """The stored form of a key (LiteLLM calls it the `token`): its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_name(key: str) -> str:
    """The abbreviated form shown in lists (LiteLLM's `key_name`): never enough to use the key."""
    return f"{key[:8]}...{key[-4:]}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits shared by keys and teams; None means no limit."""

    max_budget: float | None = None
    budget_duration: str | None = None  # None with a max_budget: a lifetime budget
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None


@dataclass(frozen=True, slots=True)
class Team:
    team_id: str
    team_alias: str | None = None
    models: tuple[str, ...] = ()
    residency: str | None = None
    limits: Limits = Limits()
    metadata: dict[str, Any] = field(default_factory=dict)
    blocked: bool = False
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class User:
    """A person or service owning keys (LiteLLM's internal user): a budget and limits over all its keys."""

    user_id: str
    user_email: str | None = None
    user_alias: str | None = None
    user_role: str | None = None
    models: tuple[str, ...] = ()  # empty: every model
    limits: Limits = Limits()
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A key as the request path sees it: the hash (`token`), never the key itself."""

    token: str
    key_name: str
    key_alias: str | None = None
    team_id: str | None = None
    models: tuple[str, ...] = ()  # empty: every model
    residency: str | None = None  # pins the key's traffic to this residency zone
    limits: Limits = Limits()
    model_rpm_limit: dict[str, int] = field(default_factory=dict)
    model_tpm_limit: dict[str, int] = field(default_factory=dict)
    max_tokens: int | None = None  # cap on max_tokens / max_completion_tokens: over it, a 400
    max_request_bytes: int | None = None
    expires: float | None = None  # unix seconds
    metadata: dict[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    blocked: bool = False
    created_at: float = 0.0

    @property
    def key_id(self) -> str:
        return "key-" + self.token[:12]


@dataclass(frozen=True, slots=True)
class KeyPrincipal(Principal):
    """The caller: a virtual key and its team, or the master key (both None)."""

    key: VirtualKey | None = None
    team: Team | None = None
    user: User | None = None


class KeySource(Protocol):
    """What the key cache reads: the durable key store."""

    async def key_fingerprint(self) -> tuple[int, int]: ...

    async def load_keys(self) -> tuple[list[VirtualKey], list[Team]]: ...

    async def list_users(self) -> list[User]: ...


class KeyCache:
    """Every live key and team in memory, so no request waits on the store; refreshed every few seconds.

    Revocation reaches every replica within `refresh_seconds` plus one store query: the
    refresh compares a cheap fingerprint (row count and a sum of per-row random revisions)
    and reloads only when it changed. If the store is unreachable the cache keeps serving
    what it last loaded (a store outage never turns into 401s for known keys).
    """

    def __init__(self, source: KeySource, refresh_seconds: float, on_event: Callable[..., None]) -> None:
        self.source = source
        self.refresh_seconds = refresh_seconds
        self._event = on_event
        self.by_hash: dict[str, VirtualKey] = {}
        self.teams: dict[str, Team] = {}
        self.users: dict[str, User] = {}
        self.loaded_at = 0.0
        self.generation = 0  # bumped on every reload: derived caches (limit scopes) start over
        self._fingerprint: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._store_down = False

    async def refresh(self, force: bool = False) -> bool:
        fingerprint = await self.source.key_fingerprint()
        if force or fingerprint != self._fingerprint:
            keys, teams = await self.source.load_keys()
            users = await self.source.list_users()
            self.by_hash = {k.token: k for k in keys}
            self.teams = {t.team_id: t for t in teams}
            self.users = {u.user_id: u for u in users}
            self._fingerprint = fingerprint
            self.generation += 1
        self.loaded_at = time.time()
        return True

    def hold_peer_keys(self, keys: list[tuple[VirtualKey, bool]]) -> int:
        """Keys (and whether revoked) that peers in other regions sent while the local store cannot take them
        (gateway.governance.peers): a revocation drops the key from memory, a key unknown here is added. Edits of
        known keys wait for the store, since memory holds no versions to compare; the peers send them again until
        the store has them, and its next reload replaces all of this. How many keys changed."""
        by_hash = dict(self.by_hash)
        changed = 0
        for key, revoked in keys:
            if revoked:
                changed += by_hash.pop(key.token, None) is not None
            elif key.token not in by_hash:
                by_hash[key.token] = key
                changed += 1
        if changed:
            self.by_hash = by_hash
            self.generation += 1
        return changed

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                async with asyncio.timeout(max(self.refresh_seconds * 5, 5)):
                    await self.refresh()
                if self._store_down:
                    self._store_down = False
                    self._event("key_store_recovered", keys=len(self.by_hash))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep serving the cached keys; report once per outage
                if not self._store_down:
                    self._store_down = True
                    self._event("key_store_unavailable", error=f"{type(exc).__name__}: {exc}"[:300],
                                serving_cached_keys=len(self.by_hash))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None


class VirtualKeyAuth:
    """The Authenticator with governance on: the master key, or a live virtual key from the cache."""

    def __init__(self, master_key: str, cache: KeyCache, clock: Callable[[], float] = time.time) -> None:
        self.set_master_key(master_key)
        self.cache = cache
        self._clock = clock
        self.unreadable: str | None = None  # why no virtual key can be checked here (the key store is unreadable)

    def set_master_key(self, master_key: str) -> None:
        """"" while the master key's secret has no value yet: then no header is the master key."""
        self._master = ("Bearer " + master_key).encode() if master_key else None
        self._master_principal = KeyPrincipal(key_id("master:" + master_key))

    def has_master_key(self) -> bool:
        return self._master is not None

    def is_master(self, authorization: str | None) -> bool:
        # surrogateescape: header bytes that are not UTF-8 (decoded by aiohttp to surrogates) compare unequal.
        return bool(authorization) and self._master is not None and \
            hmac.compare_digest(authorization.encode("utf-8", "surrogateescape"), self._master)  # type: ignore[union-attr]

    def authenticate(self, authorization: str | None) -> KeyPrincipal:
        if not authorization:
            raise unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
        if self.is_master(authorization):
            return self._master_principal
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented or not presented.isascii():
            raise unauthorized("Incorrect API key provided.")
        # Looked up by SHA-256 digest: timing reveals nothing about the key; the hit is compared in constant time.
        digest = hash_key(presented.strip())
        key = self.cache.by_hash.get(digest)
        if key is None and self.unreadable is not None:
            # Not a 401: the key may well be valid; this replica cannot read the store that would say so.
            raise GatewayError(503, f"Virtual keys cannot be checked on this replica: {self.unreadable}.",
                               "service_unavailable", None, "key_store_unreadable")
        if key is None or not hmac.compare_digest(key.token, digest):
            raise unauthorized("Incorrect API key provided.")
        if key.blocked:
            raise unauthorized("This key is blocked.")
        if key.expires is not None and key.expires <= self._clock():
            raise unauthorized("This key has expired.")
        team = None
        if key.team_id is not None:
            team = self.cache.teams.get(key.team_id)
            if team is not None and team.blocked:
                raise GatewayError(403, f"Team `{key.team_id}` is blocked.", "permission_error", None, "team_blocked")
        user = self.cache.users.get(key.user_id) if key.user_id is not None else None
        return KeyPrincipal(key.key_id, key, team, user)
