"""The admin API's users and team members, with LiteLLM's request and response shapes.

    POST /user/new       {user_id, user_email, user_alias, user_role, teams, models, max_budget, budget_duration,
                          rpm_limit, tpm_limit, max_parallel_requests, metadata, auto_create_key, key_alias,
                          duration} -> NewUserResponse: the user's fields and, unless auto_create_key is false,
                          a new key of that user (GenerateKeyResponse's fields)
    POST /user/update    {user_id | user_email, <fields to change>}   (null clears a limit)
    GET  /user/info[?user_id=]   -> {user_id, user_info: {..., spend}, keys: [...], teams: [...]}
    GET  /user/list[?user_ids=a,b][&page=][&page_size=]  -> {users, total, page, page_size, total_pages}
    POST /user/delete    {user_ids: [...]}  (their keys are deleted too, as LiteLLM does)
    POST /team/member_add     {team_id, member: {role, user_id | user_email} or a list, max_budget_in_team}
    POST /team/member_delete  {team_id, user_id | user_email}

A user's budget, limits and models apply to every call of its keys (gateway/governance/gate.py), as in
LiteLLM. A virtual key reads its own user with /user/info (LiteLLM's route_checks: the key's user_id only).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from aiohttp import web

from gateway.governance.keys import Limits, User
from gateway.governance.store.protocol import Conflict
from gateway.http.admin_fields import (
    KeyFields,
    Member,
    MemberAddFields,
    MemberDeleteFields,
    UserDeleteFields,
    UserFields,
    key_view,
    limits_from,
    member_view,
    parse_fields,
    team_view,
    user_view,
)
from gateway.http.admin_http import AdminCore, Caller, forbidden, guarded, json_response, not_found, query, read_body
from gateway.http.admin_litellm import USER_TABLE_DEFAULTS, refuse_unsupported
from gateway.http.errors import bad_request

# Fields of /user/new that describe the user's key, not the user (LiteLLM passes them to the key it makes).
_KEY_ONLY = ("key_alias", "duration")
# LiteLLM's user holding the whole proxy's spend (litellm_proxy_budget_name in proxy_server.py): made when first
# named; its spend is every call's, the master key's included.
PROXY_BUDGET_USER = "litellm-proxy-budget"


class UserApi:
    def __init__(self, admin: AdminCore) -> None:
        self.admin = admin
        self.store = admin.store

    def routes(self) -> list[web.RouteDef]:
        g = self.admin.gov
        return [
            web.post("/user/new", guarded(g, self.user_new)),
            web.post("/user/update", guarded(g, self.user_update)),
            web.get("/user/info", guarded(g, self.user_info, self_service=True)),
            web.get("/user/list", guarded(g, self.user_list)),
            web.post("/user/delete", guarded(g, self.user_delete)),
            web.post("/team/member_add", guarded(g, self.member_add)),
            web.post("/team/member_delete", guarded(g, self.member_delete)),
        ]

    async def _user(self, user_id: str | None, user_email: str | None = None) -> User:
        if user_id == PROXY_BUDGET_USER:
            return await self.admin.ensure_user(user_id)
        user = await self.store.get_user(user_id) if user_id is not None else None
        if user is None and user_id is None and user_email is not None:
            user = await self.store.find_user_by_email(user_email)
        if user is None:
            field = "user_id" if user_id is not None or user_email is None else "user_email"
            raise not_found(field, f"user `{user_id or user_email}` does not exist", "user_not_found")
        return user

    @staticmethod
    def _refuse_key_only(fields: UserFields) -> None:
        # `residency` and `blocked` are key and team fields here; a user cannot hold them, and dropping either
        # would leave the user's keys less restricted than asked.
        for name in ("residency", "blocked"):
            if getattr(fields, name) is not None:
                raise bad_request(f"{name}: not a user field here; set it on the user's keys or team", name)

    async def _teams(self, fields: UserFields) -> list[tuple[str, str]]:
        """`teams` as LiteLLM takes it: team ids, or {team_id, user_role}; each must exist. A per-member budget
        (`max_budget_in_team`) is not enforced here, so it is refused rather than stored for nothing."""
        out = []
        for i, entry in enumerate(fields.teams or []):
            if isinstance(entry, str):
                out.append((entry, "user"))
                continue
            if entry.max_budget_in_team is not None:
                raise bad_request(f"teams[{i}].max_budget_in_team: not supported by this gateway (a per-member "
                                  "budget); omit it", "teams")
            out.append((entry.team_id, entry.user_role))
        for team_id, _ in out:
            await self.admin.team(team_id, "teams")
        return out

    async def _answer(self, user: User) -> dict[str, Any]:
        teams = [m["team_id"] for m in await self.store.members(user_id=user.user_id)]
        if user.user_id == PROXY_BUDGET_USER:
            spend = round(sum(r["spend"] for r in await self.store.spend_grouped(("day",), {})), 10)
        else:
            spend = await self.admin.spend_of("user_id", user.user_id)
        defaults = {k: v.copy() if isinstance(v, (list, dict)) else v for k, v in USER_TABLE_DEFAULTS.items()}
        return {**defaults, **user_view(user), "teams": teams, "spend": spend}

    def _internal_defaults(self, role: str, limits: Limits) -> Limits:
        """An internal user naming no budget gets the configured one, as LiteLLM's `new_user` gives
        max_internal_user_budget / internal_user_budget_duration (internal_user_endpoints.py@v1.106.2)."""
        settings = self.admin.gov.config.keys
        if role != "internal_user":
            return limits
        if limits.max_budget is None and settings.internal_user_max_budget is not None:
            limits = dataclasses.replace(limits, max_budget=settings.internal_user_max_budget)
        if limits.budget_duration is None and settings.internal_user_budget_duration is not None:
            limits = dataclasses.replace(limits, budget_duration=settings.internal_user_budget_duration)
        return limits

    async def user_new(self, http: web.Request, caller: Caller) -> web.Response:
        body = await read_body(http)
        fields = parse_fields(UserFields, body)
        assert isinstance(fields, UserFields)
        ignored = refuse_unsupported(fields.model_extra)
        self._refuse_key_only(fields)
        teams = await self._teams(fields)
        # The key's fields are checked before anything is written: a bad one leaves no user behind.
        key_fields = parse_fields(KeyFields, {k: getattr(fields, k) for k in _KEY_ONLY if getattr(fields, k)})
        now = time.time()
        user_role = fields.user_role or "internal_user"
        user = User(user_id=fields.user_id or str(uuid.uuid4()), user_email=fields.user_email,
                    user_alias=fields.user_alias, user_role=user_role, models=tuple(fields.models or ()),
                    limits=self._internal_defaults(user_role, limits_from(fields)), metadata=fields.metadata or {},
                    created_at=now, updated_at=now)
        try:
            await self.store.insert_user(user)
        except Conflict:
            raise bad_request(f"user_id: user `{user.user_id}` already exists", "user_id") from None
        for team_id, role in teams:
            await self.store.put_member(team_id, user.user_id, role, user.user_email, None, now)
        answer: dict[str, Any] = {"key": None}
        if fields.auto_create_key:
            # The user's key carries no limits of its own: the user's apply to it (and to every other key it gets).
            assert isinstance(key_fields, KeyFields)
            answer = await self.admin.create_key(key_fields, {}, user_id=user.user_id)
        else:
            await self.admin.changed()
        answer.update(await self._answer(user))
        if ignored:
            answer["ignored_fields"] = ignored
        return json_response(answer)

    async def user_update(self, http: web.Request, caller: Caller) -> web.Response:
        body = await read_body(http)
        fields = parse_fields(UserFields, body)
        assert isinstance(fields, UserFields)
        ignored = refuse_unsupported(fields.model_extra)
        self._refuse_key_only(fields)
        if fields.user_id is None and fields.user_email is None:
            raise bad_request("user_id: give user_id or user_email", "user_id")
        user = await self._user(fields.user_id, None if fields.user_id else fields.user_email)
        changes: dict[str, Any] = {"limits": limits_from(fields, user.limits), "updated_at": time.time()}
        for name in ("user_alias", "user_role"):
            if name in fields.model_fields_set:
                changes[name] = getattr(fields, name)
        if "user_email" in fields.model_fields_set and fields.user_id is not None:
            changes["user_email"] = fields.user_email
        if "models" in fields.model_fields_set:
            changes["models"] = tuple(fields.models or ())
        if "metadata" in fields.model_fields_set:
            changes["metadata"] = fields.metadata or {}
        for name in (*_KEY_ONLY, "teams"):
            if name in fields.model_fields_set:
                raise bad_request(f"{name}: not changed by /user/update (use /key/update or /team/member_add)", name)
        updated = dataclasses.replace(user, **changes)
        await self.store.update_user(updated)
        await self.admin.changed()
        answer = await self._answer(updated)
        if ignored:
            answer["ignored_fields"] = ignored
        return json_response({"user_id": updated.user_id, "data": answer, **answer})

    async def user_info(self, http: web.Request, caller: Caller) -> web.Response:
        user_id = query(http, "user_id")
        if not caller.admin:
            own = caller.key.user_id if caller.key is not None else None
            if user_id is not None and user_id != own:
                raise forbidden(f"This key may read only its own user's info (user_id={own}).")
            user_id = own
        if user_id is None:
            raise bad_request("user_id: required (this key has no user)", "user_id")
        user = await self._user(user_id)
        keys = [key_view(k) for k, revoked in await self.store.list_keys(None) if not revoked and k.user_id == user_id]
        teams = []
        for m in await self.store.members(user_id=user_id):
            team = await self.store.get_team(m["team_id"])
            if team is not None:
                members = await self.store.members(team_id=team.team_id)
                teams.append({**team_view(team), "members_with_roles": [member_view(x) for x in members]})
        return json_response({"user_id": user_id, "user_info": await self._answer(user), "keys": keys,
                              "teams": teams})

    async def user_list(self, http: web.Request, caller: Caller) -> web.Response:
        wanted = query(http, "user_ids")
        ids = set(wanted.split(",")) if wanted else None
        users = [u for u in await self.store.list_users() if ids is None or u.user_id in ids]
        try:
            page = max(1, int(http.query.get("page", "1")))
            size = min(max(1, int(http.query.get("page_size", "25"))), 500)
        except ValueError:
            raise bad_request("page, page_size: whole numbers", "page") from None
        shown = users[(page - 1) * size: page * size]
        counts: dict[str | None, int] = {}
        for k, revoked in await self.store.list_keys(None):
            if not revoked:
                counts[k.user_id] = counts.get(k.user_id, 0) + 1
        answers = [{**await self._answer(u), "key_count": counts.get(u.user_id, 0)} for u in shown]
        return json_response({"users": answers, "total": len(users), "page": page,
                              "page_size": size, "total_pages": max(1, -(-len(users) // size))})

    async def user_delete(self, http: web.Request, caller: Caller) -> web.Response:
        fields = parse_fields(UserDeleteFields, await read_body(http))
        assert isinstance(fields, UserDeleteFields)
        for user_id in fields.user_ids:
            await self._user(user_id)
        # Keys first: a deleted user never leaves a live key behind, whatever fails after.
        tokens = [k.token for k, revoked in await self.store.list_keys(None)
                  if not revoked and k.user_id in set(fields.user_ids)]
        deleted_keys = await self.store.revoke_keys(tokens)
        deleted = await self.store.delete_users(fields.user_ids)
        await self.admin.changed()
        return json_response({"deleted_users": deleted, "deleted_keys": deleted_keys})

    async def member_add(self, http: web.Request, caller: Caller) -> web.Response:
        fields = parse_fields(MemberAddFields, await read_body(http))
        assert isinstance(fields, MemberAddFields)
        refuse_unsupported(fields.model_extra)
        team = await self.admin.team(fields.team_id)
        assert team is not None
        members: list[Member] = fields.member if isinstance(fields.member, list) else [fields.member]
        await self.admin.add_members(team.team_id, members)
        await self.admin.changed()
        answer = await self.admin.team_answer(team)
        rows = await self.store.members(team_id=team.team_id)
        ids, emails = {m.user_id for m in members} - {None}, {m.user_email for m in members} - {None}
        mine = [r for r in rows if r["user_id"] in ids or r["user_email"] in emails]
        updated_users = [user_view(u) for r in mine if (u := await self.store.get_user(r["user_id"])) is not None]
        return json_response({**answer, "updated_users": updated_users, "updated_team_memberships": mine})

    async def member_delete(self, http: web.Request, caller: Caller) -> web.Response:
        fields = parse_fields(MemberDeleteFields, await read_body(http))
        assert isinstance(fields, MemberDeleteFields)
        team = await self.admin.team(fields.team_id)
        assert team is not None
        if fields.user_id is None and fields.user_email is None:
            raise bad_request("user_id: give user_id or user_email", "user_id")
        user = await self._user(fields.user_id, fields.user_email)
        if not await self.store.remove_member(team.team_id, user.user_id):
            raise not_found("user_id", f"user `{user.user_id}` is not a member of team `{team.team_id}`",
                            "member_not_found")
        await self.admin.changed()
        return json_response(await self.admin.team_answer(team))
