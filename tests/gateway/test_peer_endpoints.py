"""The endpoints peers pull from answer the stack's peer key only, and never hand out a key; the `peers` section
is checked with clear errors; a peer that is down or answers garbage is reported once and changes nothing else."""

from __future__ import annotations

import asyncio
import io
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from gateway.config.errors import ConfigError
from gateway.config.native import parse_native
from gateway.http.app import build_app
from gateway.http.state import STATE
from gateway.sim import SimServer
from tests.gateway.conftest import KEY, MODEL, RunningGateway, closed_port_url, deployment, gateway_config
from tests.gateway.servers import PostgresServer, free_port
from tests.gateway.test_keys_admin import admin

PEER_KEY = "peer-key-for-tests-0123456789abcdef0123456789"
INTERVAL = 0.1


def config(sim: SimServer, tmp_path: Path, name: str, peer_urls: list[str], **peers: Any) -> dict[str, Any]:
    doc = gateway_config([deployment("sim-a", sim.base_url)], region=name)
    doc["models"][0].update(input_cost_per_token=0.001, output_cost_per_token=0.002)
    doc["ledger"] = {"spool_dir": str(tmp_path / name / "spool"), "store": f"sqlite:///{tmp_path / name / 'l.db'}",
                     "flush_interval": 0.05}
    doc["peers"] = {"urls": peer_urls, "key": PEER_KEY, "interval": INTERVAL, "timeout": 1, **peers}
    return doc


async def start(doc: dict[str, Any], port: int = 0) -> RunningGateway:
    log = io.BytesIO()
    app = build_app(parse_native(doc), log_out=log)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return RunningGateway(runner, app, log)


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
    gw = await start(config(sim, tmp_path, "a", [closed_port_url().removesuffix("/v1")]))
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
    assert status == 200 and orjson.loads(body) == {"records": [], "more": False}


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
        if self.garbage:  # a record whose key is not a hash: refused as a whole answer
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
        b = await start(config(sim, tmp_path, "b", [f"http://127.0.0.1:{a_port}"]), b_port)
        started.append(b)
        a = await start(config(sim, tmp_path, "a", [f"http://127.0.0.1:{b_port}", f"http://127.0.0.1:{fake_port}",
                                                    down]), a_port)
        started.append(a)
        peers = a.state.governance.peers
        _, made = await admin(b, "POST", "/key/generate", {"max_budget": 1.0})
        target = peers.pulls + 4
        while peers.pulls < target:
            await time_passes()
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
        target = peers.pulls + 3
        while peers.pulls < target:
            await time_passes()
        assert [e["peer"] for e in events(a, "peer_recovered")] == [f"127.0.0.1:{fake_port}"]
        fake.garbage = True
        target = peers.pulls + 3
        while peers.pulls < target:
            await time_passes()
        assert peers.peer_spend("key_token", made["token_id"], 0, 0.0) == 0.75
        assert [e["peer"] for e in events(a, "peer_unavailable")].count(f"127.0.0.1:{fake_port}") == 2
    finally:
        await runner.cleanup()


async def time_passes() -> None:
    await asyncio.sleep(0.02)


async def test_a_revocation_made_elsewhere_is_refused_here_while_the_local_store_is_down(
        sim: SimServer, tmp_path: Path, started: list[RunningGateway]) -> None:
    pg = PostgresServer()
    try:
        a_port, b_port = free_port(), free_port()
        b = await start(config(sim, tmp_path, "b", [f"http://127.0.0.1:{a_port}"]), b_port)
        started.append(b)
        doc = config(sim, tmp_path, "a", [f"http://127.0.0.1:{b_port}"])
        doc["ledger"].update(store=pg.url, store_timeout=1)
        doc["keys"] = {"refresh_seconds": 0.2}
        a = await start(doc, a_port)
        started.append(a)
        _, first = await admin(b, "POST", "/key/generate", {})
        await pulls(a, 3)
        assert await answers(a, first["key"]) == 200
        subprocess.run([*pg._prefix, pg._pg_ctl, "-D", pg._data, "-m", "immediate", "-w", "-t", "30", "stop"],
                       check=True, capture_output=True, timeout=60)
        _, second = await admin(b, "POST", "/key/generate", {})
        assert (await admin(b, "POST", "/key/delete", {"keys": [first["key"]]}))[0] == 200
        await pulls(a, 3)
        assert await answers(a, first["key"]) == 401, "revoked in region b, refused here from memory"
        assert await answers(a, second["key"]) == 200, "made in region b, served here from memory"
        assert len(events(a, "peer_records_held_in_memory")) == 1
        assert events(a, "peer_unavailable") == [], "the peer is fine: the local store is what is down"
    finally:
        pg.stop()


async def pulls(gw: RunningGateway, count: int) -> None:
    peers = gw.state.governance.peers
    target = peers.pulls + count
    deadline = time.monotonic() + 30
    while peers.pulls < target:
        assert time.monotonic() < deadline, "peers stopped pulling"
        await time_passes()


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
