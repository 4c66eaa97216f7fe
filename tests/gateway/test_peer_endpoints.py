"""The endpoints peers pull from answer the stack's peer key only, and never hand out a key; the `peers` section
is checked with clear errors; a peer that is down or answers garbage is reported once and changes nothing else."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from gateway.config.errors import ConfigError
from gateway.config.native import parse_native
from gateway.governance.keys import VirtualKey
from gateway.governance.peer_wire import MAX_SPEND_BYTES, PeerAnswerError, parse_spend
from gateway.governance.peers import OVERLAP_MARGIN
from gateway.governance.store.documents import key_doc
from gateway.http.app import build_app
from gateway.http.state import STATE
from gateway.sim import SimServer
from gateway.tasks import cancel
from tests.gateway.conftest import KEY, MODEL, RunningGateway, closed_port_url, deployment, gateway_config
from tests.gateway.peering import PEER_KEY, peers_of, start_gateway, wait_for_pulls
from tests.gateway.servers import PostgresServer, free_port
from tests.gateway.test_keys_admin import admin

INTERVAL = 0.1


def config(sim: SimServer, tmp_path: Path, name: str, peer_urls: list[str], **peers: Any) -> dict[str, Any]:
    doc = gateway_config([deployment("sim-a", sim.base_url)], region=name)
    doc["models"][0].update(input_cost_per_token=0.001, output_cost_per_token=0.002)
    doc["ledger"] = {"spool_dir": str(tmp_path / name / "spool"), "store": f"sqlite:///{tmp_path / name / 'l.db'}",
                     "flush_interval": 0.05}
    doc["peers"] = {"urls": peer_urls, "key": PEER_KEY, "interval": INTERVAL, "timeout": 1, **peers}
    return doc


@pytest.fixture
async def started() -> AsyncIterator[list[RunningGateway]]:
    gateways: list[RunningGateway] = []
    yield gateways
    for gw in gateways:
        await gw.runner.cleanup()


async def get(url: str, key: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.read()


def events(gw: RunningGateway, name: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in gw.log_buffer.getvalue().splitlines() if line]
    return [line for line in lines if line.get("event") == name]


async def test_peer_endpoints_answer_the_peer_key_and_nothing_else(sim: SimServer, tmp_path: Path,
                                                                   started: list[RunningGateway]) -> None:
    gw = await start_gateway(config(sim, tmp_path, "a", [closed_port_url().removesuffix("/v1")]))
    started.append(gw)
    _, made = await admin(gw, "POST", "/key/generate", {"max_budget": 5})
    changes = gw.url + "/peer/v1/changes"
    for key in (None, KEY, made["key"], PEER_KEY[:-1] + "x", PEER_KEY + "x", "\u00e9" * 10):
        status, body = await get(changes, key)
        assert status == 401, (key, body)
        assert "peer key" in orjson.loads(body)["error"]["message"]
        status, _ = await get(gw.url + "/peer/v1/spend", key)
        assert status == 401
    # The peer key opens nothing but the peer endpoints.
    assert (await admin(gw, "POST", "/key/generate", {}, key=PEER_KEY))[0] == 401
    assert (await admin(gw, "GET", "/v1/models", key=PEER_KEY))[0] == 401

    status, body = await get(changes, PEER_KEY)
    assert status == 200
    records = orjson.loads(body)["records"]
    assert [(r["kind"], r["id"], r["revoked"]) for r in records] == [("key", made["token_id"], False)]
    assert made["key"] not in body.decode() and made["key"][8:] not in body.decode()

    assert (await admin(gw, "POST", "/team/new", {"team_id": "search", "max_budget": 9,
                                                  "budget_duration": "30d"}))[0] == 200
    _, member = await admin(gw, "POST", "/key/generate", {"team_id": "search"})
    for key in (made["key"], member["key"]):
        async with gw.client(api_key=key) as client:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    await gw.state.governance.ledger.flush()
    status, body = await get(gw.url + "/peer/v1/spend", PEER_KEY)
    answer = orjson.loads(body)
    month = 30 * 86400
    rows = {tuple(r[:4]): r[4] for r in answer["spend"]}
    # A lifetime budget's window starts at 0; a 30d one at the epoch-aligned start of the current window.
    assert set(rows) == {("key_token", made["token_id"], 0, 0.0),
                         ("team_id", "search", month, answer["now"] - answer["now"] % month)}
    assert all(usd > 0 for usd in rows.values())

    status, body = await get(changes + "?since=yesterday", PEER_KEY)
    assert status == 400 and b"since" in body
    status, body = await get(changes + f"?since={time.time() + 5}", PEER_KEY)
    assert status == 200 and orjson.loads(body)["records"] == [] and not orjson.loads(body)["more"]
    later = orjson.dumps([time.time() + 50, "key", "f" * 64]).decode()
    status, body = await get(changes + "?" + urlencode({"after": later, "back": "1"}), PEER_KEY)
    assert status == 200 and orjson.loads(body)["cursor"] == later, "reaching back never moves the cursor back"
    status, body = await get(changes + "?after=%5B1%2C2%5D", PEER_KEY)
    assert status == 400 and b"after: not a cursor" in body


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("ledger"), "peers: needs a 'ledger' section"),
    (lambda d: d["peers"].update(urls=["http://gateway.example.com"]), "urls[0]"),
    (lambda d: d["peers"].update(urls=["https://a.example.com", "https://a.example.com"]), "listed twice"),
    (lambda d: d["peers"].update(key="short"), "at least 32 characters"),
    (lambda d: d["peers"].update(interval=0), "interval"),
    (lambda d: d["peers"].update(extra=1), "extra"),
])
def test_a_peers_section_with_a_mistake_is_refused_by_name(sim: SimServer, tmp_path: Path, change: Any,
                                                           message: str) -> None:
    doc = config(sim, tmp_path, "a", ["https://gateway.eu-west-1.example.com"])
    change(doc)
    with pytest.raises(ConfigError) as caught:
        parse_native(doc)
    assert message in str(caught.value) and "peers" in str(caught.value)


def test_the_peer_key_must_not_be_the_master_key(sim: SimServer, tmp_path: Path) -> None:
    doc = config(sim, tmp_path, "a", ["https://gateway.eu-west-1.example.com"], key=KEY)
    with pytest.raises(ConfigError, match=r"peers\.key: must differ from gateway\.master_key"):
        build_app(parse_native(doc))


class FakePeer:
    """A peer that answers garbage until told otherwise, then valid answers with some spend for one key."""

    def __init__(self) -> None:
        self.garbage = True
        self.token = ""
        self.spend = 0.0
        self.app = web.Application()
        self.app.add_routes([web.get("/peer/v1/changes", self.changes), web.get("/peer/v1/spend", self.spent)])

    async def changes(self, request: web.Request) -> web.Response:
        if self.garbage:  # a record whose key is not a hash: skipped (its spend answer below fails the peer)
            return web.json_response({"records": [{"kind": "key", "id": "sk-llmp-raw", "doc": "{}", "revoked": False,
                                                   "updated_at": 1.0, "changed_at": 1.0}], "more": False})
        return web.json_response({"records": [], "more": False})

    async def spent(self, request: web.Request) -> web.Response:
        if self.garbage:
            return web.Response(body=b"<html>not a peer</html>")
        return web.json_response({"now": time.time(), "spend": [["key_token", self.token, 0, 0, self.spend]]})


async def test_a_peer_down_or_answering_garbage_is_reported_once_and_the_others_still_served(
        sim: SimServer, tmp_path: Path, started: list[RunningGateway]) -> None:
    fake = FakePeer()
    runner = web.AppRunner(fake.app)
    await runner.setup()
    fake_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", fake_port).start()
    try:
        a_port, b_port = free_port(), free_port()
        down = closed_port_url().removesuffix("/v1")
        b = await start_gateway(config(sim, tmp_path, "b", [f"http://127.0.0.1:{a_port}"]), b_port)
        started.append(b)
        a = await start_gateway(config(sim, tmp_path, "a", [f"http://127.0.0.1:{b_port}", f"http://127.0.0.1:{fake_port}",
                                                    down]), a_port)
        started.append(a)
        peers = a.state.governance.peers
        _, made = await admin(b, "POST", "/key/generate", {"max_budget": 1.0})
        await wait_for_pulls(peers, count=4)
        async with a.client(api_key=made["key"]) as client:  # learned from b, though two peers fail
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        failing = {e["peer"]: e["reason"] for e in events(a, "peer_unavailable")}
        assert failing == {f"127.0.0.1:{fake_port}": "bad_answer", down.removeprefix("http://"): "unreachable"}
        assert len(events(a, "peer_unavailable")) == 2, "reported once per outage, not once per pull"
        metrics = generate_latest(a.state.metrics.registry).decode()
        assert f'llmp_gateway_peer_pull_failures_total{{peer="127.0.0.1:{fake_port}",reason="bad_answer"}}' in metrics
        assert f'llmp_gateway_peer_up{{peer="127.0.0.1:{b_port}"}} 1.0' in metrics

        # The garbage peer heals and reports spend for the key; then it answers garbage again: its last totals stay.
        fake.token, fake.spend, fake.garbage = made["token_id"], 0.75, False
        await wait_for_pulls(peers, count=3)
        assert [e["peer"] for e in events(a, "peer_recovered")] == [f"127.0.0.1:{fake_port}"]
        fake.garbage = True
        await wait_for_pulls(peers, count=3)
        assert peers.peer_spend("key_token", made["token_id"], 0, 0.0) == 0.75
        assert [e["peer"] for e in events(a, "peer_unavailable")].count(f"127.0.0.1:{fake_port}") == 2
    finally:
        await runner.cleanup()


async def test_a_revocation_made_elsewhere_is_refused_here_while_the_local_store_is_down(
        sim: SimServer, tmp_path: Path, started: list[RunningGateway]) -> None:
    """Three regions: b revokes a key while a's store is down and c has not heard of the revocation (its puller
    is stopped): c keeps offering the live version, and a still refuses the key, round after round."""
    pg = PostgresServer()
    try:
        a_port, b_port, c_port = free_port(), free_port(), free_port()
        b = await start_gateway(config(sim, tmp_path, "b", [f"http://127.0.0.1:{a_port}"]), b_port)
        started.append(b)
        c = await start_gateway(config(sim, tmp_path, "c", [f"http://127.0.0.1:{b_port}"]), c_port)
        started.append(c)
        doc = config(sim, tmp_path, "a", [f"http://127.0.0.1:{b_port}", f"http://127.0.0.1:{c_port}"])
        doc["ledger"].update(store=pg.url, store_timeout=1)
        doc["keys"] = {"refresh_seconds": 0.2}
        a = await start_gateway(doc, a_port)
        started.append(a)
        _, first = await admin(b, "POST", "/key/generate", {})
        await pulls(a, 3)
        await pulls(c, 3)
        assert await answers(a, first["key"]) == 200 and await answers(c, first["key"]) == 200
        await cancel(peers_of(c)._task)  # c hears nothing more: it offers the live version from now on
        subprocess.run([*pg._prefix, pg._pg_ctl, "-D", pg._data, "-m", "immediate", "-w", "-t", "30", "stop"],
                       check=True, capture_output=True, timeout=60)
        _, second = await admin(b, "POST", "/key/generate", {})
        assert (await admin(b, "POST", "/key/delete", {"keys": [first["key"]]}))[0] == 200
        for _ in range(3):
            await pulls(a, 2)
            assert await answers(a, first["key"]) == 401, "revoked in region b, refused here from memory"
        assert await answers(a, second["key"]) == 200, "made in region b, served here from memory"
        assert len(events(a, "peer_records_held_in_memory")) == 1
        assert events(a, "peer_unavailable") == [], "the peers are fine: the local store is what is down"
    finally:
        pg.stop()


async def pulls(gw: RunningGateway, count: int) -> None:
    await wait_for_pulls(peers_of(gw), count=count)


async def answers(gw: RunningGateway, key: str) -> int:
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}) as resp:
        return resp.status


def test_the_peer_key_is_read_from_the_secret_store_at_start(sim: SimServer, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    doc = config(sim, tmp_path, "a", ["https://gateway.eu-west-1.example.com"], key="secret/gateway/peer-key")
    monkeypatch.delenv("LLMP_SECRET_GATEWAY_PEER_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"peers\.key: cannot read secret LLMP_SECRET_GATEWAY_PEER_KEY"):
        build_app(parse_native(doc))
    monkeypatch.setenv("LLMP_SECRET_GATEWAY_PEER_KEY", "short")
    with pytest.raises(ConfigError, match="at least 32 characters"):
        build_app(parse_native(doc))
    monkeypatch.setenv("LLMP_SECRET_GATEWAY_PEER_KEY", PEER_KEY)
    app = build_app(parse_native(doc))
    assert app[STATE].governance.peers.settings.key == PEER_KEY


class PagingPeer:
    """A peer with three records in two pages: a record the puller must refuse, then a valid key whose document is
    over 400 KB (a key listing 1000 models, as the admin API allows), then on the next page a small valid key."""

    def __init__(self) -> None:
        names = [f"model-{i:04d}-" + "x" * 200 for i in range(1000)]
        self.big = VirtualKey(token="ab" * 32, key_name="sk-llmp-...abab", models=tuple(names),
                              model_rpm_limit=dict.fromkeys(names, 5), created_at=1.0)
        self.small = VirtualKey(token="cd" * 32, key_name="sk-llmp-...cdcd", created_at=1.0)
        self.asked: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.add_routes([web.get("/peer/v1/changes", self.changes), web.get("/peer/v1/spend", self.spent)])

    @staticmethod
    def record(key: VirtualKey, changed_at: float) -> dict[str, Any]:
        return {"kind": "key", "id": key.token, "doc": key_doc(key).decode(), "revoked": False, "updated_at": 1.0,
                "changed_at": changed_at}

    async def changes(self, request: web.Request) -> web.Response:
        self.asked.append(dict(request.query))
        if request.query.get("after") == "page-2":
            return web.json_response({"records": [self.record(self.small, 0.0)], "more": False, "cursor": "end"})
        if request.query.get("after") == "end":
            return web.json_response({"records": [], "more": False, "cursor": "end"})
        bad = {"kind": "team", "id": "x", "doc": "{}", "revoked": True, "updated_at": 1.0, "changed_at": 0.0}
        return web.json_response({"records": [bad, self.record(self.big, 0.0)], "more": True, "cursor": "page-2"})

    async def spent(self, request: web.Request) -> web.Response:
        return web.json_response({"now": time.time(), "spend": [["key_token", "ef" * 32, 0, 0, 1.0]]})


async def test_a_record_the_puller_refuses_is_skipped_and_counted_and_the_rest_still_arrives(
        sim: SimServer, tmp_path: Path, started: list[RunningGateway]) -> None:
    assert len(key_doc(PagingPeer().big)) > 400_000
    fake = PagingPeer()
    runner = web.AppRunner(fake.app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        gw = await start_gateway(config(sim, tmp_path, "a", [f"http://127.0.0.1:{port}"]))
        started.append(gw)
        await pulls(gw, 2)
        store = gw.state.governance.store
        assert await store.get_key(fake.big.token) is not None and await store.get_key(fake.small.token) is not None
        assert events(gw, "peer_unavailable") == []
        refused = events(gw, "peer_records_refused")
        assert refused and refused[0]["count"] == 1 and "revoked" in refused[0]["first"]
        metrics = generate_latest(gw.state.metrics.registry).decode()
        assert f'llmp_gateway_peer_records_refused_total{{peer="127.0.0.1:{port}"}} 1.0' in metrics
        # Each later round starts from the last cursor, reaching back (the peer applies its overlap).
        assert {"after": "end", "back": "1", "limit": "1000"} in fake.asked
        # Totals are kept only for keys, teams and users this region knows: a peer cannot fill its memory.
        assert peers_of(gw).peers[0].totals == {}
    finally:
        await runner.cleanup()


async def test_every_replica_of_a_region_serves_a_key_made_elsewhere_after_its_next_pull(
        sim: SimServer, tmp_path: Path, started: list[RunningGateway]) -> None:
    """Two replicas of region a share its store: whichever merges a peer's key first, the other finds nothing newer
    to merge, and still serves the key after its pull (not a key-cache refresh interval later)."""
    b_port = free_port()
    replicas = []
    for n in range(2):
        doc = config(sim, tmp_path, "a", [f"http://127.0.0.1:{b_port}"])
        doc["ledger"]["spool_dir"] = str(tmp_path / f"a-{n}" / "spool")
        doc["keys"] = {"refresh_seconds": 300}
        replicas.append(await start_gateway(doc))
    started.extend(replicas)
    b = await start_gateway(config(sim, tmp_path, "b", [replicas[0].url]), b_port)
    started.append(b)
    _, made = await admin(b, "POST", "/key/generate", {})
    await wait_for_pulls(*(peers_of(r) for r in replicas), count=2)
    assert [await answers(r, made["key"]) for r in replicas] == [200, 200]


def test_a_spend_answer_is_read_up_to_a_small_cap_and_only_for_scopes_known_here() -> None:
    known = {("key_token", "ab" * 32)}
    rows = [["key_token", "ab" * 32, 0, 0, 1.5], ["team_id", "elsewhere", 0, 0, 9.0]]
    body = orjson.dumps({"now": 1.0, "spend": rows})
    assert parse_spend(body, lambda column, ident: (column, ident) in known) == {("key_token", "ab" * 32, 0, 0.0): 1.5}
    with pytest.raises(PeerAnswerError, match=f"answer over {MAX_SPEND_BYTES} bytes"):
        parse_spend(b" " * (MAX_SPEND_BYTES + 1), lambda column, ident: True)
    assert MAX_SPEND_BYTES <= 8 * 2**20, "a hostile peer's answer is not held whole in memory at 32 MiB"


def test_a_round_reaches_back_by_the_store_timeout_and_a_margin(sim: SimServer, tmp_path: Path) -> None:
    doc = config(sim, tmp_path, "a", ["https://gateway.eu-west-1.example.com"])
    doc["ledger"]["store_timeout"] = 3
    peers = build_app(parse_native(doc))[STATE].governance.peers
    assert peers.overlap == 3 + OVERLAP_MARGIN
