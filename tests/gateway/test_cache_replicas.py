"""Two gateway processes of a region share one Redis: an answer one replica stored is a hit on the other, and a
Redis that goes away makes both answer from the model (a bypass, never a failed call)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai

from tests.gateway.conftest import KEY, MODEL
from tests.gateway.servers import GatewayProcess, RedisServer
from tests.gateway.test_cache import ASK, cached_config
from tests.gateway.test_limits_replicas import new_key


def client(gw: GatewayProcess, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=15)


async def ask(gw: GatewayProcess, key: str) -> tuple[str | None, Any]:
    raw = await client(gw, key).chat.completions.with_raw_response.create(model=MODEL, messages=ASK, temperature=0)
    return raw.headers.get("x-llmp-cache"), raw.parse()


async def test_two_gateway_processes_share_hits_through_one_redis(sim, tmp_path, redis_server: RedisServer) -> None:
    configs = []
    for name in ("a", "b"):
        config = cached_config(sim, tmp_path, redis_server.url)
        config["ledger"]["spool_dir"] = str(tmp_path / f"spool-{name}")
        config["keys"] = {"refresh_seconds": 0.5}
        configs.append(config)
    a, b = GatewayProcess(configs[0], tmp_path, "a"), GatewayProcess(configs[1], tmp_path, "b")
    try:
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        status, _ = await asyncio.to_thread(a.admin, "POST", "/team/new", {"team_id": "search"}, KEY)
        assert status == 200
        key = await new_key(a, b, team_id="search")
        header_a, first = await ask(a, key)
        header_b, second = await ask(b, key)
        assert (header_a, header_b) == ("miss", "hit")
        assert second.id == first.id and sim.stats.requests == 1
        redis_server.stop()
        for gw in (a, b):
            header, answer = await ask(gw, key)
            assert header == "bypass" and answer.choices[0].message.content
        assert sim.stats.requests == 3
    finally:
        for gw in (a, b):
            gw.kill()
    assert '"cache_store_unavailable"' in a.log() and '"cache_store_unavailable"' in b.log()
