"""A region's model servers die under load: its gateway answers every call through the other region of its residency
zone, never through a region of another zone, and every accepted call is in exactly one ledger, exactly once.

The three gateways run the configs the program renders for the prod stack (infra/gateway_config.py), with only
addresses and secrets made local: A is eu-north-1, B is eu-west-2 (both of zone eu), C is us-east-1 (zone us), and
the load asks for mistral-small-24b, which only zone eu serves. A reaches B the way the program wires it: B's
regional URL, the zone's master key.

How a call passed between regions is recorded (the decision this test holds): in the ledger of the gateway the
caller reached (A), under the caller's key, naming the deployment that answered (`<model>-eu-west-2`) and its region.
B answers the hop (master key, `x-llmp-hop`) without a ledger row of its own (gateway/governance/gate.py), so the
stack's spend counts each call once, and the caller's budget and spend, which live where its key is, see it.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.upstream.routing import HOP_HEADER
from infra.components.dns import regional_host
from infra.config import ROOT as REPO
from infra.config import StackConfig, load_file
from infra.gateway_config import MASTER_KEY, gateway_config
from tests.gateway.servers import ROOT, GatewayProcess, free_port, wait_port

A, B, C = "eu-north-1", "eu-west-2", "us-east-1"
MODEL = "mistral-small-24b"  # residency eu: served in eu-north-1 and eu-west-2 only
# Each residency zone's master key (one secret per zone, replicated to its regions: infra/components/secrets.py).
MASTER = {"eu": "sk-llmp-eu-zone-0123456789abcdef0123456789abcdef",
          "us": "sk-llmp-us-zone-0123456789abcdef0123456789abcdef"}
SIMS = {A: 2, B: 1, C: 1}  # model server replicas per region


@pytest.fixture(scope="module")
def prod() -> StackConfig:
    return load_file(REPO / "Pulumi.prod.yaml", "prod")


class Sim:
    """One model server (gateway/sim) in a process of its own, so it can be killed as a node or a pod dies."""

    def __init__(self, models: list[str]) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.sim", "--port", str(self.port),
             *[arg for m in models for arg in ("--model", m)]],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 20, self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def localized(cfg: StackConfig, region: str, sims: dict[str, list[Sim]], gateways: dict[str, int],
              workdir: Path) -> dict[str, Any]:
    """The program's config for `region`, with its addresses and secrets made local: the region's model servers
    are its sims, another region's gateway (its regional URL) is that gateway's local port, secret references are
    the zone's master key. Hosted fallbacks leave the stack and are dropped: this is about the stack's regions."""
    config = gateway_config(cfg, cfg.region(region))
    zone = cfg.region(region).residency
    config.pop("secrets")
    assert config["gateway"]["master_key"] == MASTER_KEY
    config["gateway"]["master_key"] = MASTER[zone]
    by_url = {f"https://{regional_host(name, cfg.gateway.domain)}/v1": name for name in gateways}
    assert {d.get("api_base") for m in config["models"] for d in m["deployments"]} >= (
        {u for u, name in by_url.items() if name != region and cfg.zone_of(name) == zone}), "the program wires peers"
    for model in config["models"]:
        deployments = []
        for dep in model["deployments"]:
            if dep.get("tier") == "fallback":
                continue
            if "replicas" in dep:
                assert dep["region"] == region and "endpoint_slices" in dep["replicas"]
                dep["replicas"] = {"static": [s.url for s in sims[region]]}
            else:
                other = by_url.get(dep["api_base"])  # another region of this zone, through its gateway
                if other is None:
                    continue  # a region of C's zone this test does not run (us-west-2)
                assert dep["region"] == other and cfg.zone_of(other) == zone and dep["api_key"] == MASTER_KEY
                dep.update(api_base=f"http://127.0.0.1:{gateways[other]}/v1", api_key=MASTER[zone])
            deployments.append(dep)
        model["deployments"] = deployments
        model.update(input_cost_per_token=0.000001, output_cost_per_token=0.000002)
    config["ledger"] = {"spool_dir": str(workdir / f"{region}-spool"),
                        "store": f"sqlite:///{workdir / f'{region}.db'}", "flush_interval": 0.2}
    return config


@pytest.fixture
def stack(prod: StackConfig, tmp_path: Path) -> Iterator[dict[str, Any]]:
    models = [m.name for m in prod.models]
    sims: dict[str, list[Sim]] = {}
    gateways: dict[str, GatewayProcess] = {}
    try:
        for region, n in SIMS.items():
            sims[region] = [Sim(models) for _ in range(n)]
        ports = {region: free_port() for region in SIMS}
        for region in SIMS:
            gw = GatewayProcess(localized(prod, region, sims, ports, tmp_path), tmp_path, region)
            gw.port = ports[region]
            gateways[region] = gw.start(timeout=30)
        yield {"sims": sims, "gateways": gateways, "dir": tmp_path}
    finally:
        for gw in gateways.values():
            gw.kill(signal.SIGTERM)
        for group in sims.values():
            for sim in group:
                sim.kill()


def ledger(workdir: Path, region: str) -> list[tuple[str, str, str, str, float]]:
    with sqlite3.connect(workdir / f"{region}.db") as db:
        return list(db.execute("SELECT request_id, key_token, deployment, region, cost FROM llmp_spend"))


def where_they_are(workdir: Path, gateways: dict[str, GatewayProcess], ids: list[str],
                   counted: Counter[str]) -> str:
    """What a failure needs to be understood: each missing call's count of rows, whether its record still waits in
    a spool (or its quarantine), and every gateway's events other than calls (a flush cut short says so there)."""
    wanted = set(ids)
    spooled: dict[str, list[str]] = {}
    for path in sorted(workdir.glob("*-spool/*")):
        for line in path.read_bytes().splitlines():
            if any(i.encode() in line for i in wanted):
                spooled.setdefault(path.name, []).append(line.decode(errors="replace")[:200])
    events = {name: [line[:300] for line in gw.log().splitlines()
                     if line.startswith("{") and orjson.loads(line).get("event") not in ("call", "circuit")]
              for name, gw in gateways.items()}
    return orjson.dumps({"rows": {i: counted[i] for i in ids[:5]}, "spooled": spooled, "events": events},
                        option=orjson.OPT_INDENT_2).decode()


