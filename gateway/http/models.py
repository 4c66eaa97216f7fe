"""`GET /v1/models` as the calling key sees it, and `GET /v1/models/{id}`.

LiteLLM lists only the models the calling key may use (its `models`, else its team's: litellm/proxy/
proxy_server.py@v1.106.2 `model_list` via `get_available_models_for_user`), and answers
`GET /v1/models/{model_id}` with one entry or 404 "The model `x` does not exist or is not accessible"
(seen side by side; LiteLLM sends that 404 as FastAPI's `{"detail": ...}`, this gateway in OpenAI's error
shape, which the openai client reads the same way: `openai.NotFoundError`). A model the key may not use is
"not accessible": 404 too, so a key cannot probe which models exist.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.http.errors import GatewayError
from gateway.http.handlers import authorization
from gateway.http.state import AppState

JSON = "application/json"


def model_entry(alias: str) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": 0, "owned_by": "llm-platform"}


class ModelList:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.aliases = tuple(m.alias for m in state.config.models)
        self._lists: dict[tuple[tuple[str, ...], tuple[str, ...]], bytes] = {}
        self._entries = {alias: orjson.dumps(model_entry(alias)) for alias in self.aliases}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/models", self.list), web.get("/models", self.list),
                web.get("/v1/models/{model_id:.+}", self.retrieve), web.get("/models/{model_id:.+}", self.retrieve)]

    def _allowed(self, principal: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        key = getattr(principal, "key", None)
        team = getattr(principal, "team", None)
        return (key.models if key is not None else ()), (team.models if team is not None else ())

    def visible(self, allowed: tuple[tuple[str, ...], tuple[str, ...]]) -> list[str]:
        key_models, team_models = allowed
        return [a for a in self.aliases
                if (not key_models or a in key_models) and (not team_models or a in team_models)]

    async def list(self, http: web.Request) -> web.Response:
        try:
            principal = self.state.auth.authenticate(authorization(http))
        except GatewayError as exc:
            return exc.response()
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
