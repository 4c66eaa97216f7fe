"""The response cache's stores keep answers for their TTL and under their byte cap (real Redis, and in process), and
a `cache:` section with a mistake is refused naming the field."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.cache.stores import ENTRY_OVERHEAD, MAX_EVICTIONS, PREFIX, InProcessStore, RedisStore, StoreDown
from gateway.config.errors import ConfigError
from gateway.config.native import parse_native
from gateway.governance.limits.redis_pipe import RedisPipe
from tests.gateway.conftest import MODEL, deployment, gateway_config
from tests.gateway.servers import RedisServer
from tests.gateway.test_cache import ask, cached_config, team_key


def redis_store(url: str, ttl: float = 60, max_bytes: int = 10_000,
                on_event: Any = lambda *a, **k: None) -> RedisStore:
    return RedisStore(url, ttl, max_bytes, timeout_ms=500, retry_after_ms=100, on_event=on_event)


def entry(i: int) -> str:
    """An entry id as the gateway makes them (request_key.entry_id: 40 hex digits)."""
    return f"{i:040x}"


async def redis_bytes(url: str) -> tuple[int, int, int]:
    """The store's byte counter, index size and entries present, read straight from Redis."""
    pipe = RedisPipe(url)
    try:
        total = int(await pipe.call("GET", PREFIX + "bytes") or 0)
        index = int(await pipe.call("ZCARD", PREFIX + "index"))
        entries = len(await pipe.call("KEYS", PREFIX + "e:*"))
        return total, index, entries
    finally:
        await pipe.close()


async def test_redis_entries_expire_after_their_ttl(redis_server: RedisServer) -> None:
    store = redis_store(redis_server.url, ttl=0.3)
    try:
        await store.put("a", b"answer")
        assert await store.get("a") == b"answer"
        await asyncio.sleep(0.5)
        assert await store.get("a") is None
        await store.put("b", b"another")  # forgets what expired, so it no longer counts
        assert await redis_bytes(redis_server.url) == (len(b"another") + ENTRY_OVERHEAD, 1, 1)
    finally:
        await store.close()


async def test_redis_evicts_the_oldest_answers_past_max_bytes(redis_server: RedisServer) -> None:
    each = 300 + ENTRY_OVERHEAD  # an entry counts what Redis holds for it, not only its answer
    store = redis_store(redis_server.url, max_bytes=3 * each + 100)
    try:
        for i in range(10):
            await store.put(f"e{i}", bytes([65 + i]) * 300)
        total, index, entries = await redis_bytes(redis_server.url)
        assert (index, entries) == (3, 3) and total == 3 * each
        assert [await store.get(f"e{i}") is not None for i in range(10)] == [False] * 7 + [True] * 3
        assert store.evicted == 7
        await store.put("e9", b"z" * 100)  # storing an entry again replaces it and its size
        assert await redis_bytes(redis_server.url) == (3 * each - 200, 3, 3)
    finally:
        await store.close()


async def used_memory(url: str) -> int:
    pipe = RedisPipe(url)
    try:
        info = (await pipe.call("INFO", "memory")).decode()
    finally:
        await pipe.close()
    return int(next(line for line in info.splitlines() if line.startswith("used_memory:")).split(":")[1])


async def test_max_bytes_bounds_the_memory_the_cache_takes_in_redis(redis_server: RedisServer) -> None:
    # The limiter shares this Redis: the cap must hold for what Redis spends, keys and index included, even when the
    # answers are small (a short reply is some 200 bytes; Redis spends about 500 more on each entry).
    cap = 500_000
    store = redis_store(redis_server.url, max_bytes=cap)
    try:
        await store.put("warm-up", b"")  # the script's own memory in Redis is not the cache's
        before = await used_memory(redis_server.url)
        for i in range(3000):
            await store.put(entry(i), b"a" * 200)
        grown = await used_memory(redis_server.url) - before
        assert grown <= 1.1 * cap, f"the cache took {grown} bytes of Redis under max_bytes {cap}"
        assert (await redis_bytes(redis_server.url))[0] <= cap
    finally:
        await store.close()


