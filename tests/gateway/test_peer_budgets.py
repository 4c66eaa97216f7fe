"""Two regions of one stack, each with its own Redis and its own PostgreSQL ledger, peers of each other: a key made
in one works in the other, a key revoked in one is refused in the other, and a budget holds across both within the
bound gateway/README.md states ("Several regions: keys and budgets across the stack")."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import openai
import pytest
from aiohttp import web

from gateway.config.native import parse_native
from gateway.governance.peers import PeerSync
from gateway.http.app import build_app
from gateway.sim import SimServer
from tests.gateway.conftest import MODEL, RunningGateway, deployment, gateway_config
from tests.gateway.servers import PostgresServer, RedisServer, free_port
from tests.gateway.test_keys_admin import admin

PEER_KEY = "peer-key-for-tests-0123456789abcdef0123456789"
INTERVAL = 0.2  # peers.interval
FLUSH = 0.1  # ledger.flush_interval
BUDGET = 2.0  # USD; a call here costs about 0.03 (sim usage at 0.001 / 0.002 per token)
MESSAGES = [{"role": "user", "content": "Spend a little of the shared budget, please."}]


@dataclass
class Region:
    name: str
    port: int
    redis: RedisServer
    dsn: str
    gateway: RunningGateway | None = None
    refused_at: float | None = None  # first budget refusal, monotonic
    answered: int = 0
    started_at: float = 0.0
    latencies: list[float] = field(default_factory=list)
    longest_flush: float = 0.0  # the ledger's flushes, timed: a row waits up to the interval plus one flush

    def time_flushes(self) -> None:
        ledger = self.gw.state.governance.ledger
        flush = ledger.flush

        async def timed() -> int:
            began = time.monotonic()
            try:
                return await flush()
            finally:
                self.longest_flush = max(self.longest_flush, time.monotonic() - began)

        ledger.flush = timed

    @property
    def gw(self) -> RunningGateway:
        assert self.gateway is not None
        return self.gateway

    @property
    def peers(self) -> PeerSync:
        peers = self.gw.state.governance.peers
        assert peers is not None
        return peers  # type: ignore[no-any-return]


def region_config(region: Region, other: Region, sim: SimServer, tmp_path: Any) -> dict[str, Any]:
    config = gateway_config([deployment(f"sim-{region.name}", sim.base_url)], region=region.name)
    config["models"][0].update(input_cost_per_token=0.001, output_cost_per_token=0.002)
    config["ledger"] = {"spool_dir": str(tmp_path / region.name / "spool"), "store": region.dsn,
                        "flush_interval": FLUSH, "budget_sync_seconds": 0}
    # No leases: each call is checked against the shared counter (README: a lease adds its calls to the bound).
    config["redis"] = {"url": region.redis.url, "on_unavailable": "fail-closed", "timeout_ms": 2000,
                       "lease_requests": 0}
    config["peers"] = {"urls": [f"http://127.0.0.1:{other.port}"], "key": PEER_KEY, "interval": INTERVAL,
                       "timeout": 2}
    return config


async def start_gateway(config: dict[str, Any], port: int) -> RunningGateway:
    log = io.BytesIO()
    app = build_app(parse_native(config), log_out=log)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return RunningGateway(runner, app, log)


async def new_database(server: PostgresServer, name: str) -> str:
    db = f"{name}_{time.monotonic_ns()}"
    conn = await asyncpg.connect(server.url, timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {db}")
    finally:
        await conn.close()
    return server.url.rsplit("/", 1)[0] + "/" + db


@pytest.fixture
async def regions(postgres_server: PostgresServer, redis_server: RedisServer, sim_factory: Any,
                  tmp_path: Any) -> AsyncIterator[tuple[Region, Region]]:
    second_redis = RedisServer()
    a = Region("region-a", free_port(), redis_server, await new_database(postgres_server, "peer_a"))
    b = Region("region-b", free_port(), second_redis, await new_database(postgres_server, "peer_b"))
    try:
        for region, other in ((a, b), (b, a)):
            sim = await sim_factory(name=f"sim-{region.name}", ttft=0.01)
            region.gateway = await start_gateway(region_config(region, other, sim, tmp_path), region.port)
        await rounds(a, b)  # each has pulled from the other once since both listen
        yield a, b
    finally:
        for region in (a, b):
            if region.gateway is not None:
                await region.gateway.runner.cleanup()
        second_redis.stop()


async def rounds(*regions: Region, count: int = 2) -> None:
    """Until each region has completed `count` more pulls: a change made before this call has then been pulled
    by a round that started after it (the first may have been under way already)."""
    targets = [(r, r.peers.pulls + count) for r in regions]
    deadline = time.monotonic() + 30
    while any(r.peers.pulls < target for r, target in targets):
        assert time.monotonic() < deadline, "peers stopped pulling"
        await asyncio.sleep(0.01)


async def works(region: Region, key: str) -> bool:
    try:
        await region.gw.client(api_key=key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    except openai.AuthenticationError:
        return False
    return True


async def test_a_key_made_in_one_region_works_in_the_other_and_a_revocation_there_reaches_back(
        regions: tuple[Region, Region]) -> None:
    a, b = regions
    status, made = await admin(a.gw, "POST", "/key/generate", {"key_alias": "made-in-a"})
    assert status == 200
    assert not await works(b, made["key"]), "known in region-b before any pull"
    made_at = time.monotonic()
    await rounds(b)
    assert await works(b, made["key"])
    assert time.monotonic() - made_at < 2 * INTERVAL + 2 * b.peers.round_seconds + 1.0

    status, deleted = await admin(b.gw, "POST", "/key/delete", {"keys": [made["key"]]})
    assert status == 200 and deleted["deleted_keys"] == [made["token_id"]]
    assert await works(a, made["key"]), "refused in region-a before any pull"
    await rounds(a)
    assert not await works(a, made["key"])
    # Each region holds the record: its hash, never the key.
    for region in (a, b):
        status, info = await admin(region.gw, "GET", f"/key/info?key={made['token_id']}")
        assert status == 200 and made["key"] not in str(info)
    assert all(peer.up for r in (a, b) for peer in r.peers.peers)


async def hammer(region: Region, key: str) -> None:
    client = region.gw.client(api_key=key)
    region.started_at = time.monotonic()
    for _ in range(2000):
        began = time.monotonic()
        try:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        except openai.UnprocessableEntityError as exc:  # budget_exceeded, LiteLLM's 422
            assert "max_budget" in str(exc)
            region.refused_at = time.monotonic()
            return
        region.answered += 1
        region.latencies.append(time.monotonic() - began)
    pytest.fail(f"{region.name} never refused the key")


async def ledger(dsn: str, token: str) -> tuple[float, float, int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow("SELECT COALESCE(SUM(cost), 0), COALESCE(MAX(cost), 0), COUNT(*) FROM llmp_spend "
                                  "WHERE key_token = $1", token)
        return float(row[0]), float(row[1]), int(row[2])
    finally:
        await conn.close()


async def test_a_budget_holds_across_regions_within_the_stated_bound(regions: tuple[Region, Region]) -> None:
    a, b = regions
    status, made = await admin(a.gw, "POST", "/key/generate", {"max_budget": BUDGET})
    assert status == 200
    await rounds(a, b)
    a.time_flushes()
    b.time_flushes()
    await asyncio.gather(hammer(a, made["key"]), hammer(b, made["key"]))
    for region in (a, b):
        await region.gw.state.governance.ledger.flush()
    spent = {r.name: await ledger(r.dsn, made["token_id"]) for r in (a, b)}
    assert all(count == r.answered for r, (_, _, count) in zip((a, b), spent.values())), spent
    total = sum(s for s, _, _ in spent.values())
    one_call = max(m for _, m, _ in spent.values())
    assert a.answered >= 3 and b.answered >= 3, "both regions spent: the budget was shared, not one region's"

    # The README's bound, from what was measured here: each region's spend rate over its run; the peer period (the
    # interval and two pulls: totals fetched at the start of one round count until the end of the next); the flush
    # interval and the longest flush; one call per region in flight. The region that refuses last sees the others'
    # spend late by a period and a flush, and its own ledger late by a flush.
    period = INTERVAL + 2 * max(a.peers.longest_round, b.peers.longest_round)
    flush = FLUSH + max(a.longest_flush, b.longest_flush)
    assert a.refused_at is not None and b.refused_at is not None
    rates = {r.name: spent[r.name][0] / (r.refused_at - r.started_at) for r in (a, b)}
    bound = max(sum(rate * (period + flush) for name, rate in rates.items() if name != last) + rates[last] * flush
                for last in rates) + 2 * one_call
    assert BUDGET <= total <= BUDGET + bound, f"spent {total:.3f} of {BUDGET}, bound {bound:.3f}, rates {rates}"

    # Once one region refused, the other refused within one peer period and a flush (plus the call under way).
    slowest_call = max(a.latencies + b.latencies)
    assert abs(a.refused_at - b.refused_at) <= period + flush + slowest_call, \
        f"refused {abs(a.refused_at - b.refused_at):.3f}s apart"
