"""The spend ledger loses nothing and doubles nothing when the gateway is killed under load.

"Accepted" means: the client received the whole response with status 200 (a JSON body,
or a stream through `data: [DONE]` and the end of the chunked body). Every accepted
request must be in the ledger exactly once after a restart; requests cut off by the kill
may or may not be there (their tokens may have been spent), but never twice.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from tests.gateway.conftest import KEY, MODEL, deployment, gateway_config
from tests.gateway.servers import ROOT, GatewayProcess, PostgresServer, free_port, wait_port

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "spend some tokens"}], "max_tokens": 8}


def ledger_config(sim: Any, tmp_path: Path, store: str) -> dict[str, Any]:
    config = gateway_config([deployment("sim-a", sim.base_url)])
    config["models"][0].update(input_cost_per_token=0.001, output_cost_per_token=0.002)
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": store, "flush_interval": 0.2}
    return config


class Load:
    """Concurrent clients, each request with its own x-request-id; records which ones were accepted."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.sent: list[str] = []
        self.accepted: list[str] = []
        self._n = 0

    async def worker(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._n += 1
            rid = f"{self.prefix}-{self._n}"
            stream = self._n % 3 == 0
            self.sent.append(rid)
            try:
                async with http.post(self.url + "/v1/chat/completions", json={**BODY, "stream": stream},
                                     headers={"Authorization": f"Bearer {KEY}", "x-request-id": rid}) as resp:
                    data = await resp.read()
                    if resp.status == 200 and (not stream or data.endswith(b"data: [DONE]\n\n")):
                        self.accepted.append(rid)
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.01)  # the gateway is gone: this request was not accepted

    async def run_then(self, action: Any, seconds: float, workers: int = 12) -> None:
        stop = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            tasks = [asyncio.create_task(self.worker(http, stop)) for _ in range(workers)]
            await asyncio.sleep(seconds)
            await asyncio.to_thread(action)  # kill while requests are in flight
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 20)


async def kill_rounds(gw: GatewayProcess, signals: list[int]) -> Load:
    load = Load(gw.url, "r")
    try:
        for i, sig in enumerate(signals):
            await asyncio.to_thread(gw.start)
            load.prefix = f"round{i}"
            await load.run_then(lambda sig=sig: gw.kill(sig), 0.8)
        await asyncio.to_thread(gw.start)  # replays the spool before it listens
        await asyncio.sleep(0.5)
    finally:
        gw.kill(signal.SIGTERM)  # a clean stop flushes the rest (and no process outlives a failed test)
    return load


def check(load: Load, rows: list[str]) -> None:
    counts = Counter(rows)
    doubled = [rid for rid, n in counts.items() if n > 1]
    missing = [rid for rid in load.accepted if rid not in counts]
    assert len(load.accepted) > 100, "the load must be real"
    assert not doubled, f"{len(doubled)} records in the ledger twice, e.g. {doubled[:3]}"
    assert not missing, f"{len(missing)} accepted requests missing from the ledger, e.g. {missing[:3]}"
    assert set(counts) <= set(load.sent)


async def test_sigkill_under_load_loses_no_accepted_request_sqlite(sim, tmp_path) -> None:
    store = tmp_path / "ledger.db"
    gw = GatewayProcess(ledger_config(sim, tmp_path, f"sqlite:///{store}"), tmp_path)
    load = await kill_rounds(gw, [signal.SIGKILL, signal.SIGKILL, signal.SIGKILL, signal.SIGTERM])
    with sqlite3.connect(store) as db:
        rows = [r[0] for r in db.execute("SELECT request_id FROM llmp_spend")]
        cost = db.execute("SELECT MIN(cost) FROM llmp_spend WHERE status = 200").fetchone()[0]
    check(load, rows)
    assert cost > 0
    assert not list((tmp_path / "spool").glob("*.spool")), "every segment was flushed and deleted"


async def test_sigkill_under_load_loses_no_accepted_request_postgres(sim, tmp_path,
                                                                     postgres_server: PostgresServer) -> None:
    gw = GatewayProcess(ledger_config(sim, tmp_path, postgres_server.url), tmp_path)
    load = await kill_rounds(gw, [signal.SIGKILL, signal.SIGKILL])
    conn = await asyncpg.connect(postgres_server.url, timeout=10)
    try:
        rows = [r[0] for r in await conn.fetch("SELECT request_id FROM llmp_spend")]
    finally:
        await conn.close()
    check(load, rows)