async def test_one_store_evicts_a_bounded_number_of_entries(redis_server: RedisServer) -> None:
    # Redis runs nothing else while a script runs (the limiter's calls wait): a cap lowered under what is stored is
    # reached over several stores, each evicting at most MAX_EVICTIONS, never in one script evicting thousands.
    wide = redis_store(redis_server.url, max_bytes=10_000_000)
    narrow = redis_store(redis_server.url, max_bytes=10 * (100 + ENTRY_OVERHEAD))
    try:
        await asyncio.gather(*(wide.put(entry(i), b"b" * 100) for i in range(1000)))
        await narrow.put("new", b"c" * 100)
        assert narrow.evicted == MAX_EVICTIONS and narrow.not_stored == 1
        assert await narrow.get("new") is None, "no room was made within the bound: not stored"
        assert (await redis_bytes(redis_server.url))[1] == 1000 - MAX_EVICTIONS
        for _ in range(1000 // MAX_EVICTIONS + 1):
            await narrow.put("new", b"c" * 100)
        assert await narrow.get("new") == b"c" * 100
        total, index, entries = await redis_bytes(redis_server.url)
        assert total <= 10 * (100 + ENTRY_OVERHEAD) and index == entries <= 10
    finally:
        await wide.close()
        await narrow.close()


async def test_a_command_redis_refuses_is_logged_once_not_per_call(redis_server: RedisServer) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    store = redis_store(redis_server.url, on_event=lambda name, **fields: events.append((name, fields)))
    pipe = RedisPipe(redis_server.url)
    try:
        await pipe.call("SET", PREFIX + "index", "not a sorted set")  # e.g. a key of ours overwritten by hand
        for i in range(5):
            with pytest.raises(StoreDown):
                await store.put(entry(i), b"answer")
        assert [name for name, _ in events] == ["cache_store_error"]
        assert "WRONGTYPE" in events[0][1]["error"]
        assert await store.get(entry(0)) is None, "a refused command is not an outage: reads go on"
    finally:
        await pipe.close()
        await store.close()


async def test_in_process_entries_expire_and_the_least_recently_used_go_first() -> None:
    now = [0.0]
    store = InProcessStore(10, 1000, clock=lambda: now[0])
    for i in range(3):
        await store.put(f"e{i}", b"x" * 300)
    assert await store.get("e0") is not None  # used: e1 is now the least recently used
    await store.put("e3", b"x" * 300)
    assert [await store.get(f"e{i}") is not None for i in range(4)] == [True, False, True, True]
    assert store.bytes == 900
    now[0] = 11
    assert await store.get("e0") is None and store.bytes == 600


async def test_a_hit_expires_with_its_ttl_through_the_gateway(gateway_factory, sim, tmp_path, redis_server) -> None:
    gw = await gateway_factory(cached_config(sim, tmp_path, redis_server.url, ttl_seconds=0.4))
    key = await team_key(gw, "search")
    assert [(await ask(gw, key))[0] for _ in range(2)] == ["miss", "hit"]
    await asyncio.sleep(0.6)
    assert (await ask(gw, key))[0] == "miss"


async def test_the_size_cap_evicts_through_the_gateway(gateway_factory, sim, tmp_path, redis_server) -> None:
    gw = await gateway_factory(cached_config(sim, tmp_path, redis_server.url, max_bytes=1500, max_entry_bytes=1000))
    key = await team_key(gw, "search")
    asks = [[{"role": "user", "content": f"Question number {i}"}] for i in range(6)]
    for messages in asks:
        assert (await ask(gw, key, messages=messages))[0] == "miss"
    total, _, entries = await redis_bytes(redis_server.url)
    assert total <= 1500 and 0 < entries < 6
    assert (await ask(gw, key, messages=asks[-1]))[0] == "hit"
    assert (await ask(gw, key, messages=asks[0]))[0] == "miss", "the oldest answer was evicted"


async def test_an_answer_over_max_entry_bytes_is_not_kept(gateway_factory, sim, tmp_path) -> None:
    gw = await gateway_factory(cached_config(sim, tmp_path, None, max_entry_bytes=50, max_bytes=1000))
    key = await team_key(gw, "search")
    assert [(await ask(gw, key))[0] for _ in range(2)] == ["miss", "miss"]


def config_with(cache: Any) -> dict[str, Any]:
    config = gateway_config([deployment("sim-a", "http://127.0.0.1:9/v1")])
    config["cache"] = cache
    return config


@pytest.mark.parametrize("cache, message", [
    ({"models": ["nope"]}, "cache.models: 'nope' is not a model alias"),
    ({"models": [MODEL], "hit_cost_fraction": 2}, "cache.hit_cost_fraction: Input should be less than or equal to 1"),
    ({"models": [MODEL], "scope": "org"}, "cache.scope: Input should be 'team' or 'key'"),
    ({"models": [MODEL], "ttl_seconds": 0}, "cache.ttl_seconds: Input should be greater than 0"),
    ({"models": [MODEL], "max_entry_bytes": 17 << 20}, "cache.max_entry_bytes: Input should be less than or equal to "
     "16777216"),
    ({"models": [MODEL], "max_bytes": 10, "max_entry_bytes": 100}, "cache.max_entry_bytes (100) is larger than"),
    ({"models": [MODEL], "temprature_above_zero": True}, "cache.temprature_above_zero: unknown field"),
    ({}, "cache: names no model, team or key to cache for"),
])
def test_a_cache_section_with_a_mistake_is_refused_naming_the_field(cache: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_native(config_with(cache))


def test_the_example_section_parses() -> None:
    config = parse_native(config_with({"models": ["*"], "teams": ["search"], "keys": ["batch"], "scope": "key",
                                       "hit_cost_fraction": 0.1}))
    assert config.cache is not None and config.cache.covers("anything", "anything", None, None)


async def test_a_long_answer_read_from_redis_is_parsed_once_not_at_every_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # A cached answer of megabytes comes from Redis in many reads; copying and parsing the buffer again at each read
    # made a GET quadratic (64 MiB: 4.3 s here; now 0.25 s).
    from gateway.governance.limits import redis_pipe

    parsed = []
    real = redis_pipe.parse
    monkeypatch.setattr(redis_pipe, "parse", lambda buf, pos: parsed.append(pos) or real(buf, pos))
    proto = redis_pipe._Protocol()
    reply = asyncio.get_running_loop().create_future()
    proto.waiting.append(reply)
    answer = b"x" * (10 << 20)
    wire = b"$%d\r\n%s\r\n+OK\r\n" % (len(answer), answer)
    for start in range(0, len(wire), 65536):
        proto.data_received(wire[start:start + 65536])
    assert reply.result() == answer and len(parsed) <= 3
