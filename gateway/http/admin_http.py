"""What every admin endpoint shares: who is calling (the master key, or a virtual key reading its own records),
JSON in and out, bounded query parameters, and the store's errors as HTTP answers."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from gateway.governance.bounds import MAX_TEXT
from gateway.governance.gate import Governance
from gateway.governance.keys import Team, User, VirtualKey, hash_key
from gateway.governance.store.protocol import Conflict, LedgerStore, StoreError
from gateway.http.errors import GatewayError, bad_request, master_key_not_set, unauthorized

JSON = "application/json"
TOKEN = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Caller:
    """The master key (`admin`), or a virtual key with its team and user."""

    admin: bool
    key: VirtualKey | None = None
    team: Team | None = None
    user: User | None = None


Handler = Callable[[web.Request, Caller], Awaitable[web.StreamResponse]]


class AdminCore(Protocol):
    """What the users and spend endpoints use of the keys and teams API (gateway.http.admin.AdminApi)."""

    gov: Governance
    store: LedgerStore

    async def team(self, team_id: str | None, field: str = "team_id") -> Team | None: ...

    async def changed(self) -> None: ...

    async def ensure_user(self, user_id: str | None, user_email: str | None = None) -> User: ...

    async def spend_of(self, column: str, ident: str) -> float: ...

    async def create_key(self, fields: Any, body: dict[str, Any], **override: Any) -> dict[str, Any]: ...

    async def add_members(self, team_id: str, members: list[Any]) -> None: ...

    async def team_answer(self, team: Team) -> dict[str, Any]: ...


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=JSON)


def query(http: web.Request, name: str) -> str | None:
    """A query parameter naming a key, team, user or alias: bounded, no NUL (PostgreSQL's text cannot hold one, and
    the lookup would fail as if the store were down)."""
    value = http.query.get(name)
    if value is not None and (len(value) > MAX_TEXT or "\x00" in value):
        raise bad_request(f"{name}: at most {MAX_TEXT} characters, and no NUL", name)
    return value


def token_of(given: str) -> str:
    """A key's token: the key hashed, or the token itself (LiteLLM accepts both, and prefers the hash in URLs)."""
    return given if TOKEN.match(given) else hash_key(given)


async def read_body(http: web.Request) -> Any:
    try:
        return orjson.loads(await http.read())
    except orjson.JSONDecodeError:
        raise bad_request("The request body is not valid JSON.") from None


def forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, "permission_error", None, "admin_only")


def not_found(field: str, message: str, code: str) -> GatewayError:
    return GatewayError(404, f"{field}: {message}", "invalid_request_error", field, code)


def guarded(gov: Governance, handler: Handler, self_service: bool = False) -> Callable[[web.Request],
                                                                                        Awaitable[web.StreamResponse]]:
    """The master key may call every admin endpoint; a virtual key only `self_service` ones, which then check
    that it reads its own records (LiteLLM's info routes: litellm/proxy/auth/route_checks.py,
    `non_proxy_admin_allowed_routes_check`)."""

    async def call(http: web.Request) -> web.StreamResponse:
        try:
            authorization = http.headers.get("Authorization")
            if not authorization:
                raise unauthorized("Missing API key: send `Authorization: Bearer <master key>`.")
            if not gov.auth.has_master_key():
                raise master_key_not_set()
            if gov.auth.is_master(authorization):
                return await handler(http, Caller(admin=True))
            try:
                principal = gov.auth.authenticate(authorization)
            except GatewayError:
                raise unauthorized("Incorrect API key provided.") from None
            if not self_service:
                raise forbidden("The admin API needs the master key; a virtual key cannot manage keys.")
            return await handler(http, Caller(False, principal.key, principal.team, principal.user))
        except GatewayError as exc:
            return exc.response()
        except Conflict as exc:
            return GatewayError(400, f"Already exists: {exc}", "invalid_request_error").response()
        except StoreError as exc:
            # Writes need the store; the request path does not (keys are served from memory).
            return GatewayError(503, f"Key store unavailable: {exc}", "service_unavailable", None,
                                "store_unavailable").response()

    return call
