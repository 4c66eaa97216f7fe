"""`llmp verify --stack prod` against a deployed prod stack played for real: four regional gateways (real aiohttp
apps with real Redis and a ledger store) over simulated vLLM replicas, one fake Kubernetes API server per region
(tests/gateway/kube_api.py) holding what the program deploys there, the official CLI entry point, exit codes."""
from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from aiohttp import ClientSession, web

from gateway.upstream import routing
from gateway.upstream.discovery import replicas
from infra import cli
from infra.config import ROOT, StackConfig, load_file
from infra.verify import calls
from infra.verify.targets import Targets, targets
from tests.gateway.conftest import KEY, RunningGateway, closed_port_url, gateway_config
from tests.gateway.conftest import gateway_factory as gateway_factory
from tests.gateway.conftest import sim_factory as sim_factory
from tests.gateway.kube_api import FakeKubeApi, node, node_pool, workload
from tests.gateway.servers import RedisServer

PROD: StackConfig = load_file(ROOT / "Pulumi.prod.yaml", "prod")
EU_ONLY = "mistral-small-24b"


class Deployed:
    """The prod stack as deployed, per region: its cluster's API server, its Redis, its gateway."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.targets: Targets = targets(PROD)
        self.kube: dict[str, FakeKubeApi] = {}
        self.redis: dict[str, RedisServer] = {}
        self.gateways: dict[str, RunningGateway] = {}
        self.endpoints: dict[str, str] = {}
        self.contexts: dict[str, str] = {}

    def argv(self, *extra: str) -> list[str]:
        kubeconfig = self.tmp / "kubeconfig"
        clusters = [{"name": c, "cluster": {"server": self.contexts.get(r, self.kube[r].url)}}
                    for r, c in ((r.name, r.context) for r in self.targets.regions)]
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": clusters[0]["name"], "clusters": clusters,
            "users": [{"name": "tester", "user": {"token": "fake-token"}}],
            "contexts": [{"name": c["name"], "context": {"cluster": c["name"], "user": "tester"}} for c in clusters]}))
        args = ["verify", "--stack", "prod", "--kubeconfig", str(kubeconfig), "--key", KEY, "--timeout", "5"]
        for name, url in self.endpoints.items():
            args += ["--endpoint", f"{name}={url}"]
        return [*args, *extra]


def _models(region: str, sims: list[str], served_anyway: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    zone = PROD.zone_of(region)
    names = [m.name for m in PROD.models_in(region)] + list(served_anyway)
    return [{"alias": name, "deployments": [{"name": f"{name}-{region}", "model": name, "region": region,
                                             "residency": zone, "replicas": {"static": sims}}]} for name in names]


@pytest.fixture
async def deploy(tmp_path: Path, sim_factory: Any,
                 gateway_factory: Any) -> AsyncIterator[Callable[..., Awaitable[Deployed]]]:
    """Deploys the prod stack; `serve_eu_only_in` gives that region's gateway the EU-only model (a wrong config)."""
    started: list[Deployed] = []

    async def start(serve_eu_only_in: str | None = None, sims_in: dict[str, int] | None = None) -> Deployed:
        d = Deployed(tmp_path)
        started.append(d)
        all_models = tuple(m.name for m in PROD.models)
        for region in d.targets.regions:
            kube = d.kube[region.name] = await FakeKubeApi().start()
            for pool in region.pools:
                kube.set(node_pool(pool.name))
                for i in range(pool.min_nodes):
                    kube.set(node(f"{region.name}-{pool.name}-{i}", {"llm-platform/pool": pool.name}))
            for release in region.releases:
                kube.set(workload("Deployment", release.name, release.floor), d.targets.model_namespace)
            kube.set(workload("StatefulSet", d.targets.gateway_workload, region.gateway_floor),
                     d.targets.gateway_namespace)
            redis = d.redis[region.name] = RedisServer()
            sims = [(await sim_factory(name=f"{region.name}-{i}", models=all_models)).base_url
                    for i in range((sims_in or {}).get(region.name, 2))]
            wrong = region.name == serve_eu_only_in
            config = gateway_config(models=_models(region.name, sims, (EU_ONLY,) if wrong else ()),
                                    region=region.name, residency=region.zone)
            if region.zone == "us" and not wrong:
                config["other_zones"] = {"eu": {"url": "https://eu.api.llm.example.com", "models": [EU_ONLY]}}
            config["redis"] = {"url": redis.url}
            config["ledger"] = {"store": f"sqlite:///{tmp_path / region.name}.db",
                                "spool_dir": str(tmp_path / f"spool-{region.name}")}
            gw = d.gateways[region.name] = await gateway_factory(config)
            d.endpoints[region.host] = gw.url
        d.endpoints["us.api.llm.example.com"] = d.gateways["us-east-1"].url
        d.endpoints["eu.api.llm.example.com"] = d.gateways["eu-north-1"].url
        d.endpoints["api.llm.example.com"] = d.gateways["us-west-2"].url
        return d

    yield start
    for d in started:
        for kube in d.kube.values():
            await kube.stop()
        for redis in d.redis.values():
            redis.stop()


