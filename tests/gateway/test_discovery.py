"""Replicas discovered from EndpointSlices with the official kubernetes client, against a local API endpoint."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from kubernetes import client as k8s

from gateway.config.native import parse_native
from gateway.upstream.discovery import EndpointSliceWatcher
from gateway.upstream.routing import Router
from tests.gateway.conftest import MODEL, gateway_config


def endpoint_slice(ips_ready: list[tuple[str, bool | None]], port_name: str = "http", port: int = 8000) -> dict:
    endpoints = []
    for ip, ready in ips_ready:
        endpoint: dict = {"addresses": [ip]}
        if ready is not None:
            endpoint["conditions"] = {"ready": ready}
        endpoints.append(endpoint)
    return {"metadata": {"name": "vllm-abc12", "labels": {"kubernetes.io/service-name": "vllm"}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": port_name, "port": port,
                                                                     "protocol": "TCP"}]}


@pytest.fixture
async def api_server():
    """Serves EndpointSliceList documents on the discovery.k8s.io/v1 path, as the API server does."""
    state = {"items": [], "selectors": []}

    async def list_slices(request: web.Request) -> web.Response:
        state["selectors"].append((request.match_info["ns"], request.query.get("labelSelector")))
        return web.json_response({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                                  "metadata": {"resourceVersion": "1"}, "items": state["items"]})

    app = web.Application()
    app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", list_slices)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    configuration = k8s.Configuration(host=f"http://127.0.0.1:{runner.addresses[0][1]}")
    api = k8s.DiscoveryV1Api(k8s.ApiClient(configuration))
    yield api, state
    await runner.cleanup()


def pool_router(port: object = "http") -> Router:
    config = gateway_config([{"name": "pool", "model": MODEL, "replicas": {"endpoint_slices": {
        "service": "vllm", "namespace": "models", "port": port, "refresh": 0.05}}}])
    return Router(parse_native(config))


async def test_ready_endpoints_become_replicas_and_follow_changes(api_server) -> None:
    api, state = api_server
    state["items"] = [endpoint_slice([("10.0.0.1", True), ("10.0.0.2", None), ("10.0.0.3", False)])]
    pool = pool_router().pools[0]
    watcher = EndpointSliceWatcher(pool, pool.config.replicas.endpoint_slices, api)
    assert await watcher.refresh() == ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]
    assert state["selectors"][-1] == ("models", "kubernetes.io/service-name=vllm")
    first = pool.replicas[0]
    first.in_flight = 3
    state["items"] = [endpoint_slice([("10.0.0.1", True), ("10.0.0.4", True)])]
    watcher.start()
    for _ in range(40):
        await asyncio.sleep(0.05)
        if [r.base_url for r in pool.replicas] == ["http://10.0.0.1:8000/v1", "http://10.0.0.4:8000/v1"]:
            break
    await watcher.stop()
    assert [r.base_url for r in pool.replicas] == ["http://10.0.0.1:8000/v1", "http://10.0.0.4:8000/v1"]
    assert pool.replicas[0] is first and first.in_flight == 3, "a replica that stays keeps its load and health"


async def test_numbered_port_and_unreachable_api_keep_the_last_replicas(api_server) -> None:
    api, state = api_server
    state["items"] = [endpoint_slice([("10.0.0.9", True)], port_name="metrics", port=9000)]
    pool = pool_router(port=8000).pools[0]
    watcher = EndpointSliceWatcher(pool, pool.config.replicas.endpoint_slices, api)
    assert await watcher.refresh() == ["http://10.0.0.9:8000/v1"]
    broken = k8s.DiscoveryV1Api(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:1")))
    watcher.api = broken
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for an API server that is not there
        await watcher.refresh()
    assert [r.base_url for r in pool.replicas] == ["http://10.0.0.9:8000/v1"]


async def test_gateway_routes_to_replicas_found_in_endpoint_slices(api_server, gateway_factory) -> None:
    from gateway.sim import SimServer, SimSettings

    api, state = api_server
    first = await SimServer(SimSettings(models=(MODEL,), name="pod-a"), host="127.0.0.2").start()
    second = await SimServer(SimSettings(models=(MODEL,), name="pod-b"), host="127.0.0.3", port=first.port).start()
    try:
        state["items"] = [endpoint_slice([("127.0.0.2", True), ("127.0.0.3", True)], port=first.port)]
        config = gateway_config([{"name": "pool", "model": MODEL, "replicas": {"endpoint_slices": {
            "service": "vllm", "namespace": "models", "port": "http", "refresh": 30}}}])
        gw = await gateway_factory(config, discovery_api=api)
        client = gw.client()
        for i in range(12):
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 extra_headers={"x-session-id": f"conversation-{i}"})
        assert first.stats.requests > 0 and second.stats.requests > 0
        assert first.stats.requests + second.stats.requests == 12
        assert gw.state.readiness()["deployments"]["pool"] == {"healthy": True, "replicas": 2, "api_key_set": True}
    finally:
        await first.stop()
        await second.stop()
