"""`GET /v1/models` as the calling key sees it, and `GET /v1/models/{id}`.

LiteLLM lists only the models the calling key may use (its `models`, else its team's: litellm/proxy/
proxy_server.py@v1.106.2 `model_list` via `get_available_models_for_user`), and answers
`GET /v1/models/{model_id}` with one entry or 404 "The model `x` does not exist or is not accessible"
(seen side by side; LiteLLM sends that 404 as FastAPI's `{"detail": ...}`, this gateway in OpenAI's error
shape, which the openai client reads the same way: `openai.NotFoundError`). A model the key may not use is
"not accessible": 404 too, so a key cannot probe which models exist.

A model_aliases name (LiteLLM's model_group_alias) is listed after the aliases unless it is `hidden`, as LiteLLM's
`Router.get_model_list_from_model_alias` (litellm/router.py@v1.106.2) lists it; a key's lists are read as for a
call (governance/model_access.py: wildcards, `*`, the alias's target).

`?only_model_access_groups=true` lists access groups only (litellm/proxy/auth/model_checks.py@v1.106.2
`get_complete_model_list`); the gateway has none (model_info.access_groups is ignored by the settings table), so
the list is empty, as LiteLLM's is on a config without them.

Ladder aliases (routing/ladder.py) are listed last, for a key whose lists allow the ladder's own name and at least one
of its rungs.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.governance.model_access import may_use
from gateway.http.errors import GatewayError
from gateway.http.handlers import authorization
from gateway.http.state import AppState

JSON = "application/json"
# How FastAPI reads a bool query parameter (LiteLLM's `only_model_access_groups: bool`): these are true.
TRUE = frozenset({"1", "true", "on", "yes"})
EMPTY = orjson.dumps({"object": "list", "data": []})
# A caller's model lists as /v1/models reads them: its key's, its team's, and whether the key is in a team.
Allowed = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], bool]  # key's, team's, user's lists; in a team


def model_entry(alias: str) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": 0, "owned_by": "llm-platform"}


class ModelList:
    def __init__(self, state: AppState) -> None:
        self.state = state
        config = state.config
        # Each listed name and the model alias serving it.
        self.groups = {m.alias: m.alias for m in config.models}
        self.groups.update({name: a.model for name, a in config.model_aliases.items() if not a.hidden})
        self.groups.update({ladder.alias: ladder.alias for ladder in config.ladders})  # routing/ladder.py
        self.rungs = {ladder.alias: ladder.rungs for ladder in config.ladders}
        self.aliases = tuple(self.groups)
        self._lists: dict[Allowed, bytes] = {}
        self._entries = {alias: orjson.dumps(model_entry(alias)) for alias in self.aliases}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/models", self.list), web.get("/models", self.list),
                web.get("/v1/models/{model_id:.+}", self.retrieve), web.get("/models/{model_id:.+}", self.retrieve)]

    def _allowed(self, principal: Any) -> Allowed:
        key = getattr(principal, "key", None)
        team = getattr(principal, "team", None)
        user = getattr(principal, "user", None)  # a user's list bounds its keys, as on the request path (gate.py)
        return ((key.models if key is not None else ()), (team.models if team is not None else ()),
                (user.models if user is not None else ()), key is not None and key.team_id is not None)

    def visible(self, allowed: Allowed) -> list[str]:
        key_models, team_models, user_models, in_team = allowed
        found = [a for a, group in self.groups.items() if may_use(key_models, a, group, in_team)
                 and may_use(team_models, a, group) and may_use(user_models, a, group)]
        # A ladder whose rungs the caller may use none of answers it 403 (routing/ladder.py): not listed either.
        may = set(found)
        return [a for a in found if a not in self.rungs or any(r in may for r in self.rungs[a])]

    async def list(self, http: web.Request) -> web.Response:
        try:
            principal = self.state.auth.authenticate(authorization(http))
        except GatewayError as exc:
            return exc.response()
        if http.query.get("only_model_access_groups", "").lower() in TRUE:
            return web.Response(body=EMPTY, content_type=JSON)
        allowed = self._allowed(principal)
        payload = self._lists.get(allowed)
        if payload is None:
            if len(self._lists) > 10_000:
                self._lists.clear()
            entries = [model_entry(a) for a in self.visible(allowed)]
            payload = self._lists[allowed] = orjson.dumps({"object": "list", "data": entries})
        return web.Response(body=payload, content_type=JSON)

    async def retrieve(self, http: web.Request) -> web.Response:
        try:
            principal = self.state.auth.authenticate(authorization(http))
        except GatewayError as exc:
            return exc.response()
        model_id = http.match_info["model_id"]
        if model_id in self.visible(self._allowed(principal)):
            return web.Response(body=self._entries[model_id], content_type=JSON)
        return GatewayError(404, f"The model `{model_id[:200]}` does not exist or is not accessible",
                            "invalid_request_error", "model", "model_not_found").response()
