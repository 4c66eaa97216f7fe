"""CORS for browser clients: preflight answers and the headers on every answer, as LiteLLM's proxy sends them.

LiteLLM mounts Starlette's CORSMiddleware with `allow_methods=["*"]`, `allow_headers=["*"]` and origins
from `LITELLM_CORS_ORIGINS` (comma-separated; unset or empty: `*`); credentials are allowed only with
explicit origins unless `LITELLM_CORS_ALLOW_CREDENTIALS` says otherwise (litellm/proxy/proxy_server.py
@v1.106.2 `_get_cors_config` and `app.add_middleware(CORSMiddleware, ...)`). The same variables configure
this gateway, so a team's deployment settings carry over. The rules below are Starlette's
(starlette/middleware/cors.py@1.10.0, the version LiteLLM 1.106.2 installs): a preflight is an OPTIONS
request with `Origin` and `Access-Control-Request-Method`; it is answered 200 "OK" (or 400 "Disallowed
CORS origin") without reaching any handler, and requested headers are mirrored back.

`Access-Control-Expose-Headers` lists the headers this gateway sends that a browser script may want to
read (LiteLLM exposes its UI's own list; ours names the `x-litellm-*` and `x-ratelimit-*` it sends).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

ALL_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, QUERY"  # Starlette's ALL_METHODS for "*"
PREFLIGHT_VARY = ("Origin, Access-Control-Request-Method, Access-Control-Request-Headers, "
                  "Access-Control-Request-Private-Network")
EXPOSED = ("x-request-id, x-litellm-call-id, x-litellm-model-id, x-litellm-model-name, x-litellm-model-group, "
           "x-litellm-attempted-retries, x-litellm-attempted-fallbacks, x-litellm-response-cost, "
           "x-litellm-overhead-duration-ms, x-litellm-key-tpm-limit, x-litellm-key-rpm-limit, "
           "x-litellm-key-max-budget, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, "
           "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, retry-after"
           ", x-llmp-route"  # a ladder's rungs and outcomes (routing/ladder.py)
           ", x-llmp-cache, x-litellm-cache-key")  # the response cache's result and a hit's key (gateway/cache/)


@dataclass(frozen=True)
class CorsPolicy:
    origins: tuple[str, ...] = ("*",)
    credentials: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CorsPolicy:
        """LiteLLM's variables: LITELLM_CORS_ORIGINS ("a,b"; unset or empty: all), LITELLM_CORS_ALLOW_CREDENTIALS
        ("true"/anything else; unset: true only when origins are listed)."""
        env = os.environ if env is None else env
        raw = env.get("LITELLM_CORS_ORIGINS") or ""
        origins = tuple(o.strip() for o in raw.split(",") if o.strip()) or ("*",)
        said = env.get("LITELLM_CORS_ALLOW_CREDENTIALS")
        credentials = said.strip().lower() == "true" if said is not None else "*" not in origins
        return cls(origins, credentials)

    @property
    def any_origin(self) -> bool:
        return "*" in self.origins

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins


class Cors:
    """The preflight route and the response hook of one app."""

    def __init__(self, policy: CorsPolicy) -> None:
        self.policy = policy
        simple: dict[str, str] = {}
        if policy.any_origin:
            simple["Access-Control-Allow-Origin"] = "*"
        if policy.credentials:
            simple["Access-Control-Allow-Credentials"] = "true"
        simple["Access-Control-Expose-Headers"] = EXPOSED
        self._simple = simple
        preflight = {"Vary": PREFLIGHT_VARY}
        if policy.any_origin and not policy.credentials:
            preflight["Access-Control-Allow-Origin"] = "*"
        preflight["Access-Control-Allow-Methods"] = ALL_METHODS
        preflight["Access-Control-Max-Age"] = "600"
        if policy.credentials:
            preflight["Access-Control-Allow-Credentials"] = "true"
        self._preflight = preflight
        self._echo_origin = not policy.any_origin or policy.credentials

    def install(self, app: web.Application) -> None:
        """Call before the catch-all route: OPTIONS is answered here for every path."""
        app.router.add_route("OPTIONS", "/{tail:.*}", self.preflight)
        app.on_response_prepare.append(self.on_prepare)

    async def preflight(self, http: web.Request) -> web.Response:
        origin = http.headers.get("Origin")
        method = http.headers.get("Access-Control-Request-Method")
        if origin is None or method is None:
            # Not a CORS preflight: a plain OPTIONS, answered with what the path allows (RFC 9110 section 9.3.7).
            return web.Response(status=204, headers={"Allow": ALL_METHODS})
        headers = dict(self._preflight)
        failures = []
        if self.policy.allows(origin):
            if self._echo_origin:
                headers["Access-Control-Allow-Origin"] = origin
        else:
            failures.append("origin")
        if method not in ALL_METHODS.split(", "):
            failures.append("method")
        requested = http.headers.get("Access-Control-Request-Headers")
        if requested is not None:
            headers["Access-Control-Allow-Headers"] = requested  # allow_headers=["*"]: mirrored
        if http.headers.get("Access-Control-Request-Private-Network") is not None:
            failures.append("private-network")
        if failures:
            return web.Response(status=400, text="Disallowed CORS " + ", ".join(failures), headers=headers)
        return web.Response(text="OK", headers=headers)

    async def on_prepare(self, http: web.Request, response: web.StreamResponse) -> None:
        origin = http.headers.get("Origin")
        if origin is None or http.method == "OPTIONS":
            return
        headers = response.headers
        headers.update(self._simple)
        if (self.policy.any_origin and self.policy.credentials) or (
                not self.policy.any_origin and self.policy.allows(origin)):
            headers["Access-Control-Allow-Origin"] = origin
        headers.add("Vary", "Origin")