async def verify(d: Deployed, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = await asyncio.to_thread(cli.main, d.argv(*extra))  # the servers keep serving on this loop meanwhile
    out, err = capsys.readouterr()
    assert KEY not in out + err, "the key must never be printed"
    return code, out + err


def line(out: str, region: str, name: str) -> str:
    """The line of check `name` under `region`'s heading."""
    group = None
    for text in out.splitlines():
        if not text.startswith(" ") and text.endswith(":"):
            group = text[:-1]
        elif group == region and text.strip().split(" ", 2 if text.strip().startswith("NOT ") else 1)[-1].startswith(
                name):
            return text.strip()
    raise AssertionError(f"no line {name!r} under {region}:\n{out}")


# ---- what verify expects, from the program's own names ---------------------------------------------------------

def test_targets_follow_the_programs_names_for_prod() -> None:
    t = targets(PROD)
    east = next(r for r in t.regions if r.name == "us-east-1")
    assert east.context == "llmp-prod-us-east-1" and east.host == "us-east-1.api.llm.example.com"
    assert [p.name for p in east.pools] == ["h100", "mid", "batch"]
    assert {r.name: r.floor for r in east.releases} == {"vllm-llama-3-3-70b": 1, "vllm-llama-3-1-8b": 2,
                                                        "vllm-qwen2-5-7b-batch": 0}
    assert east.session_model == "llama-3-1-8b" and east.gateway_floor == 3
    assert east.restricted_elsewhere == ((EU_ONLY, "eu"),)
    assert next(r for r in t.regions if r.name == "eu-west-2").restricted_elsewhere == ()
    assert t.zone_hosts == {"us": "us.api.llm.example.com", "eu": "eu.api.llm.example.com"}
    assert t.zone_models == {"us": "llama-3-3-70b", "eu": "llama-3-3-70b"} and t.global_model == "llama-3-3-70b"
    assert (t.gateway_namespace, t.gateway_workload, t.model_namespace) == ("llm-gateway", "gateway", "llm-serving")


def test_verify_relies_on_the_gateways_own_header_names() -> None:
    import inspect

    from gateway.http import litellm_headers

    assert calls.REPLICA_HEADER == routing.REPLICA_HEADER
    source = inspect.getsource(litellm_headers.LiteLLMHeaders._fixed)
    assert f'"{calls.DEPLOYMENT_HEADER}": dep.name' in source
    assert f'"{calls.FALLBACKS_HEADER}": str(fallbacks)' in source


def test_the_own_deployment_verify_expects_is_the_one_the_program_renders() -> None:
    from infra.gateway_config import gateway_config as rendered

    t = targets(PROD)
    for region in PROD.regions:
        names = {d["name"] for m in rendered(PROD, region)["models"] for d in m["deployments"]}
        target = next(r for r in t.regions if r.name == region.name)
        assert {r.deployment for r in target.releases} <= names


def test_a_discovered_replica_is_named_after_its_pod_never_its_address() -> None:
    from kubernetes import client as k8s

    from gateway.config.native import EndpointSlices

    spec = EndpointSlices(service="vllm-a", namespace="llm-serving", port=8000)
    slice_ = k8s.V1EndpointSlice(address_type="IPv4", endpoints=[
        k8s.V1Endpoint(addresses=["10.0.0.7"], target_ref=k8s.V1ObjectReference(kind="Pod", name="vllm-a-5d9f-x2"))],
        ports=[k8s.DiscoveryV1EndpointPort(name="http", port=8000)])
    url = f"{spec.scheme}://10.0.0.7:8000{spec.base_path}".rstrip("/")
    assert replicas([slice_], spec) == [(url, "vllm-a-5d9f-x2")]


async def test_a_watched_pool_names_its_replicas_after_their_pods() -> None:
    """Through the real watcher and the fake API server: the EndpointSlice's targetRef becomes the replica's name."""
    from gateway.config.native import parse_native
    from gateway.upstream.discovery import EndpointSliceWatcher
    from gateway.upstream.routing import Router
    from tests.gateway.conftest import MODEL
    from tests.gateway.kube_api import endpoint, endpoint_slice

    kube = await FakeKubeApi().start()
    try:
        pods = [endpoint("10.0.0.1"), endpoint("10.0.0.2")]
        for i, pod in enumerate(pods):
            pod["targetRef"] = {"kind": "Pod", "name": f"vllm-a-7c9d-{i}", "namespace": "models"}
        await kube.put("models", endpoint_slice("vllm-abc", "vllm", pods, 8000))
        config = gateway_config([{"name": "pool", "model": MODEL, "replicas": {"endpoint_slices": {
            "service": "vllm", "namespace": "models", "port": "http"}}}])
        pool = Router(parse_native(config)).pools[0]
        assert pool.config.replicas is not None and pool.config.replicas.endpoint_slices is not None
        await EndpointSliceWatcher(pool, pool.config.replicas.endpoint_slices, kube.api()).refresh()
        assert {r.base_url: r.name for r in pool.replicas} == {"http://10.0.0.1:8000/v1": "vllm-a-7c9d-0",
                                                              "http://10.0.0.2:8000/v1": "vllm-a-7c9d-1"}
    finally:
        await kube.stop()


def test_a_replica_without_a_pod_name_keeps_its_name_when_others_join_or_leave() -> None:
    from gateway.config.native import parse_native
    from gateway.upstream.routing import Router
    from tests.gateway.conftest import MODEL

    pool = Router(parse_native(gateway_config([{"name": "pool", "model": MODEL, "replicas": {
        "static": ["http://10.0.0.2:8000/v1", "http://10.0.0.3:8000/v1"]}}]))).pools[0]
    assert [r.name for r in pool.replicas] == ["pool-0", "pool-1"]
    pool.set_replicas(["http://10.0.0.1:8000/v1", "http://10.0.0.3:8000/v1"])  # .2 left, .1 joined
    assert {r.base_url: r.name for r in pool.replicas} == {"http://10.0.0.1:8000/v1": "pool-0",
                                                          "http://10.0.0.3:8000/v1": "pool-1"}
    pool.set_replicas(["http://10.0.0.3:8000/v1"], {"http://10.0.0.3:8000/v1": "vllm-x"})
    assert [r.name for r in pool.replicas] == ["vllm-x"]


async def test_a_pod_name_that_arrives_later_renames_its_replica() -> None:
    """Same addresses, a targetRef set afterwards (or an address reused by a new pod): the name follows."""
    from gateway.config.native import parse_native
    from gateway.upstream.discovery import EndpointSliceWatcher
    from gateway.upstream.routing import Router
    from tests.gateway.conftest import MODEL
    from tests.gateway.kube_api import endpoint, endpoint_slice

    kube = await FakeKubeApi().start()
    try:
        await kube.put("models", endpoint_slice("vllm-abc", "vllm", [endpoint("10.0.0.1")], 8000))
        config = gateway_config([{"name": "pool", "model": MODEL, "replicas": {"endpoint_slices": {
            "service": "vllm", "namespace": "models", "port": "http"}}}])
        pool = Router(parse_native(config)).pools[0]
        assert pool.config.replicas is not None and pool.config.replicas.endpoint_slices is not None
        watcher = EndpointSliceWatcher(pool, pool.config.replicas.endpoint_slices, kube.api())
        await watcher.refresh()
        assert [r.name for r in pool.replicas] == ["pool-0"]
        pod = endpoint("10.0.0.1")
        pod["targetRef"] = {"kind": "Pod", "name": "vllm-a-new", "namespace": "models"}
        await kube.put("models", endpoint_slice("vllm-abc", "vllm", [pod], 8000))
        await watcher.refresh()
        assert [r.name for r in pool.replicas] == ["vllm-a-new"]
    finally:
        await kube.stop()


# ---- the whole stack ---------------------------------------------------------------------------------------------

async def test_a_healthy_prod_stack_passes_every_check(deploy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy()
    code, out = await verify(d, capsys)
    assert code == 0, out
    assert "FAIL" not in out and out.rstrip().endswith("0 failed")
    for region in ("us-east-1", "us-west-2", "eu-north-1", "eu-west-2"):
        assert line(out, region, "NodePool h100").startswith("PASS")
        assert "2 replica(s) ready, floor 2" in line(out, region, "model llama-3-1-8b")
        assert "StatefulSet llm-gateway/gateway" in line(out, region, "gateway workload")
        assert "redis connected, ledger connected" in line(out, region, f"readiness of {region}.api.llm.example.com")
        affinity = line(out, region, f"session affinity via {region}.api")
        assert f"sessions of 4 calls, each on one replica, 2 replicas in all (llama-3-1-8b-{region}-0, " \
               f"llama-3-1-8b-{region}-1)" in affinity and "bounded-load ring moves a session" in affinity
        assert "own deployment(s) at their floor" in line(out, region, f"readiness of {region}.api")
    assert "421 model_in_other_residency_zone" in line(out, "us-west-2", f"{EU_ONLY} refused outside zone eu")
    assert line(out, "zones", "chat via eu.api.llm.example.com").startswith("PASS")
    assert line(out, "global", "chat via api.llm.example.com").startswith("PASS")


async def test_json_output_has_every_check_and_the_verdict(deploy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy()
    code, out = await verify(d, capsys, "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["stack"] == "prod"
    assert {c["group"] for c in doc["checks"]} == {"us-east-1", "us-west-2", "eu-north-1", "eu-west-2", "zones",
                                                   "global"}
    assert all(set(c) == {"group", "name", "status", "reason"} for c in doc["checks"])


async def test_a_nodepool_not_ready_fails(deploy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy()
    d.kube["us-west-2"].set(node_pool("h100", ready=False))
    code, out = await verify(d, capsys)
    assert code == 1
    assert line(out, "us-west-2", "NodePool h100") == "FAIL NodePool h100: not Ready: NodeClassNotReady " \
                                                      "simulated: NodeClassNotReady"
    assert line(out, "us-east-1", "NodePool h100").startswith("PASS")


async def test_a_pool_short_of_ready_nodes_fails(deploy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy()
    d.kube["eu-west-2"].set(node("eu-west-2-mid-0", {"llm-platform/pool": "mid"}, ready=False))
    code, out = await verify(d, capsys)
    assert code == 1
    assert "0 node(s) Ready, at least 1 expected; not Ready: eu-west-2-mid-0" in line(out, "eu-west-2", "NodePool mid")


async def test_a_model_with_no_ready_replica_fails(deploy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy()
    d.kube["eu-north-1"].set(workload("Deployment", "vllm-llama-3-3-70b", 0), "llm-serving")
    code, out = await verify(d, capsys)
    assert code == 1
    assert line(out, "eu-north-1", "model llama-3-3-70b") == \
        "FAIL model llama-3-3-70b: 0 replica(s) ready, floor 1 (Deployment llm-serving/vllm-llama-3-3-70b)"


async def test_a_gateway_still_a_deployment_is_accepted_and_a_missing_one_fails(
        deploy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy()
    kube = d.kube["us-east-1"]
    del kube.resources[("statefulsets", "llm-gateway", "gateway")]
    kube.set(workload("Deployment", "gateway", 3), "llm-gateway")
    del d.kube["eu-north-1"].resources[("statefulsets", "llm-gateway", "gateway")]
    code, out = await verify(d, capsys)
    assert code == 1
    assert "Deployment llm-gateway/gateway" in line(out, "us-east-1", "gateway workload")
    assert line(out, "eu-north-1", "gateway workload") == \
        "FAIL gateway workload: no StatefulSet or Deployment llm-gateway/gateway"


async def test_a_gateway_whose_redis_is_down_fails_readiness_of_its_stores(
        deploy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.governance import store_health

    d = await deploy()
    d.redis["eu-west-2"].stop()
    # The gateway notices at its next background probe (every MIN_INTERVAL s), never inside /health/ready.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + store_health.MIN_INTERVAL + store_health.PROBE_TIMEOUT + 2
    async with ClientSession() as http:
        while loop.time() < deadline:
            async with http.get(d.gateways["eu-west-2"].url + "/health/ready") as resp:
                if (await resp.json())["stores"]["redis"]["status"] == "unreachable":
                    break
            await asyncio.sleep(0.1)
    code, out = await verify(d, capsys)
    assert code == 1
    got = line(out, "eu-west-2", "readiness of eu-west-2.api.llm.example.com")
    assert got.startswith("FAIL") and "redis unreachable" in got and "ledger" not in got.split("but", 1)[1]
    assert line(out, "eu-north-1", "readiness of eu-north-1.api.llm.example.com").startswith("PASS")


async def test_a_zone_name_that_does_not_answer_fails_naming_it(deploy: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy()
    gone = closed_port_url().removesuffix("/v1")
    d.endpoints["eu.api.llm.example.com"] = gone
    code, out = await verify(d, capsys)
    assert code == 1
    got = line(out, "zones", "chat via eu.api.llm.example.com")
    assert got.startswith(f"FAIL chat via eu.api.llm.example.com: {gone} unreachable (ConnectError")
    assert "Traceback" not in out


async def test_an_unreachable_cluster_is_one_fail_line_not_a_traceback(
        deploy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy()
    d.contexts["us-west-2"] = closed_port_url().removesuffix("/v1")
    code, out = await verify(d, capsys)
    assert code == 1 and "Traceback" not in out
    assert line(out, "us-west-2", "cluster llmp-prod-us-west-2").startswith(
        "FAIL cluster llmp-prod-us-west-2: API server of llmp-prod-us-west-2 unreachable")
    assert line(out, "us-west-2", "readiness of us-west-2.api.llm.example.com").startswith("PASS")


async def test_an_unknown_kube_context_fails_that_region(deploy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy()
    code, out = await verify(d, capsys, "--context", "eu-west-2=nowhere")
    assert code == 1
    assert "cannot load kube context 'nowhere'" in line(out, "eu-west-2", "cluster nowhere")


def test_a_credential_plugin_that_hangs_is_a_fail_line_within_the_timeout(tmp_path: Path) -> None:
    """`aws eks get-token` that never answers (the client would wait forever): one FAIL after 3 timeouts."""
    import time

    from infra.verify.cluster import cluster_checks

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stuck",
        "clusters": [{"name": "stuck", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "eks", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                    "command": "sleep", "args": ["10"]}}}],
        "contexts": [{"name": "stuck", "context": {"cluster": "stuck", "user": "eks"}}]}))
    t = targets(PROD)
    started = time.monotonic()
    checks = cluster_checks(t.regions[0], t, str(kubeconfig), "stuck", 0.3)
    assert time.monotonic() - started < 5
    assert [(c.status, c.name) for c in checks] == [("FAIL", "cluster stuck")]
    assert "its credentials took over 0.9 s" in checks[0].reason


async def _round_robin(upstreams: list[str], drop: str = "") -> tuple[web.AppRunner, str]:
    """A load balancer in front of gateway replicas, each call to the next one; `drop` a request header it loses."""
    turn = itertools.cycle(upstreams)

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length", drop)}
        async with ClientSession() as http, http.request(request.method, next(turn) + request.path_qs, data=body,
                                                         headers=headers) as resp:
            return web.Response(status=resp.status, body=await resp.read(), headers={
                k: v for k, v in resp.headers.items() if k.lower().startswith(("x-", "content-type"))})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_a_session_that_moves_between_replicas_fails(deploy: Any, sim_factory: Any, gateway_factory: Any,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Two gateway replicas of us-east-1 that do not agree on the model's replicas (a rollout gone half-way):
    the session's calls alternate between them and land on different model replicas."""
    d = await deploy()
    names = tuple(m.name for m in PROD.models)
    others = [(await sim_factory(name=f"other-{i}", models=names)).base_url for i in range(2)]
    config = gateway_config(models=_models("us-east-1", others), region="us-east-1", residency="us")
    for model in config["models"]:
        model["deployments"][0]["name"] += "-new"
    other = await gateway_factory(config)
    # Readiness (first call) lands on the other half, the session check's readiness read on the original one.
    runner, url = await _round_robin([other.url, d.gateways["us-east-1"].url])
    d.endpoints["us-east-1.api.llm.example.com"] = url
    try:
        code, out = await verify(d, capsys)
    finally:
        await runner.cleanup()
    assert code == 1
    got = line(out, "us-east-1", "session affinity via us-east-1.api.llm.example.com")
    # The other half answers from a deployment that is not the region's own: failed on the first call it serves.
    assert got.startswith("FAIL") and "llama-3-1-8b-us-east-1-new" in got


async def test_a_gateway_that_ignores_the_session_id_fails_affinity(deploy: Any,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A proxy that loses x-session-id: the gateway keys each call on its prompt, which differs per call, so
    one session's calls spread over the replicas (with one prompt for all calls, this passed)."""
    d = await deploy()
    runner, url = await _round_robin([d.gateways["eu-west-2"].url], drop=calls.SESSION_HEADER)
    d.endpoints["eu-west-2.api.llm.example.com"] = url
    try:
        code, out = await verify(d, capsys)
    finally:
        await runner.cleanup()
    assert code == 1
    got = line(out, "eu-west-2", "session affinity via eu-west-2.api.llm.example.com")
    assert got.startswith("FAIL session affinity via eu-west-2.api.llm.example.com: llama-3-1-8b: one session moved "
                          "between replicas"), got
    assert line(out, "eu-north-1", "session affinity via eu-north-1.api.llm.example.com").startswith("PASS")


async def test_one_replica_leaves_affinity_not_judged_and_readiness_below_the_floor(
        deploy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy(sims_in={"us-west-2": 1})
    code, out = await verify(d, capsys)
    assert code == 1
    assert line(out, "us-west-2", "session affinity via us-west-2.api.llm.example.com") == \
        "NOT JUDGED session affinity via us-west-2.api.llm.example.com: llama-3-1-8b: deployment " \
        "llama-3-1-8b-us-west-2 has 1 replica(s); affinity shows only with 2 or more"
    assert "deployment llama-3-1-8b-us-west-2 has 1 replica(s), floor 2" in \
        line(out, "us-west-2", "readiness of us-west-2.api.llm.example.com")
    assert out.rstrip().endswith(", 1 not judged")


async def test_answers_from_another_deployment_fail_readiness_and_chat(
        deploy: Any, gateway_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """us-west-2's gateway (behind the global name) without its own llama-3-3-70b, a hosted deployment in its
    place: /health/ready is 200 (a deployment is usable) and the call answers 200, both from the wrong one."""
    d = await deploy()
    west = d.gateways["us-west-2"]
    sims = [r.base_url for r in west.state.router.pools[0].replicas]
    config = gateway_config(models=_models("us-west-2", sims), region="us-west-2", residency="us")
    for model in config["models"]:
        if model["alias"] == "llama-3-3-70b":
            model["deployments"][0]["name"] = "llama-3-3-70b-openai"
    hosted = await gateway_factory(config)
    d.endpoints["us-west-2.api.llm.example.com"] = d.endpoints["api.llm.example.com"] = hosted.url
    code, out = await verify(d, capsys)
    assert code == 1
    assert "200, but deployment llama-3-3-70b-us-west-2 not reported" in \
        line(out, "us-west-2", "readiness of us-west-2.api.llm.example.com")
    assert line(out, "global", "chat via api.llm.example.com").startswith(
        "FAIL chat via api.llm.example.com: llama-3-3-70b: answered by deployment llama-3-3-70b-openai, not ")


async def test_a_restricted_model_served_outside_its_zone_fails(deploy: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    d = await deploy(serve_eu_only_in="us-west-2")
    code, out = await verify(d, capsys)
    assert code == 1
    assert line(out, "us-west-2", f"{EU_ONLY} refused outside zone eu") == \
        f"FAIL {EU_ONLY} refused outside zone eu: us-west-2.api.llm.example.com served it (200): a model " \
        "restricted to eu answered outside it"
    assert line(out, "us-east-1", f"{EU_ONLY} refused outside zone eu").startswith("PASS")


# ---- usage -------------------------------------------------------------------------------------------------------

def test_an_unknown_stack_is_bad_usage_and_lists_the_stacks(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["verify", "--stack", "staging", "--key", KEY])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "llmp verify: --stack: no stack 'staging' (no Pulumi.staging.yaml); stacks: preview, prod, " \
                  "or pr-<number> for a pull request's\n"


@pytest.mark.parametrize(("argv", "says"), [
    (["--context", "mars-1=x"], "--context: mars-1 is not a region of stack prod"),
    (["--context", "us-east-1"], "--context: 'us-east-1' is not REGION=CONTEXT"),
    (["--endpoint", "api.example.org=http://x"], "--endpoint: api.example.org is not a name verify calls"),
    (["--endpoint", "api.llm.example.com=ftp://x"], "--endpoint: ftp://x is not an http:// or https:// URL"),
    (["--timeout", "0"], "--timeout: 0.0 is not a positive number of seconds"),
    (["--timeout", "inf"], "--timeout: inf is not a positive number of seconds"),
    (["--timeout", "nan"], "--timeout: nan is not a positive number of seconds"),
    (["--endpoint", "api.llm.example.com=http://[::1"], "--endpoint: http://[::1 is not a valid URL"),
    (["--endpoint", "api.llm.example.com=https://"], "--endpoint: https:// names no host"),
])
def test_bad_arguments_are_bad_usage_naming_the_flag(argv: list[str], says: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", "--stack", "prod", "--key", KEY, *argv]) == 2
    assert says in capsys.readouterr().err


def _gateways(body: Any) -> calls.Gateways:
    """verify's client with its transport answering every call with `body` (httpx2.MockTransport)."""
    gateways = calls.Gateways(calls.Endpoints({}), KEY, 1.0)
    gateways.client = httpx2.Client(transport=httpx2.MockTransport(lambda _: httpx2.Response(200, json=body)))
    return gateways


@pytest.mark.parametrize(("body", "says"), [
    ({"stores": {"redis": "ok", "ledger": {"status": "connected"}}}, "redis reported as 'ok', not a status"),
    ({"stores": ["redis"]}, "no stores reported"),
    ([1, 2], "deployment m-r not reported"),
    ({"deployments": {"m-r": {"healthy": True, "replicas": "2"}}}, "deployment m-r has '2' replica(s), floor 1"),
    ({"deployments": {"m-r": {"healthy": "yes", "replicas": 2}}}, "deployment m-r unhealthy"),
])
def test_a_readiness_body_of_the_wrong_shape_is_a_fail_line(body: Any, says: str) -> None:
    check = calls.health(_gateways(body), "r", "r.example.com", {"m-r": 1})
    assert check.status == "FAIL" and says in check.reason


@pytest.mark.parametrize(("headers", "says"), [
    ({"x-litellm-model-id": "m-r", "x-litellm-attempted-fallbacks": "1"}, "answered after 1 fallback(s)"),
    ({"x-litellm-model-id": "m-r"}, "answered after unreported fallback(s)"),
    ({"x-litellm-model-id": "m-openai", "x-litellm-attempted-fallbacks": "0"},
     "answered by deployment m-openai, not m-r"),
    ({}, "answered by deployment (not named), not m-r"),
])
def test_a_chat_answer_not_from_the_regions_own_deployment_fails(headers: dict[str, str], says: str) -> None:
    gateways = calls.Gateways(calls.Endpoints({}), KEY, 1.0)
    gateways.client = httpx2.Client(transport=httpx2.MockTransport(lambda _: httpx2.Response(
        200, headers=headers, json={"choices": [{"message": {"content": "ok"}}]})))
    check = calls.chat(gateways, "zones", "r.example.com", "m", {"m-r"})
    assert check.status == "FAIL" and check.reason.startswith(f"m: {says}")


def test_an_unparsable_url_is_a_fail_line_not_a_traceback() -> None:
    gateways = calls.Gateways(calls.Endpoints({"r.example.com": "http://[::1"}), KEY, 1.0)
    check = calls.health(gateways, "r", "r.example.com", {})
    assert check.status == "FAIL" and "http://[::1 is not a URL verify can call" in check.reason


def test_a_key_sent_over_plain_http_off_the_machine_is_warned_about(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("infra.verify.run.run", lambda *a: [])
    assert cli.main(["verify", "--stack", "prod", "--key", KEY, "--endpoint", "api.llm.example.com=http://10.1.2.3",
                     "--endpoint", "us.api.llm.example.com=http://127.0.0.1:8080"]) == 0
    err = capsys.readouterr().err
    assert "http://10.1.2.3 is plain http:// off this machine: the key travels in clear" in err
    assert "127.0.0.1" not in err


def test_without_a_key_verify_says_where_to_give_one(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LLMP_VERIFY_KEY", raising=False)
    assert cli.main(["verify", "--stack", "prod"]) == 2
    assert capsys.readouterr().err == "llmp verify: a gateway key is needed for the chat checks: set " \
                                      "LLMP_VERIFY_KEY (or give --key, which shows in `ps`)\n"
