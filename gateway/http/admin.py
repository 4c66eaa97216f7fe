"""The admin API's keys and teams, compatible with LiteLLM's key and team management calls; the route table.

    POST /key/generate   {key_alias, duration, models, max_budget, budget_duration, rpm_limit, tpm_limit,
                          max_parallel_requests, team_id, metadata, user_id, expires, key,
                          residency, max_tokens, max_request_bytes, model_rpm_limit, model_tpm_limit, blocked}
                         -> every field of LiteLLM's GenerateKeyResponse (admin_litellm.py): key (the only
                            time it is shown), token_id (its hash), ...
    POST /key/update     {key, <fields to change>}      (null clears a limit) -> the key's fields, `key` included
    POST /key/delete     {keys: [...]} and/or {key_aliases: [...]}  -> {deleted_keys: [...]}
    GET  /key/info[?key=] key or its token (hash); a virtual key reads itself without `key`
    GET  /key/list[?team_id=][&user_id=]                -> {keys: [tokens], total_count, data: [...]}
    POST /team/new       {team_id, team_alias, models, max_budget, budget_duration, rpm_limit, tpm_limit,
                          max_parallel_requests, metadata, residency, blocked, members_with_roles}
    POST /team/update    {team_id, <fields>}
    GET  /team/info?team_id= (a virtual key: its own team, or one its user belongs to), GET /team/list
    Users and team members: admin_users.py; spend and model info: admin_spend.py.

The master key may call everything; a virtual key only reads its own key, team and user (LiteLLM's rules).
LiteLLM fields this gateway does not use are accepted when harmless (listed back in `ignored_fields`) and
refused, naming the field, when they would change who may call or what a call costs. Errors use OpenAI's
error JSON.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from aiohttp import web

from gateway.governance.gate import Governance
from gateway.governance.keys import KEY_PREFIX, Team, User, VirtualKey, hash_key, key_name, new_key
from gateway.governance.store.protocol import Conflict, StoreError
from gateway.http.admin_fields import (
    DeleteFields,
    KeyFields,
    Member,
    TeamFields,
    expiry,
    iso,
    key_view,
    limits_from,
    member_view,
    parse_fields,
    team_view,
)
from gateway.http.admin_http import Caller, forbidden, guarded, json_response, not_found, query, read_body, token_of
from gateway.http.admin_litellm import litellm_key, refuse_unsupported
from gateway.http.admin_spend import SpendApi
from gateway.http.admin_users import UserApi
from gateway.http.errors import GatewayError, bad_request


class AdminApi:
    def __init__(self, governance: Governance) -> None:
        self.gov = governance
        self.store = governance.store

    def routes(self) -> list[web.RouteDef]:
        g, users, spend = self.gov, UserApi(self), SpendApi(self)
        return [
            web.post("/key/generate", guarded(g, self.key_generate)),
            web.post("/key/update", guarded(g, self.key_update)),
            web.post("/key/delete", guarded(g, self.key_delete)),
            web.get("/key/info", guarded(g, self.key_info, self_service=True)),
            web.get("/key/list", guarded(g, self.key_list)),
            web.post("/team/new", guarded(g, self.team_new)),
            web.post("/team/update", guarded(g, self.team_update)),
            web.get("/team/info", guarded(g, self.team_info, self_service=True)),
            web.get("/team/list", guarded(g, self.team_list)),
            *users.routes(),
            *spend.routes(),
        ]

    async def team(self, team_id: str | None, field: str = "team_id") -> Team | None:
        if team_id is None:
            return None
        team = await self.store.get_team(team_id)
        if team is None:
            raise bad_request(f"{field}: team `{team_id}` does not exist; create it with POST /team/new", field)
        return team

    async def changed(self) -> None:
        # This replica sees its own change at once; the others within keys.refresh_seconds.
        try:
            await self.gov.cache.refresh(force=True)
        except StoreError:
            pass

    async def ensure_user(self, user_id: str | None, user_email: str | None = None) -> User:
        """The user by id, else by e-mail, else a new one with no limits (LiteLLM creates the user row a key or
        a team membership names: litellm/proxy/management_endpoints/key_management_endpoints.py,
        `generate_key_helper_fn`)."""
        found = await self.store.get_user(user_id) if user_id is not None else None
        if found is None and user_id is None and user_email is not None:
            found = await self.store.find_user_by_email(user_email)
        if found is not None:
            return found
        now = time.time()
        user = User(user_id=user_id or str(uuid.uuid4()), user_email=user_email, created_at=now, updated_at=now)
        try:
            await self.store.insert_user(user)
        except Conflict:  # made meanwhile by another call
            again = await self.store.get_user(user.user_id)
            if again is not None:
                return again
            raise
        return user

    async def spend_of(self, column: str, ident: str) -> float:
        rows = await self.store.spend_grouped((column,), {column: ident})
        return round(float(sum(r["spend"] for r in rows)), 10)

    # ---- keys -----------------------------------------------------------------------------------

    async def create_key(self, fields: KeyFields, body: dict[str, Any], **override: Any) -> dict[str, Any]:
        """Store a new key from `fields` (with `override`s); LiteLLM's GenerateKeyResponse for it."""
        ignored = refuse_unsupported(fields.model_extra)
        await self.team(fields.team_id)
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
        record = dataclasses.replace(record, **override)
        if record.user_id is not None:
            await self.ensure_user(record.user_id)
        await self.store.insert_key(record)
        await self.changed()
        # LiteLLM answers `token` with the key itself and `token_id` with its hash (generate_key_helper_fn).
        view = litellm_key({**key_view(record), "key": key, "token": key, "token_id": record.token, "spend": 0.0,
                            "duration": fields.duration, "updated_at": iso(now)}, body)
        if ignored:
            view["ignored_fields"] = ignored
        return view

    async def key_generate(self, http: web.Request, caller: Caller) -> web.Response:
        body = await read_body(http)
        fields = parse_fields(KeyFields, body)
        assert isinstance(fields, KeyFields)
        return json_response(await self.create_key(fields, body))

    async def resolve_key(self, given: Any, field: str = "key") -> tuple[VirtualKey, bool]:
        if not isinstance(given, str) or not given:
            raise bad_request(f"{field}: required: the key, or its token", field)
        found = await self.store.get_key(token_of(given))
        if found is None:
            raise not_found(field, "no such key", "key_not_found")
        return found

    async def key_update(self, http: web.Request, caller: Caller) -> web.Response:
        body = await read_body(http)
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        key, revoked = await self.resolve_key(body.get("key"))
        if revoked:
            raise bad_request("key: this key was deleted; generate a new one", "key")
        fields = parse_fields(KeyFields, {k: v for k, v in body.items() if k != "key"})
        assert isinstance(fields, KeyFields)
        ignored = refuse_unsupported(fields.model_extra)
        if "team_id" in fields.model_fields_set:
            await self.team(fields.team_id)
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
        if updated.user_id is not None and updated.user_id != key.user_id:
            await self.ensure_user(updated.user_id)
        await self.store.update_key(updated)
        await self.changed()
        view = litellm_key({**key_view(updated), "key": body["key"], "token_id": key.token,
                            "spend": await self.spend_of("key_token", key.token), "updated_at": iso(time.time())},
                           body)
        if ignored:
            view["ignored_fields"] = ignored
        return json_response(view)

    async def key_delete(self, http: web.Request, caller: Caller) -> web.Response:
        fields = parse_fields(DeleteFields, await read_body(http))
        assert isinstance(fields, DeleteFields)
        if not fields.keys and not fields.key_aliases:
            raise bad_request("keys: give `keys` (keys or tokens) and/or `key_aliases`", "keys")
        tokens = []
        for i, given in enumerate(fields.keys):
            key, _ = await self.resolve_key(given, f"keys[{i}]")
            tokens.append(key.token)
        by_alias = await self.store.find_tokens_by_alias(fields.key_aliases)
        if fields.key_aliases and not by_alias:
            raise not_found("key_aliases", "no live key has these aliases", "key_not_found")
        deleted = await self.store.revoke_keys(list(dict.fromkeys(tokens + by_alias)))
        await self.changed()
        return json_response({"deleted_keys": deleted})

    async def key_info(self, http: web.Request, caller: Caller) -> web.Response:
        given = query(http, "key")
        if given is None and caller.key is not None:
            given = caller.key.token  # LiteLLM: with no `key`, the key in the Authorization header
        key, revoked = await self.resolve_key(given)
        if not caller.admin:
            mine = caller.key is not None and (caller.key.token == key.token or (
                caller.key.user_id is not None and caller.key.user_id == key.user_id))
            if not mine:  # LiteLLM's _can_user_query_key_info: the key itself, or a key of the same user
                raise forbidden("A virtual key may read only its own key info, or that of its user's keys.")
        info = key_view(key, revoked)
        info["spend"] = await self.spend_of("key_token", key.token)
        return json_response({"key": given, "info": info})

    async def key_list(self, http: web.Request, caller: Caller) -> web.Response:
        rows = await self.store.list_keys(query(http, "team_id"))
        user_id = query(http, "user_id")
        include_revoked = http.query.get("include_deleted") in ("1", "true")
        data = [key_view(k, r) for k, r in rows if (include_revoked or not r) and user_id in (None, k.user_id)]
        return json_response({"keys": [d["token"] for d in data], "total_count": len(data), "current_page": 1,
                              "total_pages": 1, "data": data})

    # ---- teams ----------------------------------------------------------------------------------

    async def add_members(self, team_id: str, members: list[Member]) -> None:
        for m in members:
            user = await self.ensure_user(m.user_id, m.user_email)
            await self.store.put_member(team_id, user.user_id, m.role, m.user_email or user.user_email, None,
                                        time.time())

    async def team_answer(self, team: Team) -> dict[str, Any]:
        members = await self.store.members(team_id=team.team_id)
        return {**team_view(team), "members_with_roles": [member_view(m) for m in members],
                "spend": await self.spend_of("team_id", team.team_id)}

    async def team_new(self, http: web.Request, caller: Caller) -> web.Response:
        fields = parse_fields(TeamFields, await read_body(http))
        assert isinstance(fields, TeamFields)
        ignored = refuse_unsupported(fields.model_extra)
        team = Team(team_id=fields.team_id or str(uuid.uuid4()), team_alias=fields.team_alias,
                    models=tuple(fields.models or ()), residency=fields.residency, limits=limits_from(fields),
                    metadata=fields.metadata or {}, blocked=bool(fields.blocked), created_at=time.time())
        try:
            await self.store.insert_team(team)
        except Conflict:
            raise bad_request(f"team_id: team `{team.team_id}` already exists", "team_id") from None
        await self.add_members(team.team_id, fields.members_with_roles or [])
        await self.changed()
        view = await self.team_answer(team)
        if ignored:
            view["ignored_fields"] = ignored
        return json_response(view)

    async def team_update(self, http: web.Request, caller: Caller) -> web.Response:
        fields = parse_fields(TeamFields, await read_body(http))
        assert isinstance(fields, TeamFields)
        ignored = refuse_unsupported(fields.model_extra)
        if not fields.team_id:
            raise bad_request("team_id: required", "team_id")
        team = await self.store.get_team(fields.team_id)
        if team is None:
            raise not_found("team_id", f"team `{fields.team_id}` does not exist", "team_not_found")
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
        if fields.members_with_roles is not None:
            await self.add_members(team.team_id, fields.members_with_roles)
        await self.changed()
        view = await self.team_answer(updated)
        if ignored:
            view["ignored_fields"] = ignored
        # LiteLLM answers {team_id, data: <the team>} (team_endpoints.py, update_team); the fields stay at the top
        # too, as earlier versions of this gateway answered.
        return json_response({**view, "data": view})

    async def team_info(self, http: web.Request, caller: Caller) -> web.Response:
        team_id = query(http, "team_id")
        if not team_id and caller.key is not None:
            team_id = caller.key.team_id
        if not team_id:
            raise bad_request("team_id: required", "team_id")
        team = await self.store.get_team(team_id)
        if team is None:
            raise not_found("team_id", f"team `{team_id}` does not exist", "team_not_found")
        answer = await self.team_answer(team)
        if not caller.admin and not (caller.key is not None and caller.key.team_id == team_id) and not (
                caller.key is not None and caller.key.user_id is not None
                and caller.key.user_id in {m["user_id"] for m in answer["members_with_roles"]}):
            # LiteLLM's validate_membership (team_endpoints.py): the team's own keys, or a member's.
            raise forbidden(f"This key may not read team `{team_id}`: it is neither the team's key nor a member's.")
        keys = [key_view(k) for k, revoked in await self.store.list_keys(team_id) if not revoked]
        return json_response({"team_id": team_id, "team_info": answer, "keys": keys,
                              "team_memberships": await self.store.members(team_id=team_id)})

    async def team_list(self, http: web.Request, caller: Caller) -> web.Response:
        return json_response([await self.team_answer(t) for t in await self.store.list_teams()])


__all__ = ["KEY_PREFIX", "AdminApi", "GatewayError"]