def calls_logged(gw: GatewayProcess) -> list[dict[str, Any]]:
    out = []
    for line in gw.log().splitlines():
        if line.startswith("{"):
            event = orjson.loads(line)
            if event.get("event") == "call":
                out.append(event)
    return out


async def test_a_regions_model_servers_die_under_load_and_the_other_region_of_its_zone_answers_every_call(
        stack: dict[str, Any]) -> None:
    gateways: dict[str, GatewayProcess] = stack["gateways"]
    status, made = gateways[A].admin("POST", "/key/generate", {"key_alias": "team-app"}, key=MASTER["eu"])
    assert status == 200, made
    client = openai.AsyncOpenAI(base_url=gateways[A].url + "/v1", api_key=made["key"], max_retries=0, timeout=20)
    answered: dict[str, tuple[float, str]] = {}  # request id -> (when it was sent, the deployment that answered)
    failed: list[str] = []
    stop = asyncio.Event()
    sent = 0

    streamed: list[str] = []

    async def worker(stream: bool = False) -> None:
        nonlocal sent
        while not stop.is_set():
            sent += 1
            rid = f"fo-{sent}"
            started = time.monotonic()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": "where are you?"}], max_tokens=8,
                    stream=stream, extra_headers={"x-request-id": rid})
                assert raw.status_code == 200
                if stream:
                    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
                    streamed.append(rid)
                else:
                    text = raw.parse().choices[0].message.content or ""
                assert text
                answered[rid] = (started, raw.headers["x-litellm-model-id"])
            except openai.APIError as exc:
                failed.append(f"{rid}: {exc}")

    tasks = [asyncio.create_task(worker()) for _ in range(8)]
    await asyncio.sleep(1.5)
    killing_from = time.monotonic()
    for sim in stack["sims"][A]:
        await asyncio.to_thread(sim.kill)  # A's model servers are gone mid-load
    killed_at = time.monotonic()  # every one of them is dead (reaped) from here
    # Streams too, from here on (one cut by the kill mid-body could not move: its first bytes were sent).
    tasks += [asyncio.create_task(worker(stream=True)) for _ in range(2)]
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*tasks)
    await client.close()
    for gw in gateways.values():
        await asyncio.to_thread(gw.kill, signal.SIGTERM)  # the last flush: every accepted call is in a ledger now
        assert gw.proc is not None and gw.proc.returncode == 0, f"{gw.name} exited cleanly after SIGTERM"

    assert not failed, f"{len(failed)} calls not answered, e.g. {failed[:3]}"
    before = [dep for t, dep in answered.values() if t < killing_from]
    after = [dep for t, dep in answered.values() if t > killed_at]
    assert before and after and len(answered) > 40, "the load must be real on both sides of the kill"
    assert set(before) <= {f"{MODEL}-{A}", f"{MODEL}-{B}"}
    assert f"{MODEL}-{A}" in before, "A serves from its own region while it can"
    assert set(after) == {f"{MODEL}-{B}"}, "after the kill, B answers every call"
    assert streamed, "streams through B are answered and charged as whole calls are"

    # Exactly one ledger, exactly once: A's, under the caller's key, naming where the tokens were made.
    rows = {region: ledger(stack["dir"], region) for region in SIMS}
    everywhere = Counter(rid for region_rows in rows.values() for rid, *_ in region_rows)
    doubled = [rid for rid in answered if everywhere[rid] != 1]
    assert not doubled, (f"{len(doubled)} calls not in exactly one ledger once, e.g. {doubled[:3]}: "
                         f"{where_they_are(stack['dir'], gateways, doubled, everywhere)}")
    in_a = {rid: (key, dep, region, cost) for rid, key, dep, region, cost in rows[A]}
    assert set(answered) <= set(in_a)
    assert {in_a[rid][0] for rid in answered} == {made["token_id"]}, "charged to the caller's key, not a master key"
    for rid, (_, dep) in answered.items():
        assert in_a[rid][1:3] == (dep, dep.removeprefix(f"{MODEL}-")) and in_a[rid][3] > 0
    assert rows[B] == [] and rows[C] == [], "a hop is no second row where it was answered"

    # Not lost either: every call B answered for A is one of A's rows that names B.
    hops = calls_logged(gateways[B])
    assert len(hops) == sum(1 for _, dep in answered.values() if dep == f"{MODEL}-{B}")
    assert {h["status"] for h in hops} == {200}
    # Zone us never saw the model nor any call.
    assert calls_logged(gateways[C]) == []


