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
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.gateway.conftest import KEY, MODEL, deployment, gateway_config
from tests.gateway.servers import GatewayProcess, PostgresServer

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


async def test_records_wait_in_the_spool_while_the_store_is_down(sim, tmp_path,
                                                                  postgres_server: PostgresServer) -> None:
    from tests.gateway.servers import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens: the store is "down"
    config = ledger_config(sim, tmp_path, dead)
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
    config["ledger"]["store"] = postgres_server.url  # the store is back
    gw2 = GatewayProcess(config, tmp_path, "gw2")
    try:
        await asyncio.to_thread(gw2.start)
    finally:
        gw2.kill(signal.SIGTERM)
    conn = await asyncpg.connect(postgres_server.url, timeout=10)
    try:
        rows = [r[0] for r in await conn.fetch("SELECT request_id FROM llmp_spend WHERE request_id LIKE 'down-%'")]
    finally:
        await conn.close()
    assert load.accepted and sorted(rows) == sorted(set(rows)) and set(load.accepted) <= set(rows)
