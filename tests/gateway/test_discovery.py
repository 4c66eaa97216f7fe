"""Replicas discovered from EndpointSlices with the official kubernetes client: list, watch, conditions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from gateway.config.native import EndpointSlices, parse_native
from gateway.upstream.discovery import EndpointSliceWatcher, replica_urls
from gateway.upstream.routing import DeploymentPool, Router
from tests.gateway.conftest import MODEL, gateway_config
from tests.gateway.kube_api import FakeKubeApi, endpoint, endpoint_slice

NS = "models"


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    api = await FakeKubeApi().start()
    yield api
    await api.stop()


def pool_for(port: object = "http", refresh: float = 30) -> DeploymentPool:
    config = gateway_config([{"name": "pool", "model": MODEL, "replicas": {"endpoint_slices": {
        "service": "vllm", "namespace": NS, "port": port, "refresh": refresh}}}])
    return Router(parse_native(config)).pools[0]


def spec_of(pool: DeploymentPool) -> EndpointSlices:
    assert pool.config.replicas is not None and pool.config.replicas.endpoint_slices is not None
    return pool.config.replicas.endpoint_slices


def watcher_for(pool: DeploymentPool, api: Any, events: list[tuple[str, dict[str, Any]]] | None = None,
                ) -> EndpointSliceWatcher:
    spec = spec_of(pool)
    sink = (lambda name, **fields: events.append((name, fields))) if events is not None else None
    return EndpointSliceWatcher(pool, spec, api, sink)


def urls(pool: DeploymentPool) -> list[str]:
    return [r.base_url for r in pool.replicas]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Waits well under the 30 s `refresh` these pools use: only a watch can be this quick."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_only_ready_endpoints_that_are_not_terminating_take_new_calls() -> None:
    def ep(ip: str, **conditions: bool) -> k8s.V1Endpoint:
        return k8s.V1Endpoint(addresses=[ip], conditions=k8s.V1EndpointConditions(**conditions) if conditions else None)

    served = k8s.V1EndpointSlice(address_type="IPv4", ports=[k8s.DiscoveryV1EndpointPort(name="http", port=8000)],
                                 endpoints=[
                                     ep("10.0.0.1", ready=True),
                                     ep("10.0.0.2"),  # no conditions: ready
                                     ep("10.0.0.3", serving=True),  # ready unset: ready
                                     ep("10.0.0.4", ready=False),  # not ready (starting, or failing its probe)
                                     ep("10.0.0.5", ready=False, serving=True, terminating=True),  # draining
                                     ep("10.0.0.6", ready=False, serving=False, terminating=True),  # going away
                                     ep("10.0.0.7", ready=True, terminating=True),  # terminating wins
                                     ep("fd00::8", ready=True, serving=True, terminating=False),
                                 ])
    assert replica_urls([served], spec_of(pool_for())) == ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1",
                                            "http://10.0.0.3:8000/v1", "http://[fd00::8]:8000/v1"]


async def test_changes_arrive_through_the_watch_and_replicas_that_stay_keep_their_state(kube: FakeKubeApi) -> None:
    await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=None),
                                                         endpoint("10.0.0.3", ready=False)], 8000))
    await kube.put(NS, endpoint_slice("other-x", "other", [endpoint("10.9.9.9")], 8000))  # another Service
    pool = pool_for()
    watcher = watcher_for(pool, kube.api())
    assert await watcher.refresh() == ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]
    assert kube.lists == [(NS, "kubernetes.io/service-name=vllm")]
    first = pool.replicas[0]
    first.in_flight = 3
    watcher.start()
    try:
        await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.1"), endpoint("10.0.0.4")], 8000))
        await until(lambda: urls(pool) == ["http://10.0.0.1:8000/v1", "http://10.0.0.4:8000/v1"])
        await kube.put(NS, endpoint_slice("vllm-b", "vllm", [endpoint("10.0.0.5")], 8000))  # a second slice
        await until(lambda: len(pool.replicas) == 3)
        await kube.delete(NS, "vllm-a")
        await until(lambda: urls(pool) == ["http://10.0.0.5:8000/v1"])
    finally:
        await watcher.stop()
    assert len(kube.lists) == 1, "one list at start; every change after it came through the watch"
    assert kube.watches[0]["resourceVersion"] == "3" and kube.watches[0]["labelSelector"] == \
        "kubernetes.io/service-name=vllm" and kube.watches[0]["timeoutSeconds"] == "30"
    assert first.in_flight == 3


async def test_a_terminating_replica_leaves_and_the_one_that_stays_keeps_its_load(kube: FakeKubeApi) -> None:
    await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.1"), endpoint("10.0.0.2")], 8000))
    pool = pool_for()
    watcher = watcher_for(pool, kube.api())
    await watcher.refresh()
    first = pool.replicas[0]
    first.in_flight = 2
    watcher.start()
    try:
        await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False,
                                                             serving=True, terminating=True)], 8000))
        await until(lambda: urls(pool) == ["http://10.0.0.1:8000/v1"])
    finally:
        await watcher.stop()
    assert pool.replicas[0] is first and first.in_flight == 2


async def test_an_expired_resource_version_means_a_new_list(kube: FakeKubeApi) -> None:
    await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.1")], 8000))
    pool = pool_for()
    watcher = watcher_for(pool, kube.api())
    await watcher.refresh()  # at resourceVersion 2
    await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.2")], 8000))
    kube.compact()  # the change above is no longer in the history: a watch from 2 gets 410 Gone
    watcher.start()
    try:
        await until(lambda: urls(pool) == ["http://10.0.0.2:8000/v1"])
        await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.3")], 8000))
        await until(lambda: urls(pool) == ["http://10.0.0.3:8000/v1"])
    finally:
        await watcher.stop()
    assert len(kube.lists) == 2, "the 410 was answered by one new list"
    assert [w["resourceVersion"] for w in kube.watches[:2]] == ["2", "3"]


async def test_api_failures_keep_the_last_replicas_and_the_watch_recovers(kube: FakeKubeApi) -> None:
    await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.1")], 8000))
    pool = pool_for(refresh=0.2)
    events: list[tuple[str, dict[str, Any]]] = []
    watcher = watcher_for(pool, kube.api(), events)
    await watcher.refresh()
    kube.failing = 3  # the next three calls answer 500
    watcher.start()
    try:
        await until(lambda: kube.failing == 0 and watcher.last_error is None and len(kube.watches) >= 1)
        assert urls(pool) == ["http://10.0.0.1:8000/v1"]
        failures = [fields for name, fields in events if name == "discovery_failed"]
        assert len(failures) == 1 and "500" in failures[0]["error"], "reported once per outage"
        assert [name for name, _ in events][-1] == "discovery_recovered"
        await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.2")], 8000))
        await until(lambda: urls(pool) == ["http://10.0.0.2:8000/v1"])
    finally:
        await watcher.stop()
    assert len(kube.lists) == 1, "a failed watch resumes from its resourceVersion, without a new list"


async def test_an_unreachable_api_server_at_start_keeps_the_pool_empty_and_says_why() -> None:
    pool = pool_for(port=8000)
    broken = k8s.DiscoveryV1Api(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:1")))
    watcher = watcher_for(pool, broken)
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for an API server that is not there
        await watcher.refresh()
    assert pool.replicas == []


async def test_stopping_ends_the_watch_thread_and_applies_nothing_more(kube: FakeKubeApi) -> None:
    await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.1")], 8000))
    pool = pool_for(refresh=1)
    watcher = watcher_for(pool, kube.api())
    await watcher.refresh()
    watcher.start()
    thread = watcher._thread
    assert thread is not None and thread.daemon, "a daemon thread: it never holds the process at exit"
    await until(lambda: len(kube.watches) >= 1)
    await watcher.stop()
    await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.2")], 8000))
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive(), "the thread ends with its watch call (timeoutSeconds = refresh)"
    assert urls(pool) == ["http://10.0.0.1:8000/v1"]


async def test_gateway_routes_to_replicas_found_in_endpoint_slices(kube: FakeKubeApi, gateway_factory) -> None:
    from gateway.sim import SimServer, SimSettings

    first = await SimServer(SimSettings(models=(MODEL,), name="pod-a"), host="127.0.0.2").start()
    second = await SimServer(SimSettings(models=(MODEL,), name="pod-b"), host="127.0.0.3", port=first.port).start()
    try:
        await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("127.0.0.2"), endpoint("127.0.0.3")],
                                          first.port))
        config = gateway_config([{"name": "pool", "model": MODEL, "replicas": {"endpoint_slices": {
            "service": "vllm", "namespace": NS, "port": "http", "refresh": 30}}}])
        gw = await gateway_factory(config, discovery_api=kube.api())
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


async def test_a_replica_that_leaves_keeps_its_calls_in_flight(kube: FakeKubeApi, gateway_factory) -> None:
    from gateway.sim import SimServer, SimSettings

    leaving = await SimServer(SimSettings(models=(MODEL,), name="pod-a", ttft=1.5, tokens_per_s=20,
                                          output_tokens=60), host="127.0.0.2").start()
    staying = await SimServer(SimSettings(models=(MODEL,), name="pod-b"), host="127.0.0.3", port=leaving.port).start()
    try:
        await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("127.0.0.2")], leaving.port))
        config = gateway_config([{"name": "pool", "model": MODEL, "replicas": {"endpoint_slices": {
            "service": "vllm", "namespace": NS, "port": "http", "refresh": 30}}}], timeouts={
            "connect": 2, "first_byte": 10, "idle": 10, "total": 30})
        gw = await gateway_factory(config, discovery_api=kube.api())
        client = gw.client(timeout=30)
        stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "stream"}],
                                                      stream=True)  # 3 s of tokens after 1.5 s
        whole = asyncio.create_task(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "whole"}]))  # answered after 1.5 s
        await until(lambda: leaving.stats.in_flight == 2)
        await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("127.0.0.2", ready=False, serving=True,
                                                             terminating=True), endpoint("127.0.0.3")], leaving.port))
        pool = gw.state.router.pools[0]
        await until(lambda: urls(pool) == [f"http://127.0.0.3:{leaving.port}/v1"])
        assert not whole.done(), "the whole answer is still in flight after its replica left"
        answer = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "next"}])
        assert answer.id.startswith("chatcmpl-pod-b-")
        chunks = [c async for c in stream]
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 60
        assert (await whole).id.startswith("chatcmpl-pod-a-")
    finally:
        await leaving.stop()
        await staying.stop()


async def test_a_watch_resumes_from_its_last_bookmark(kube: FakeKubeApi) -> None:
    await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.1")], 8000))
    pool = pool_for(refresh=1)  # each watch call lasts 1 s
    watcher = watcher_for(pool, kube.api())
    await watcher.refresh()  # at resourceVersion 2
    watcher.start()
    try:
        await until(lambda: len(kube.watches) >= 1)
        for i in range(3):  # changes to another Service: none reaches this watch, but the history moves on
            await kube.put(NS, endpoint_slice("other-x", "other", [endpoint(f"10.9.9.{i}")], 8000))
        await until(lambda: len(kube.watches) >= 2)
        kube.compact()
        await kube.put(NS, endpoint_slice("vllm-a", "vllm", [endpoint("10.0.0.2")], 8000))
        await until(lambda: urls(pool) == ["http://10.0.0.2:8000/v1"])
    finally:
        await watcher.stop()
    assert kube.watches[0]["resourceVersion"] == "2" and kube.watches[1]["resourceVersion"] == "5"
    assert len(kube.lists) == 1, "resumed from the bookmark, so compaction cost no new list"
