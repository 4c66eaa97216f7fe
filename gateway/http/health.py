"""LiteLLM's health endpoints: liveness, readiness, and `/health`'s per-deployment report, without probing upstreams.

Shapes as LiteLLM 1.106.2 answers them (litellm/proxy/health_endpoints/_health_endpoints.py@v1.106.2,
and seen side by side): `/health/liveliness` and `/health/liveness` answer `"I'm alive!"`;
`/health/readiness` answers `{"status": "healthy", "db": ...}`, and `{"status": "shutting_down"}` with 503
once shutdown starts (`GracefulShutdownManager.is_shutting_down()`); `/health` needs a valid key
(`Depends(user_api_key_auth)`) and answers `{"healthy_endpoints": [...], "unhealthy_endpoints": [...],
"healthy_count": n, "unhealthy_count": n}`, 503 when a `?model=` asked for has no healthy endpoint, and
`api_base` only to the proxy admin (non-admins get `Litellm-Health-Field-Notice`).

Where LiteLLM sends a real completion to every deployment on each `/health` call (a paid call per
deployment per probe, unless `background_health_checks` is on), this gateway reports what it already
knows from real traffic: each replica's circuit breaker (gateway/upstream/circuit.py) and whether the
deployment's provider key is set. A deployment no call has reached yet counts as healthy (closed circuit).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.http.errors import GatewayError
from gateway.http.handlers import authorization
from gateway.http.state import AppState
from gateway.upstream.routing import Replica

JSON = "application/json"
ALIVE = orjson.dumps("I'm alive!")
ADMIN_ONLY = "api_base"


class Health:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/health/liveliness", self.alive),  # LiteLLM's historical name
            web.get("/health/liveness", self.alive),
            web.get("/health/readiness", self.readiness),
            web.get("/health", self.deployments),
        ]

    async def alive(self, http: web.Request) -> web.Response:
        return web.Response(body=ALIVE, content_type=JSON)

    async def readiness(self, http: web.Request) -> web.Response:
        if self.state.draining:
            return web.Response(status=503, body=b'{"status":"shutting_down"}', content_type=JSON)
        gate = self.state.gate
        unreadable = getattr(gate, "unreadable_store", None)
        if unreadable:
            return web.Response(status=503, body=orjson.dumps({"status": "unhealthy", "db": unreadable}),
                                content_type=JSON)
        db = "connected" if self.state.governance is not None else "Not connected"
        return web.Response(body=orjson.dumps({"status": "healthy", "db": db}), content_type=JSON)

    async def deployments(self, http: web.Request) -> web.Response:
        try:
            principal = self.state.auth.authenticate(authorization(http))
        except GatewayError as exc:
            return exc.response()
        admin = getattr(principal, "key", None) is None
        wanted = http.query.get("model")
        healthy: list[dict[str, Any]] = []
        unhealthy: list[dict[str, Any]] = []
        for alias, route in self.state.router.routes.items():
            if wanted is not None and alias != wanted:
                continue
            for pool in route.deployments:
                replicas: list[Replica | None] = [*pool.replicas] or [None]
                for replica in replicas:
                    entry: dict[str, Any] = {"model": f"{pool.provider}/{pool.model}", "model_name": alias,
                                             "model_id": pool.name}
                    if admin and replica is not None:
                        entry[ADMIN_ONLY] = replica.base_url
                    if replica is None:
                        entry["error"] = "no replica known yet (discovery has found none)"
                    elif not pool.api_key_set:
                        entry["error"] = "the deployment's provider key is not set yet"
                    elif not replica.usable():
                        entry["error"] = f"circuit {replica.breaker.state} after failed calls"
                    (unhealthy if "error" in entry else healthy).append(entry)
        body = {"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy,
                "healthy_count": len(healthy), "unhealthy_count": len(unhealthy)}
        headers = {} if admin else {"Litellm-Health-Field-Notice": f"{ADMIN_ONLY} are admin-only on this endpoint"}
        status = 503 if wanted is not None and not healthy else 200
        return web.Response(status=status, body=orjson.dumps(body), content_type=JSON, headers=headers)