class Forwarder:
    """The store's address while it is down (nothing listens) and once it is back (forwarded to PostgreSQL)."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.server: asyncio.Server | None = None

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def test_records_wait_in_the_spool_while_the_store_is_down(sim, tmp_path,
                                                                  postgres_server: PostgresServer) -> None:
    store = Forwarder(postgres_server.port)  # nothing listens yet: the store is "down"
    config = ledger_config(sim, tmp_path, f"postgresql://postgres@127.0.0.1:{store.port}/postgres")
    config["ledger"]["store_timeout"] = 1
    gw = GatewayProcess(config, tmp_path)
    load = Load(gw.url, "down")
    try:
        await asyncio.to_thread(gw.start)
        await load.run_then(lambda: gw.kill(signal.SIGKILL), 0.5, workers=4)
    finally:
        gw.kill()
    assert "ledger_store_unavailable" in gw.log()
    assert list((tmp_path / "spool").glob("*.spool")), "records wait in the spool"
    await store.up()  # the store is back, at the same address
    gw2 = GatewayProcess(config, tmp_path, "gw2")
    try:
        await asyncio.to_thread(gw2.start)
    finally:
        gw2.kill(signal.SIGTERM)
        await store.down()
    conn = await asyncpg.connect(postgres_server.url, timeout=10)
    try:
        rows = [r[0] for r in await conn.fetch("SELECT request_id FROM llmp_spend WHERE request_id LIKE 'down-%'")]
    finally:
        await conn.close()
    assert load.accepted and sorted(rows) == sorted(set(rows)) and set(load.accepted) <= set(rows)


class GatewayIn(GatewayProcess):
    """A gateway process started in a working directory of the test's choosing (relative paths resolve there)."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str, cwd: Path) -> None:
        super().__init__(config, workdir, name, env={"PYTHONPATH": str(ROOT)})
        self.cwd = cwd

    def start(self, timeout: float = 20) -> GatewayProcess:
        self.runs += 1
        with open(self.workdir / f"{self.name}.{self.runs}.log", "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(self.config_path), "--host", "127.0.0.1",
                 "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env)
        wait_port(self.port, timeout, self.proc)
        return self


def calls(gw: GatewayProcess, prefix: str, n: int) -> list[str]:
    import urllib.request

    sent = []
    for i in range(n):
        rid = f"{prefix}-{i}"
        req = urllib.request.Request(gw.url + "/v1/chat/completions", data=orjson.dumps(BODY), method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "x-request-id": rid,
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        sent.append(rid)
    return sent


@pytest.mark.parametrize("spool_dir", [None, "shared-spool"], ids=["default", "one-dir-for-both"])
async def test_gateways_of_two_databases_in_one_directory_never_replay_each_others_records(
        sim, tmp_path, spool_dir: str | None) -> None:
    cwd = tmp_path / "work"
    (cwd / "llmp-spool").mkdir(parents=True)
    # A segment from before spools were per database: nobody knows whose it is, so nobody replays it.
    legacy = {"id": "legacy-1", "ts": 1.0, "day": "1970-01-01", "request_id": "legacy-req", "key_token": "master"}
    (cwd / "llmp-spool" / "spend-1-2-3.spool").write_bytes(orjson.dumps(legacy) + b"\n")
    gateways = {}
    for name in ("a", "b"):
        config = ledger_config(sim, tmp_path, f"sqlite:///{tmp_path / name}.db")
        config["ledger"] = {"store": f"sqlite:///{tmp_path / name}.db", "flush_interval": 60}  # rows stay spooled
        if spool_dir is not None:
            config["ledger"]["spool_dir"] = spool_dir
        gateways[name] = GatewayIn(config, tmp_path, name, cwd)
    try:
        for gw in gateways.values():
            await asyncio.to_thread(gw.start)
        sent = {name: await asyncio.to_thread(calls, gw, name, 5) for name, gw in gateways.items()}
        gateways["a"].kill(signal.SIGKILL)  # its records are in its spool only
        gateways["b"].kill(signal.SIGKILL)
        await asyncio.to_thread(gateways["b"].start)  # b starts first, finding a's segments in the directory
        await asyncio.to_thread(gateways["a"].start)
    finally:
        for gw in gateways.values():
            gw.kill(signal.SIGTERM)
    for name in ("a", "b"):
        with sqlite3.connect(tmp_path / f"{name}.db") as db:
            rows = sorted(r[0] for r in db.execute("SELECT request_id FROM llmp_spend"))
        assert rows == sorted(sent[name]), f"database {name} holds exactly its own gateway's records"
        assert ("spool_legacy_segments" in gateways[name].log()) == (spool_dir is None)
