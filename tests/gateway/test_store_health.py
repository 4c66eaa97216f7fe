"""/health/ready reports whether the replica reaches its stores (real Redis, SQLite and PostgreSQL DSNs), without
ever becoming unready for it, and without naming where the stores are (the path is unauthenticated)."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.governance import store_health
from tests.gateway.conftest import closed_port_url, deployment, gateway_config
from tests.gateway.servers import RedisServer


def governed(sim: Any, tmp_path: Path, store: str, redis: str | None) -> dict[str, Any]:
    config = gateway_config([deployment("sim-a", sim.base_url)])
    config["ledger"] = {"store": store, "spool_dir": str(tmp_path / "spool")}
    if redis is not None:
        config["redis"] = {"url": redis}
    return config


async def ready(gw: Any) -> tuple[int, dict[str, Any], str]:
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/health/ready") as resp:
        text = await resp.text()
        return resp.status, await resp.json(), text


async def test_both_stores_reachable_are_reported_connected(sim: Any, tmp_path: Path, gateway_factory: Any,
                                                            redis_server: RedisServer) -> None:
    gw = await gateway_factory(governed(sim, tmp_path, f"sqlite:///{tmp_path / 'l.db'}", redis_server.url))
    status, body, _ = await ready(gw)
    assert status == 200 and body["ready"] is True
    assert body["stores"] == {"redis": {"status": "connected"}, "ledger": {"status": "connected"}}


async def test_a_redis_outage_is_reported_without_its_address_and_the_replica_stays_ready(
        sim: Any, tmp_path: Path, gateway_factory: Any, redis_server: RedisServer) -> None:
    gw = await gateway_factory(governed(sim, tmp_path, f"sqlite:///{tmp_path / 'l.db'}", redis_server.url))
    assert (await ready(gw))[1]["stores"]["redis"] == {"status": "connected"}
    health = store_health.StoreHealth(gw.state)  # the app's own, driven by hand: no timing in this test
    await health.refresh()
    redis_server.stop()
    # Until the next background probe, the last one answers: a flood of calls to this open path costs nothing.
    assert health.report() == {"redis": {"status": "connected"}, "ledger": {"status": "connected"}}
    await health.refresh()
    report = health.report()
    assert report is not None and report["redis"]["status"] == "unreachable"
    assert report["ledger"] == {"status": "connected"}
    assert str(redis_server.port) not in json.dumps(report) and "127.0.0.1" not in json.dumps(report)
    status, body, _ = await ready(gw)
    assert status == 200 and body["ready"] is True


async def test_the_ledger_is_judged_by_the_key_caches_own_reads_and_never_queried_for_readiness(
        sim: Any, tmp_path: Path, gateway_factory: Any) -> None:
    gw = await gateway_factory(governed(sim, tmp_path, f"sqlite:///{tmp_path / 'l.db'}", None))
    cache = gw.state.governance.cache
    reads = 0
    fingerprint = cache.source.key_fingerprint

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await fingerprint()

    cache.source.key_fingerprint = counted
    for _ in range(20):
        assert (await ready(gw))[1]["stores"]["ledger"] == {"status": "connected"}
    assert reads == 0, "an unauthenticated path must not query the key table"
    now = cache.loaded_at
    health = store_health.StoreHealth(gw.state, clock=lambda: now)
    assert health.report()["ledger"] == {"status": "connected"}  # type: ignore[index]
    now += cache.refresh_seconds + max(cache.refresh_seconds * 5, 5) + store_health.PROBE_TIMEOUT + 1
    assert health.report()["ledger"]["status"] == "unreachable"  # type: ignore[index]


async def test_readiness_never_waits_on_a_redis_that_does_not_answer(
        sim: Any, tmp_path: Path, gateway_factory: Any) -> None:
    """Route 53 counts an answer slower than 2 s as a failure: a hung Redis must not make /health/ready slow."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, reads, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await gateway_factory(governed(sim, tmp_path, f"sqlite:///{tmp_path / 'l.db'}",
                                            f"redis://127.0.0.1:{port}"))
        started = time.monotonic()
        status, body, _ = await ready(gw)
        assert time.monotonic() - started < store_health.PROBE_TIMEOUT / 2
        assert status == 200 and body["stores"]["redis"] == {
            "status": "unreachable", "error": f"no answer within {store_health.PROBE_TIMEOUT:g} s"}
    finally:
        server.close()


async def test_an_unreachable_postgresql_ledger_is_reported(sim: Any, tmp_path: Path, gateway_factory: Any) -> None:
    port = closed_port_url().split(":")[2].split("/")[0]
    dsn = f"postgresql://llmp:secret-password@127.0.0.1:{port}/llmp"
    gw = await gateway_factory(governed(sim, tmp_path, dsn, None))
    status, body, text = await ready(gw)
    assert status == 200
    assert body["stores"]["ledger"]["status"] == "unreachable"
    assert body["stores"]["redis"]["status"] == "not configured"
    assert port not in text and "secret-password" not in text and "llmp@" not in text


async def test_a_gateway_without_governance_reports_no_stores(gateway: Any) -> None:
    status, body, _ = await ready(gateway)
    assert status == 200 and "stores" not in body