def test_only_a_master_key_call_passed_on_by_a_gateway_goes_unrecorded(tmp_path: Path) -> None:
    """The hop header alone is no way around the ledger: a virtual key's call that carries it is recorded as any
    other; only the zone's master key (held by the zone's gateways and its operators) with it is not."""
    sim = Sim([MODEL])
    config = {"version": 1, "gateway": {"master_key": MASTER["eu"], "region": B, "residency": "eu"},
              "models": [{"alias": MODEL, "input_cost_per_token": 0.000001, "deployments": [
                  {"name": f"{MODEL}-{B}", "model": MODEL, "api_base": sim.url, "region": B, "residency": "eu"}]}],
              "ledger": {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'b.db'}"}}
    gw = GatewayProcess(config, tmp_path, "b")
    try:
        gw.start(timeout=30)
        status, made = gw.admin("POST", "/key/generate", {}, key=MASTER["eu"])
        assert status == 200, made
        client = openai.OpenAI(base_url=gw.url + "/v1", max_retries=0, timeout=20, api_key="unused")
        for rid, key, hop in (("virtual-hop", made["key"], True), ("master-direct", MASTER["eu"], False),
                              ("master-hop", MASTER["eu"], True)):
            headers = {"x-request-id": rid, "Authorization": f"Bearer {key}", **({HOP_HEADER: "1"} if hop else {})}
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                           extra_headers=headers)
        gw.kill(signal.SIGTERM)
        with sqlite3.connect(tmp_path / "b.db") as db:
            rows = dict(db.execute("SELECT request_id, key_token FROM llmp_spend"))
    finally:
        gw.kill()
        sim.kill()
    assert rows == {"virtual-hop": made["token_id"], "master-direct": "master"}
