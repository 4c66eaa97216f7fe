"""Config sections of governance: secrets, redis, ledger and keys, and the duration strings they use."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.governance.bounds import MAX_DURATION_SECONDS


class _Strict(BaseModel):
    # Same rule as gateway.config.native: unknown keys are typos, refused by name.
    model_config = ConfigDict(extra="forbid", frozen=True)


SECRET = "secret/"
_DURATION = re.compile(r"^(\d{1,12})(s|m|h|d|mo)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "mo": 30 * 86400}  # a month is 30 days, epoch-aligned


def parse_duration(text: str) -> int:
    """LiteLLM's duration strings (`30s`, `30m`, `30h`, `30d`, `1mo`) in seconds; ValueError names the problem."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{str(text)[:40]!r} is not a duration like 30s, 10m, 24h, 30d or 1mo")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    # Budget windows are sent to Redis as seconds and TTLs: bounded so that no count or expiry overflows there.
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is longer than 100 years (36500d), the longest duration accepted")
    return seconds


class SecretsSettings(_Strict):
    """Where `secret/<name>` references are read: AWS Secrets Manager under the stack's path, or the environment."""

    source: Literal["env", "aws-secretsmanager"] = "env"
    stack: str | None = None
    region: str | None = None
    refresh_seconds: float = Field(300.0, ge=1)
    endpoint_url: str | None = None  # a VPC endpoint, or a local Secrets Manager in tests

    @model_validator(mode="after")
    def _aws_needs_stack(self) -> SecretsSettings:
        if self.source == "aws-secretsmanager" and not self.stack:
            raise ValueError("'stack' is required when source is aws-secretsmanager")
        return self


class RedisSettings(_Strict):
    """Shared counters for limits and budgets across replicas."""

    url: str = Field(min_length=1)
    on_unavailable: Literal["fail-open", "fail-closed"] = "fail-open"
    timeout_ms: float = Field(100.0, gt=0)  # longest wait for one limiter round trip
    retry_after_ms: float = Field(1000.0, ge=0)  # after a failure, skip Redis this long instead of waiting again
    settle_interval_ms: float = Field(20.0, gt=0)  # settlements and unused leases go back once per interval
    lease_requests: int = Field(32, ge=0, le=1000)  # calls' worth a replica may lease beyond the call; 0: none

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value.startswith(SECRET):
            return value  # read from the secret store at start (gateway.governance.provider_keys)
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError(f"{value!r} is not a redis:// or rediss:// URL")
        return value


class LedgerSettings(_Strict):
    """The durable local spool and the store it is flushed to (which also holds keys and teams)."""

    # None: ./llmp-spool/<the store's identity>, so that gateways of different stores never share a spool
    spool_dir: str | None = Field(None, min_length=1)
    store: str = "sqlite:///./llmp-ledger.db"
    # A PostgreSQL store's password, from a Secrets Manager secret in the JSON form RDS writes for a managed
    # master password ({"username", "password"}): read at every new connection, and again when it is refused
    # (gateway/governance/store/managed_password.py), so RDS's rotation never stops the gateway.
    store_password_secret: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+")
    flush_interval: float = Field(0.5, gt=0)
    batch: int = Field(500, ge=1, le=100_000)
    fsync: Literal["interval", "always"] = "interval"
    store_timeout: float = Field(10.0, gt=0)
    budget_sync_seconds: float = Field(60.0, ge=0)  # raise budget counters to the ledger's spend; 0: never

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if value.startswith(SECRET):
            return value  # a DSN with a password: read from the secret store at start
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"{value!r}: use sqlite:///path or postgresql://user@host/db")
        return value

    @model_validator(mode="after")
    def _password_secret_for_postgres(self) -> LedgerSettings:
        if self.store_password_secret and self.store.startswith("sqlite:///"):
            raise ValueError("store_password_secret: only a postgresql:// store has a password")
        return self


class KeySettings(_Strict):
    """How replicas learn about key changes made anywhere."""

    refresh_seconds: float = Field(2.0, gt=0, le=300)  # bound on revocation delay on every replica
    # What /user/new gives a user with role internal_user that names no max_budget / budget_duration (LiteLLM's
    # litellm_settings.max_internal_user_budget and internal_user_budget_duration).
    internal_user_max_budget: float | None = Field(None, ge=0)
    internal_user_budget_duration: str | None = None

    @field_validator("internal_user_budget_duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class PeerSettings(_Strict):
    """The other regions' gateways of the stack: keys, teams, users and budget spend pulled from each every interval
    (gateway.governance.peers; README "Several regions: keys and budgets across the stack")."""

    urls: list[str] = Field(min_length=1, max_length=32)  # each peer's base URL, e.g. https://gateway.eu-west-1...
    key: str = Field(min_length=1)  # secret/gateway/peer-key (or os.environ/...): the stack-wide peer credential
    interval: float = Field(5.0, ge=0.05, le=300)  # seconds between two pulls from each peer
    timeout: float = Field(2.0, gt=0, le=60)  # longest wait for one peer's answer

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        for i, url in enumerate(value):
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
                raise ValueError(f"urls[{i}]: {str(url)[:80]!r} is not an https:// URL")
            # The peer key travels in every pull: in clear text only to this machine (tests, a laptop).
            if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError(f"urls[{i}]: {url[:80]!r}: a peer is reached over https (http only on localhost)")
            if parts.query or parts.fragment:
                raise ValueError(f"urls[{i}]: {url[:80]!r}: a base URL has no query or fragment")
        if len(set(value)) != len(value):
            raise ValueError("urls: a peer is listed twice")
        return [u.rstrip("/") for u in value]

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not value.startswith(SECRET) and len(value) < 32:
            raise ValueError("at least 32 characters (or a secret/... reference)")
        return value
