"""A ladder whose rungs are cached in the region's Redis: each rung's answers are its own, a repeated call is a hit on
the rung that answered (x-llmp-route and x-llmp-cache both say so), a cached answer that fails a check escalates like
any other, a JSON stream held to be checked is kept too, and every rung's spend row says what it cost and saved."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.gateway.conftest import MODEL
from tests.gateway.servers import RedisServer
from tests.gateway.test_ladder import AS_SCHEMA, BIG, BIG_PRICE, CHEAP, CHEAP_PRICE, chat, ladder_config, price
from tests.gateway.test_ladder_streams import stream


def cached_ladder(cheap: Any, big: Any, tmp_path: Path, redis: RedisServer) -> dict[str, Any]:
    config = ladder_config(cheap.base_url, big.base_url, tmp_path)
    config["redis"] = {"url": redis.url, "timeout_ms": 300, "retry_after_ms": 500}
    config["cache"] = {"models": [CHEAP, BIG]}
    return config


async def rows(gw: Any, tmp_path: Path) -> dict[str, dict[str, Any]]:
    await gw.state.governance.ledger.flush()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.row_factory = sqlite3.Row
        return {r["request_id"]: dict(r) for r in db.execute(
            "SELECT request_id, model, deployment, cost, cache_hit, saved FROM llmp_spend")}


async def test_a_repeated_ladder_call_is_a_hit_on_the_rung_that_answered(gateway_factory, sim_factory, tmp_path,
                                                                         redis_server) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(cached_ladder(cheap, big, tmp_path, redis_server))
    first_headers, first = await chat(gw, temperature=0, extra_headers={"x-request-id": "c-1"})
    headers, again = await chat(gw, temperature=0, extra_headers={"x-request-id": "c-2"})
    assert (first_headers["x-llmp-route"], first_headers["x-llmp-cache"]) == (f"{CHEAP}=answered", "miss")
    assert (headers["x-llmp-route"], headers["x-llmp-cache"]) == (f"{CHEAP}=answered", "hit")
    assert again.model == CHEAP and again.choices[0].message.content == first.choices[0].message.content
    assert (cheap.stats.requests, big.stats.requests) == (1, 0)
    spent = await rows(gw, tmp_path)
    full = price(first.usage, CHEAP_PRICE)
    assert (spent["c-1"]["model"], spent["c-1"]["cache_hit"], spent["c-1"]["cost"]) == (CHEAP, 0, pytest.approx(full))
    hit = spent["c-2"]
    assert (hit["model"], hit["deployment"], hit["cache_hit"], hit["cost"]) == (CHEAP, "cache", 1, 0)
    assert hit["saved"] == pytest.approx(full)
    [_, logged] = await gw.logged_calls(2)
    assert (logged["route"], logged["cache"]) == (f"{CHEAP}=answered", "hit")


async def test_a_cached_rung_answer_that_fails_its_check_escalates_to_the_cached_rung_above(
        gateway_factory, sim_factory, tmp_path, redis_server) -> None:
    cheap = await sim_factory(name="cheap", misbehave={MODEL: "bad-schema"})
    big = await sim_factory(name="big")
    gw = await gateway_factory(cached_ladder(cheap, big, tmp_path, redis_server))
    route = f"{CHEAP}=invalid_json,{BIG}=answered"
    first_headers, first = await chat(gw, temperature=0, response_format=AS_SCHEMA,
                                      extra_headers={"x-request-id": "j-1"})
    headers, again = await chat(gw, temperature=0, response_format=AS_SCHEMA, extra_headers={"x-request-id": "j-2"})
    assert (first_headers["x-llmp-route"], first_headers["x-llmp-cache"]) == (route, "miss")
    assert (headers["x-llmp-route"], headers["x-llmp-cache"]) == (route, "hit")
    assert again.model == BIG and again.choices[0].message.content == first.choices[0].message.content
    assert (cheap.stats.requests, big.stats.requests) == (1, 1), "both rungs answered from the cache"
    spent = await rows(gw, tmp_path)
    assert set(spent) == {"j-1:rung1", "j-1", "j-2:rung1", "j-2"}
    assert spent["j-1"]["cost"] == pytest.approx(price(first.usage, BIG_PRICE)) and spent["j-1"]["cache_hit"] == 0
    for request_id, model in (("j-2:rung1", CHEAP), ("j-2", BIG)):
        row = spent[request_id]
        assert (row["model"], row["deployment"], row["cache_hit"], row["cost"]) == (model, "cache", 1, 0)
    assert spent["j-2"]["saved"] == pytest.approx(price(first.usage, BIG_PRICE))
    assert spent["j-2:rung1"]["saved"] == pytest.approx(spent["j-1:rung1"]["cost"])


async def test_a_buffered_json_stream_is_kept_and_its_repeat_is_a_hit(gateway_factory, sim_factory, tmp_path,
                                                                     redis_server) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(cached_ladder(cheap, big, tmp_path, redis_server))
    first_headers, first_text, _ = await stream(gw, temperature=0, response_format=AS_SCHEMA)
    await gw.state.cache.settle()  # a streamed miss is stored in the background
    headers, text, chunks = await stream(gw, temperature=0, response_format=AS_SCHEMA)
    assert first_headers["x-llmp-route"] == headers["x-llmp-route"] == f"{CHEAP}=answered; buffered"
    assert (first_headers["x-llmp-cache"], headers["x-llmp-cache"]) == ("miss", "hit")
    assert text == first_text and orjson.loads(text) and {c.model for c in chunks} == {CHEAP}
    assert cheap.stats.requests == 1, "the stream held to be checked was kept in the cache, as any other"
