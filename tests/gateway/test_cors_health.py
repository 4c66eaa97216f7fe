"""Browser preflights, LiteLLM's health endpoints and model listing, as LiteLLM 1.106.2 answers them.

Expected values were read side by side from `litellm --config` (1.106.2, FastAPI's CORSMiddleware from
Starlette 1.10.0) and are cited to its source.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import openai
import pytest

from gateway.http.cors import CorsPolicy
from tests.gateway.conftest import KEY, MODEL, closed_port_url, deployment, gateway_config
from tests.gateway.test_keys_admin import admin, governed

ORIGIN = "https://chat.example.com"
MESSAGES = [{"role": "user", "content": "hi"}]
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}


async def test_a_browser_preflight_is_allowed_from_any_origin_by_default(gateway) -> None:
    """LiteLLM side by side: 200 "OK", allow-origin *, Starlette's ALL_METHODS, requested headers mirrored
    (allow_headers=["*"]), max-age 600 (proxy_server.py@v1.106.2 `app.add_middleware(CORSMiddleware, ...)`)."""
    async with aiohttp.ClientSession() as http:
        async with http.options(gateway.url + "/v1/chat/completions", headers=PREFLIGHT) as resp:
            assert resp.status == 200 and await resp.text() == "OK"
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert resp.headers["Access-Control-Allow-Methods"] == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, QUERY"
            assert resp.headers["Access-Control-Allow-Headers"] == "authorization,content-type"
            assert resp.headers["Access-Control-Max-Age"] == "600"
            assert "Access-Control-Allow-Credentials" not in resp.headers, "never with a wildcard origin"
        headers = {"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"}
        async with http.post(gateway.url + "/v1/chat/completions", headers=headers,
                             json={"model": MODEL, "messages": MESSAGES, "stream": True}) as resp:
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "x-litellm-model-group" in resp.headers["Access-Control-Expose-Headers"]
            await resp.read()
        async with http.get(gateway.url + "/v1/models", headers={"Origin": ORIGIN}) as resp:
            assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == "*", \
                "a browser script must be able to read the error too"
        async with http.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers, "no Origin, no CORS headers"


async def test_allowed_origins_are_configured_as_in_litellm(sim, gateway_factory, monkeypatch) -> None:
    """LITELLM_CORS_ORIGINS lists origins; credentials are then allowed unless LITELLM_CORS_ALLOW_CREDENTIALS
    says otherwise (proxy_server.py@v1.106.2 `_get_cors_config`)."""
    monkeypatch.setenv("LITELLM_CORS_ORIGINS", f"{ORIGIN}, https://admin.example.com")
    gw = await gateway_factory(gateway_config([deployment("sim-a", sim.base_url)]))
    async with aiohttp.ClientSession() as http:
        async with http.options(gw.url + "/v1/chat/completions", headers=PREFLIGHT) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        evil = {**PREFLIGHT, "Origin": "https://evil.example.net"}
        async with http.options(gw.url + "/v1/chat/completions", headers=evil) as resp:
            assert resp.status == 400 and await resp.text() == "Disallowed CORS origin"
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with http.get(gw.url + "/health/liveliness", headers={"Origin": "https://evil.example.net"}) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


def test_cors_settings_read_litellms_variables() -> None:
    assert CorsPolicy.from_env({}) == CorsPolicy(("*",), False)
    assert CorsPolicy.from_env({"LITELLM_CORS_ORIGINS": " "}) == CorsPolicy(("*",), False)
    assert CorsPolicy.from_env({"LITELLM_CORS_ORIGINS": "*", "LITELLM_CORS_ALLOW_CREDENTIALS": "true"}) == \
        CorsPolicy(("*",), True)
    assert CorsPolicy.from_env({"LITELLM_CORS_ORIGINS": "https://a,https://b",
                                "LITELLM_CORS_ALLOW_CREDENTIALS": "false"}) == CorsPolicy(("https://a", "https://b"),
                                                                                           False)


async def test_litellms_liveness_and_readiness_probes(gateway) -> None:
    """_health_endpoints.py@v1.106.2: `"I'm alive!"` on both liveness names; readiness `{"status": "healthy",
    "db": ...}` (side by side, no database: "Not connected"), 503 `shutting_down` once shutdown starts."""
    async with aiohttp.ClientSession() as http:
        for path in ("/health/liveliness", "/health/liveness"):
            async with http.get(gateway.url + path) as resp:
                assert resp.status == 200 and await resp.json() == "I'm alive!"
        async with http.get(gateway.url + "/health/readiness") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "healthy", "db": "Not connected"}
        gateway.state.draining = True
        async with http.get(gateway.url + "/health/readiness") as resp:
            assert resp.status == 503 and await resp.json() == {"status": "shutting_down"}


async def test_health_reports_deployments_from_what_calls_saw_without_calling_upstreams(sim, gateway_factory) -> None:
    """LiteLLM's `/health` shape (healthy_endpoints, unhealthy_endpoints, counts; 503 for a `?model=` with
    none healthy; `Depends(user_api_key_auth)`), built from circuit breakers instead of a paid call each."""
    gone = closed_port_url()
    gw = await gateway_factory(gateway_config(
        models=[{"alias": MODEL, "deployments": [deployment("sim-a", sim.base_url)]},
                {"alias": "lost", "deployments": [deployment("gone", gone)]}],
        retries={"attempts": 0}, circuit_breaker={"failures": 1, "cooldown": 60}))
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/health") as resp:
            assert resp.status == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        async with http.get(gw.url + "/health", headers=auth) as resp:
            report = await resp.json()
        assert resp.status == 200 and report["healthy_count"] == 2 and report["unhealthy_count"] == 0
        assert sim.stats.requests == 0, "a probe is not a paid call"
        with pytest.raises(openai.InternalServerError):
            await gw.client().chat.completions.create(model="lost", messages=MESSAGES)
        async with http.get(gw.url + "/health", headers=auth) as resp:
            report = await resp.json()
        assert report["healthy_endpoints"] == [{"model": f"openai/{MODEL}", "model_name": MODEL, "model_id": "sim-a",
                                                "api_base": sim.base_url}]
        [down] = report["unhealthy_endpoints"]
        assert down["model_id"] == "gone" and "circuit open" in down["error"]
        async with http.get(gw.url + "/health", params={"model": "lost"}, headers=auth) as resp:
            assert resp.status == 503 and (await resp.json())["healthy_count"] == 0


async def test_models_are_listed_and_retrieved_as_the_calling_key_may_use_them(sim, gateway_factory,
                                                                               tmp_path: Path) -> None:
    """LiteLLM lists the key's models only, and answers /v1/models/{id} (and /models/{id}) with one entry or
    404 "does not exist or is not accessible" (side by side; proxy_server.py@v1.106.2 `model_info`)."""
    config = governed(sim, tmp_path)
    config["models"].append({"alias": "other", "deployments": [deployment("sim-b", sim.base_url)]})
    gw = await gateway_factory(config)
    master = gw.client()
    assert [m.id for m in (await master.models.list()).data] == [MODEL, "other"]
    assert (await master.models.retrieve("other")).id == "other"
    with pytest.raises(openai.NotFoundError, match="does not exist or is not accessible"):
        await master.models.retrieve("nope")
    _, made = await admin(gw, "POST", "/key/generate", {"models": [MODEL]})
    limited = gw.client(api_key=made["key"])
    assert [m.id for m in (await limited.models.list()).data] == [MODEL]
    assert (await limited.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await limited.models.retrieve("other")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/models/{MODEL}", headers={"Authorization": f"Bearer {made['key']}"}) as resp:
            assert resp.status == 200 and (await resp.json())["id"] == MODEL
        async with http.get(f"{gw.url}/health", headers={"Authorization": f"Bearer {made['key']}"}) as resp:
            report = await resp.json()
            assert "api_base" not in report["healthy_endpoints"][0], "admin-only in LiteLLM"
            assert resp.headers["Litellm-Health-Field-Notice"] == "api_base are admin-only on this endpoint"
