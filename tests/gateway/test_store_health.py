"""/health/ready reports whether the replica reaches its stores (real Redis, SQLite and PostgreSQL DSNs), without
ever becoming unready for it, and without naming where the stores are (the path is unauthenticated)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

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
        sim: Any, tmp_path: Path, gateway_factory: Any, redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_health, "MIN_INTERVAL", 0.3)
    gw = await gateway_factory(governed(sim, tmp_path, f"sqlite:///{tmp_path / 'l.db'}", redis_server.url))
    assert (await ready(gw))[1]["stores"]["redis"] == {"status": "connected"}
    redis_server.stop()
    # Within MIN_INTERVAL the last probe answers: a flood of calls to this open path costs the stores nothing.
    assert (await ready(gw))[1]["stores"]["redis"] == {"status": "connected"}
    await asyncio.sleep(0.35)
    status, body, text = await ready(gw)
    assert status == 200 and body["ready"] is True
    assert body["stores"]["redis"]["status"] == "unreachable" and body["stores"]["ledger"] == {"status": "connected"}
    assert str(redis_server.port) not in text and "127.0.0.1" not in text


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
