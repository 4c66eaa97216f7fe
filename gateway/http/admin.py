"""The admin API (master key only), compatible with LiteLLM's key and team management calls, and spend reports.

    POST /key/generate   {key_alias, duration, models, max_budget, budget_duration, rpm_limit, tpm_limit,
                          max_parallel_requests, team_id, metadata, user_id, expires, key,
                          residency, max_tokens, max_request_bytes, model_rpm_limit, model_tpm_limit, blocked}
                         -> {key, key_name, token, expires, ...}   (the only time the key itself is shown)
    POST /key/update     {key, <fields to change>}      (null clears a limit)
    POST /key/delete     {keys: [...]} and/or {key_aliases: [...]}  -> {deleted_keys: [...]}
    GET  /key/info?key=  key or its token (hash)        -> {key, info: {..., spend}}
    GET  /key/list[?team_id=]                           -> {keys: [tokens], total_count, data: [...]}
    POST /team/new       {team_id, team_alias, models, max_budget, budget_duration, rpm_limit, tpm_limit,
                          max_parallel_requests, metadata, residency, blocked}
    POST /team/update    {team_id, <fields>}
    GET  /team/info?team_id=, GET /team/list
    GET  /spend/report?group_by=key|team|model|day[&start_date=YYYY-MM-DD][&end_date=][&key=][&team_id=]

Fields LiteLLM knows and this gateway does not use are accepted and listed back in
`ignored_fields`, so existing scripts keep working. Errors use OpenAI's error JSON.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.governance.bounds import MAX_TEXT
from gateway.governance.gate import Governance
from gateway.governance.keys import KEY_PREFIX, Team, VirtualKey, hash_key, key_name, new_key
from gateway.governance.store.protocol import Conflict, StoreError
from gateway.http.admin_fields import (
    DeleteFields,
    KeyFields,
    TeamFields,
    expiry,
    key_view,
    limits_from,
    parse_fields,
    team_view,
)
from gateway.http.errors import GatewayError, bad_request, master_key_not_set, unauthorized

JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TOKEN = re.compile(r"^[0-9a-f]{64}$")


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=JSON)


def _query(http: web.Request, name: str) -> str | None:
    """A query parameter naming a key, team or alias: bounded, no NUL (PostgreSQL's text cannot hold one, and the
    lookup would fail as if the store were down)."""
    value = http.query.get(name)
    if value is not None and (len(value) > MAX_TEXT or "\x00" in value):
        raise bad_request(f"{name}: at most {MAX_TEXT} characters, and no NUL", name)
    return value


class AdminApi:
    def __init__(self, governance: Governance) -> None:
        self.gov = governance
        self.store = governance.store

    def routes(self) -> list[web.RouteDef]:
        guard = self._guard
        return [
            web.post("/key/generate", guard(self.key_generate)),
            web.post("/key/update", guard(self.key_update)),
            web.post("/key/delete", guard(self.key_delete)),
            web.get("/key/info", guard(self.key_info)),
            web.get("/key/list", guard(self.key_list)),
            web.post("/team/new", guard(self.team_new)),
            web.post("/team/update", guard(self.team_update)),
            web.get("/team/info", guard(self.team_info)),
            web.get("/team/list", guard(self.team_list)),
            web.get("/spend/report", guard(self.spend_report)),
            web.get("/global/spend/report", guard(self.spend_report)),
        ]

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(http: web.Request) -> web.StreamResponse:
            try:
                authorization = http.headers.get("Authorization")
                if not authorization:
                    raise unauthorized("Missing API key: send `Authorization: Bearer <master key>`.")
                if not self.gov.auth.has_master_key():
                    raise master_key_not_set()
                if not self.gov.auth.is_master(authorization):
                    try:
                        self.gov.auth.authenticate(authorization)
                    except GatewayError:
                        raise unauthorized("Incorrect API key provided.") from None
                    raise GatewayError(403, "The admin API needs the master key; a virtual key cannot manage keys.",
                                       "permission_error", None, "admin_only")
                return await handler(http)
            except GatewayError as exc:
                return exc.response()
            except Conflict as exc:
                return GatewayError(400, f"Already exists: {exc}", "invalid_request_error").response()
            except StoreError as exc:
                # Writes need the store; the request path does not (keys are served from memory).
                return GatewayError(503, f"Key store unavailable: {exc}", "service_unavailable", None,
                                    "store_unavailable").response()

        return guarded

    async def _body(self, http: web.Request) -> Any:
        try:
            return orjson.loads(await http.read())
        except orjson.JSONDecodeError:
            raise bad_request("The request body is not valid JSON.") from None

    async def _team(self, team_id: str | None, field: str = "team_id") -> Team | None:
        if team_id is None:
            return None
        team = await self.store.get_team(team_id)
        if team is None:
            raise bad_request(f"{field}: team `{team_id}` does not exist; create it with POST /team/new", field)
        return team

    async def _changed(self) -> None:
        # This replica sees its own change at once; the others within keys.refresh_seconds.
        try:
            await self.gov.cache.refresh(force=True)
        except StoreError:
            pass

    # ---- keys -----------------------------------------------------------------------------------

    async def key_generate(self, http: web.Request) -> web.Response:
        fields = parse_fields(KeyFields, await self._body(http))
        assert isinstance(fields, KeyFields)
        await self._team(fields.team_id)
        now = time.time()
        key = fields.key or new_key()
        if fields.key is not None and (not key.startswith("sk-") or len(key) < 20):
            raise bad_request("key: a custom key must start with `sk-` and be at least 20 characters", "key")
        record = VirtualKey(
            token=hash_key(key), key_name=key_name(key), key_alias=fields.key_alias, team_id=fields.team_id,
            models=tuple(fields.models or ()), residency=fields.residency, limits=limits_from(fields),
            model_rpm_limit=fields.model_rpm_limit or {}, model_tpm_limit=fields.model_tpm_limit or {},
            max_tokens=fields.max_tokens, max_request_bytes=fields.max_request_bytes,
            expires=expiry(fields, now), metadata=fields.metadata or {}, user_id=fields.user_id,
            blocked=bool(fields.blocked), created_at=now,
        )
        await self.store.insert_key(record)
        await self._changed()
        view = {"key": key, **key_view(record)}
        if fields.model_extra:
            view["ignored_fields"] = sorted(fields.model_extra)
        return _json(view)

    async def _resolve_key(self, given: Any, field: str = "key") -> tuple[VirtualKey, bool]:
        if not isinstance(given, str) or not given:
            raise bad_request(f"{field}: required: the key, or its token", field)
        token = given if _TOKEN.match(given) else hash_key(given)
        found = await self.store.get_key(token)
        if found is None:
            raise GatewayError(404, f"{field}: no such key", "invalid_request_error", field, "key_not_found")
        return found

    async def key_update(self, http: web.Request) -> web.Response:
        body = await self._body(http)
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        key, revoked = await self._resolve_key(body.get("key"))
        if revoked:
            raise bad_request("key: this key was deleted; generate a new one", "key")
        fields = parse_fields(KeyFields, {k: v for k, v in body.items() if k != "key"})
        assert isinstance(fields, KeyFields)
        if "team_id" in fields.model_fields_set:
            await self._team(fields.team_id)
        changes: dict[str, Any] = {"limits": limits_from(fields, key.limits)}
        for name in ("key_alias", "team_id", "residency", "max_tokens", "max_request_bytes", "user_id"):
            if name in fields.model_fields_set:
                changes[name] = getattr(fields, name)
        for name in ("model_rpm_limit", "model_tpm_limit", "metadata"):
            if name in fields.model_fields_set:
                changes[name] = getattr(fields, name) or {}
        if "models" in fields.model_fields_set:
            changes["models"] = tuple(fields.models or ())
        if "blocked" in fields.model_fields_set:
            changes["blocked"] = bool(fields.blocked)
        if fields.model_fields_set & {"duration", "expires"}:
            changes["expires"] = expiry(fields, time.time())
        updated = dataclasses.replace(key, **changes)
        await self.store.update_key(updated)
        await self._changed()
        view = key_view(updated)
        if fields.model_extra:
            view["ignored_fields"] = sorted(fields.model_extra)
        return _json(view)

    async def key_delete(self, http: web.Request) -> web.Response:
        fields = parse_fields(DeleteFields, await self._body(http))
        assert isinstance(fields, DeleteFields)
        if not fields.keys and not fields.key_aliases:
            raise bad_request("keys: give `keys` (keys or tokens) and/or `key_aliases`", "keys")
        tokens = []
        for i, given in enumerate(fields.keys):
            key, _ = await self._resolve_key(given, f"keys[{i}]")
            tokens.append(key.token)
        by_alias = await self.store.find_tokens_by_alias(fields.key_aliases)
        if fields.key_aliases and not by_alias:
            raise GatewayError(404, "key_aliases: no live key has these aliases", "invalid_request_error",
                               "key_aliases", "key_not_found")
        deleted = await self.store.revoke_keys(list(dict.fromkeys(tokens + by_alias)))
        await self._changed()
        return _json({"deleted_keys": deleted})

    async def key_info(self, http: web.Request) -> web.Response:
        given = _query(http, "key")
        key, revoked = await self._resolve_key(given)
        spend = await self.store.spend_report("key", None, None, key.token, None)
        info = key_view(key, revoked)
        info["spend"] = sum(row["spend"] for row in spend)
        return _json({"key": given, "info": info})

    async def key_list(self, http: web.Request) -> web.Response:
        rows = await self.store.list_keys(_query(http, "team_id"))
        include_revoked = http.query.get("include_deleted") in ("1", "true")
        data = [key_view(k, r) for k, r in rows if include_revoked or not r]
        return _json({"keys": [d["token"] for d in data], "total_count": len(data), "current_page": 1,
                      "total_pages": 1, "data": data})

    # ---- teams ----------------------------------------------------------------------------------

    async def team_new(self, http: web.Request) -> web.Response:
        fields = parse_fields(TeamFields, await self._body(http))
        assert isinstance(fields, TeamFields)
        team = Team(team_id=fields.team_id or str(uuid.uuid4()), team_alias=fields.team_alias,
                    models=tuple(fields.models or ()), residency=fields.residency, limits=limits_from(fields),
                    metadata=fields.metadata or {}, blocked=bool(fields.blocked), created_at=time.time())
        try:
            await self.store.insert_team(team)
        except Conflict:
            raise bad_request(f"team_id: team `{team.team_id}` already exists", "team_id") from None
        await self._changed()
        return _json(team_view(team))

    async def team_update(self, http: web.Request) -> web.Response:
        fields = parse_fields(TeamFields, await self._body(http))
        assert isinstance(fields, TeamFields)
        if not fields.team_id:
            raise bad_request("team_id: required", "team_id")
        team = await self.store.get_team(fields.team_id)
        if team is None:
            raise GatewayError(404, f"team_id: team `{fields.team_id}` does not exist", "invalid_request_error",
                               "team_id", "team_not_found")
        changes: dict[str, Any] = {"limits": limits_from(fields, team.limits)}
        for name in ("team_alias", "residency"):
            if name in fields.model_fields_set:
                changes[name] = getattr(fields, name)
        if "models" in fields.model_fields_set:
            changes["models"] = tuple(fields.models or ())
        if "metadata" in fields.model_fields_set:
            changes["metadata"] = fields.metadata or {}
        if "blocked" in fields.model_fields_set:
            changes["blocked"] = bool(fields.blocked)
        updated = dataclasses.replace(team, **changes)
        await self.store.update_team(updated)
        await self._changed()
        return _json(team_view(updated))

    async def team_info(self, http: web.Request) -> web.Response:
        team_id = _query(http, "team_id")
        if not team_id:
            raise bad_request("team_id: required", "team_id")
        team = await self.store.get_team(team_id)
        if team is None:
            raise GatewayError(404, f"team_id: team `{team_id}` does not exist", "invalid_request_error",
                               "team_id", "team_not_found")
        spend = await self.store.spend_report("team", None, None, None, team_id)
        keys = [key_view(k) for k, revoked in await self.store.list_keys(team_id) if not revoked]
        return _json({"team_id": team_id, "team_info": {**team_view(team), "spend": sum(r["spend"] for r in spend)},
                      "keys": keys})

    async def team_list(self, http: web.Request) -> web.Response:
        return _json([team_view(t) for t in await self.store.list_teams()])

    # ---- spend ----------------------------------------------------------------------------------

    async def spend_report(self, http: web.Request) -> web.Response:
        q = http.query
        for name in ("key", "team_id"):
            _query(http, name)
        group_by = q.get("group_by", "key")
        if group_by not in ("key", "team", "model", "day"):
            raise bad_request(f"group_by: {group_by!r} is not one of key, team, model, day", "group_by")
        dates = {}
        for name in ("start_date", "end_date"):
            value = q.get(name)
            if value is not None:
                try:
                    dates[name] = dt.date.fromisoformat(value).isoformat()
                except ValueError:
                    raise bad_request(f"{name}: {value!r} is not a date like 2026-01-31", name) from None
        token = None
        if q.get("key"):
            token = q["key"] if _TOKEN.match(q["key"]) else hash_key(q["key"])
        rows = await self.store.spend_report(group_by, dates.get("start_date"), dates.get("end_date"), token,
                                             q.get("team_id"))
        return _json({"group_by": group_by, "start_date": dates.get("start_date"), "end_date": dates.get("end_date"),
                      "data": rows, "total_spend": round(sum(r["spend"] for r in rows), 10)})


__all__ = ["KEY_PREFIX", "AdminApi"]
