"""The response cache, as a team calling the gateway with the official openai client sees it: a repeated request is
answered from the region's Redis (header, a spend row that costs nothing and says what it saved, metrics, the log
line), never across teams, never for sampled calls unless asked, never when the caller opts out, and a stored
answer replays as a stream the client parses."""

from __future__ import annotations

import asyncio
import copy
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import MODEL, RunningGateway
from tests.gateway.servers import RedisServer, wait_port
from tests.gateway.test_keys_admin import admin, governed

IN_PRICE, OUT_PRICE = 0.001, 0.002  # governed(): the model's prices
ASK = [{"role": "user", "content": "What does the gateway do with tokens?"}]


def cached_config(sim: Any, tmp_path: Path, redis_url: str | None, **cache: Any) -> dict[str, Any]:
    config = governed(sim, tmp_path)
    if redis_url is not None:
        # 3 s: these are no tests of timeouts, and a loaded test machine can stall its loop past a short one
        config["redis"] = {"url": redis_url, "timeout_ms": 3000, "retry_after_ms": 500}
    config["cache"] = {"models": [MODEL], **cache}
    return config


@pytest.fixture
async def gw(gateway_factory, sim, tmp_path, redis_server: RedisServer) -> RunningGateway:
    return await gateway_factory(cached_config(sim, tmp_path, redis_server.url))


async def team_key(gw: RunningGateway, team: str) -> str:
    status, _ = await admin(gw, "POST", "/team/new", {"team_id": team})
    assert status in (200, 400)  # 400: the team exists already
    status, made = await admin(gw, "POST", "/key/generate", {"team_id": team})
    assert status == 200, made
    return str(made["key"])


async def ask(gw: RunningGateway, key: str, **extra: Any) -> tuple[str | None, Any]:
    """The x-llmp-cache header and the parsed answer of one chat call."""
    extra.setdefault("temperature", 0)
    raw = await gw.client(api_key=key).chat.completions.with_raw_response.create(
        model=MODEL, messages=extra.pop("messages", ASK), **extra)
    header = raw.headers.get("x-llmp-cache")
    # LiteLLM's proxy names its cache key on hits only: LiteLLM clients tell a hit by it.
    assert ("x-litellm-cache-key" in raw.headers) == (header == "hit")
    return header, raw.parse()


async def spend_rows(gw: RunningGateway, calls: int) -> list[dict[str, Any]]:
    """LiteLLM's /spend/logs rows once the ledger holds `calls` of them, oldest first."""
    for _ in range(100):
        await gw.state.governance.ledger.flush()
        _, rows = await admin(gw, "GET", "/spend/logs")
        if len(rows) >= calls:
            return list(reversed(rows))
        await asyncio.sleep(0.05)
    pytest.fail(f"the ledger never held {calls} rows")


async def scraped(gw: RunningGateway, name: str) -> dict[tuple[str, ...], float]:
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    return {tuple(s.labels.values()): s.value for f in text_string_to_metric_families(text) if f.name == name
            for s in f.samples if s.name == name + "_total"}


async def test_a_repeated_request_is_a_hit_that_costs_nothing_and_shows_what_it_saved(gw, sim) -> None:
    key = await team_key(gw, "search")
    first_header, first = await ask(gw, key)
    second_header, second = await ask(gw, key)
    assert (first_header, second_header) == ("miss", "hit")
    assert second.id == first.id and second.choices[0].message.content == first.choices[0].message.content
    assert sim.stats.requests == 1, "the hit never reached the model"
    full = first.usage.prompt_tokens * IN_PRICE + first.usage.completion_tokens * OUT_PRICE
    miss_row, hit_row = await spend_rows(gw, 2)
    assert miss_row["cache_hit"] == "False" and miss_row["spend"] == pytest.approx(full) and miss_row["saved"] == 0
    assert hit_row["cache_hit"] == "True" and hit_row["spend"] == 0 and hit_row["saved"] == pytest.approx(full)
    assert hit_row["model_id"] == "cache" and hit_row["prompt_tokens"] == first.usage.prompt_tokens
    assert hit_row["team_id"] == "search"
    requests = await scraped(gw, "llmp_cache_requests")
    assert requests == {(MODEL, "miss"): 1.0, (MODEL, "hit"): 1.0}
    assert (await scraped(gw, "llmp_cache_saved_usd"))[(MODEL,)] == pytest.approx(full)
    assert [c.get("cache") for c in await gw.logged_calls(2)] == ["miss", "hit"]


async def test_another_teams_identical_request_is_a_miss_and_a_teammate_shares_the_hit(gw, sim) -> None:
    search, ads = await team_key(gw, "search"), await team_key(gw, "ads")
    assert (await ask(gw, search))[0] == "miss"
    assert (await ask(gw, ads))[0] == "miss", "one team never sees another's answers"
    teammate = await team_key(gw, "search")
    assert (await ask(gw, teammate))[0] == "hit"
    assert sim.stats.requests == 2


async def test_a_key_without_a_team_is_a_scope_of_its_own(gw) -> None:
    _, alone = await admin(gw, "POST", "/key/generate", {})
    _, other = await admin(gw, "POST", "/key/generate", {})
    assert (await ask(gw, alone["key"]))[0] == "miss"
    assert (await ask(gw, other["key"]))[0] == "miss"
    assert (await ask(gw, alone["key"]))[0] == "hit"


async def test_a_different_parameter_is_a_different_request_and_attribution_fields_are_not(gw) -> None:
    key = await team_key(gw, "search")
    assert (await ask(gw, key, max_tokens=50))[0] == "miss"
    assert (await ask(gw, key, max_tokens=50, user="ana", metadata={"run": "1"}))[0] == "hit"
    assert (await ask(gw, key, max_tokens=51))[0] == "miss"
    assert (await ask(gw, key, max_tokens=50, seed=7))[0] == "miss"


async def test_sampled_calls_bypass_the_cache(gw, sim) -> None:
    key = await team_key(gw, "search")
    assert [(await ask(gw, key, temperature=0.7))[0] for _ in range(2)] == ["bypass", "bypass"]
    client = gw.client(api_key=key)  # no temperature at all: OpenAI's default of 1 samples
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK)
    assert raw.headers["x-llmp-cache"] == "bypass"
    assert sim.stats.requests == 3


async def test_sampled_calls_are_cached_when_the_config_says_so(gateway_factory, sim, tmp_path, redis_server) -> None:
    gw = await gateway_factory(cached_config(sim, tmp_path, redis_server.url, temperature_above_zero=True))
    key = await team_key(gw, "search")
    assert [(await ask(gw, key, temperature=0.7))[0] for _ in range(2)] == ["miss", "hit"]


async def test_no_cache_and_no_store_bypass_by_header_or_litellm_body_field(gw, sim) -> None:
    key = await team_key(gw, "search")
    assert (await ask(gw, key))[0] == "miss"
    client = gw.client(api_key=key)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK, temperature=0, extra_headers={"Cache-Control": "no-cache"})
    assert raw.headers["x-llmp-cache"] == "bypass"
    assert (await ask(gw, key, extra_body={"cache": {"no-cache": True}}))[0] == "bypass"
    assert "cache" not in sim.stats.bodies[-1], "LiteLLM's per-call field is stripped before the upstream"
    assert (await ask(gw, key))[0] == "hit"
    other = [{"role": "user", "content": "Keep this one out of the cache."}]
    assert (await ask(gw, key, messages=other, extra_body={"cache": {"no-store": True}}))[0] == "bypass"
    assert (await ask(gw, key, messages=other))[0] == "miss", "a no-store answer was not kept"
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "and this"}], temperature=0,
        extra_headers={"Cache-Control": "no-store"})
    assert raw.headers["x-llmp-cache"] == "bypass"
    assert sim.stats.requests == 6, "every call but the hit reached the model"


async def test_a_hit_replays_as_a_stream_the_openai_client_parses(gw, sim) -> None:
    key = await team_key(gw, "search")
    _, whole = await ask(gw, key)
    client = gw.client(api_key=key)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK, temperature=0, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-llmp-cache"] == "hit" and raw.headers["content-type"].startswith("text/event-stream")
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    plain = [c async for c in await client.chat.completions.create(model=MODEL, messages=ASK, temperature=0,
                                                                 stream=True)]
    assert all(c.usage is None for c in plain), "no usage chunk unless asked for"
    assert sim.stats.requests == 1


async def test_a_streamed_miss_is_kept_once_its_stream_ends(gw, sim) -> None:
    key = await team_key(gw, "search")
    client = gw.client(api_key=key)
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK, temperature=0,
                                                                 stream=True)
    assert raw.headers["x-llmp-cache"] == "miss"
    streamed = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    await gw.state.cache.settle()  # stored once the stream ended, after its last byte
    header, whole = await ask(gw, key)
    assert header == "hit" and whole.choices[0].message.content == streamed
    assert whole.usage.completion_tokens == 8 and whole.choices[0].finish_reason == "stop"
    assert sim.stats.requests == 1


async def test_an_answer_cut_short_by_max_tokens_is_not_kept(gw, sim) -> None:
    key = await team_key(gw, "search")
    header, answer = await ask(gw, key, max_tokens=3)
    assert header == "miss" and answer.choices[0].finish_reason == "length"
    assert (await ask(gw, key, max_tokens=3))[0] == "miss"


async def test_completions_are_cached_too(gw, sim) -> None:
    key = await team_key(gw, "search")
    client = gw.client(api_key=key)
    headers = []
    for _ in range(2):
        raw = await client.completions.with_raw_response.create(model=MODEL, prompt="Say hi", temperature=0)
        headers.append(raw.headers["x-llmp-cache"])
    assert headers == ["miss", "hit"]
    chunks = [c async for c in await client.completions.create(model=MODEL, prompt="Say hi", temperature=0,
                                                               stream=True)]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == (raw.parse()).choices[0].text
    assert sim.stats.requests == 1


async def test_a_hit_costs_the_configured_fraction(gateway_factory, sim, tmp_path, redis_server) -> None:
    gw = await gateway_factory(cached_config(sim, tmp_path, redis_server.url, hit_cost_fraction=0.1))
    key = await team_key(gw, "search")
    _, first = await ask(gw, key)
    raw = await gw.client(api_key=key).chat.completions.with_raw_response.create(model=MODEL, messages=ASK,
                                                                                 temperature=0)
    assert raw.headers["x-llmp-cache"] == "hit"
    full = first.usage.prompt_tokens * IN_PRICE + first.usage.completion_tokens * OUT_PRICE
    assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(0.1 * full), "what the hit is charged"
    _, hit_row = await spend_rows(gw, 2)
    assert hit_row["spend"] == pytest.approx(0.1 * full) and hit_row["saved"] == pytest.approx(0.9 * full)
    assert (await scraped(gw, "llmp_cache_saved_usd"))[(MODEL,)] == pytest.approx(0.9 * full)


async def test_a_redis_outage_bypasses_the_cache_and_it_comes_back_with_redis(gw, sim, redis_server) -> None:
    key = await team_key(gw, "search")
    assert (await ask(gw, key))[0] == "miss"
    redis_server.stop()
    header, answer = await ask(gw, key)
    assert header == "bypass" and answer.choices[0].message.content
    assert sim.stats.requests == 2
    assert gw.log_buffer.getvalue().count(b'"cache_store_unavailable"') == 1
    # Redis back on its address: once retry_after_ms has passed, answers are stored and served again.
    back = subprocess.Popen(["redis-server", "--port", str(redis_server.port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(redis_server.port, 10, back)
        await asyncio.sleep(0.6)
        assert [(await ask(gw, key))[0] for _ in range(2)] == ["miss", "hit"]
        assert b'"cache_store_recovered"' in gw.log_buffer.getvalue()
    finally:
        back.kill()
        back.wait(timeout=10)


async def test_calls_the_section_does_not_cover_get_no_header(gateway_factory, sim, tmp_path) -> None:
    config = cached_config(sim, tmp_path, None, models=[], teams=["search"])  # in process: no redis section
    gw = await gateway_factory(config)
    search = await team_key(gw, "search")
    _, other = await admin(gw, "POST", "/key/generate", {})
    assert [(await ask(gw, search))[0] for _ in range(2)] == ["miss", "hit"]
    assert (await ask(gw, other["key"]))[0] is None
    assert "cache" not in (await gw.logged_calls(3))[-1]


async def test_a_call_passed_on_by_another_regions_gateway_is_not_cached_here(gw, sim) -> None:
    # It carries the zone's master key whoever made it: cached here, it would be shared across teams.
    client = gw.client()
    for _ in range(2):
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=ASK, temperature=0, extra_headers={"x-llmp-hop": "1"})
        assert "x-llmp-cache" not in raw.headers
    assert sim.stats.requests == 2


async def test_scope_key_keeps_each_keys_answers_its_own(gateway_factory, sim, tmp_path, redis_server) -> None:
    gw = await gateway_factory(cached_config(sim, tmp_path, redis_server.url, models=[], keys=["alice", "bob"],
                                             scope="key"))
    await admin(gw, "POST", "/team/new", {"team_id": "search"})
    made = {}
    for alias in ("alice", "bob", "carol"):
        _, made[alias] = await admin(gw, "POST", "/key/generate", {"team_id": "search", "key_alias": alias})
    assert [(await ask(gw, made["alice"]["key"]))[0] for _ in range(2)] == ["miss", "hit"]
    assert (await ask(gw, made["bob"]["key"]))[0] == "miss", "same team, but scope: key"
    assert (await ask(gw, made["carol"]["key"]))[0] is None, "a key the section does not name is not covered"


async def test_a_miss_is_answered_without_waiting_for_its_store(gateway_factory, sim, tmp_path) -> None:
    # A slow Redis (under timeout_ms, or a long eviction script) delays the store, never the answer: misses are most
    # calls, and their answer is ready.
    gw = await gateway_factory(cached_config(sim, tmp_path, None))
    store, release = gw.state.cache.store, asyncio.Event()
    put = store.put

    async def slow_put(entry: str, answer: bytes) -> None:
        await release.wait()
        await put(entry, answer)

    store.put = slow_put
    key = await team_key(gw, "search")
    try:
        header, answer = await asyncio.wait_for(ask(gw, key), 5)
        assert header == "miss" and answer.choices[0].message.content
    finally:
        release.set()
    await gw.state.cache.settle()
    assert (await ask(gw, key))[0] == "hit"


async def test_stores_in_flight_are_bounded_when_the_store_is_slow(gateway_factory, sim, tmp_path) -> None:
    gw = await gateway_factory(cached_config(sim, tmp_path, None))
    cache, release = gw.state.cache, asyncio.Event()
    put = cache.store.put

    async def slow_put(entry: str, answer: bytes) -> None:
        await release.wait()
        await put(entry, answer)

    cache.store.put, cache.max_pending = slow_put, 2
    key = await team_key(gw, "search")
    asks = [[{"role": "user", "content": f"Question {i}"}] for i in range(4)]
    try:
        for messages in asks:
            assert (await asyncio.wait_for(ask(gw, key, messages=messages), 5))[0] == "miss"
        assert len(cache._pending) == 2, "answers waiting for a slow store are held: at most max_pending"
    finally:
        release.set()
    await cache.settle()
    assert [(await ask(gw, key, messages=m))[0] for m in asks] == ["hit", "hit", "miss", "miss"]


async def test_an_alias_moved_to_another_model_starts_afresh(gateway_factory, sim_factory, tmp_path,
                                                             redis_server) -> None:
    # The answers outlive a rollout in Redis: an alias now answered by another model (a new version, a fine-tune)
    # must not be served the old model's answers for ttl_seconds.
    sim = await sim_factory(name="sim-a", models=(MODEL, "llama-3-3-70b-instruct"))
    config = cached_config(sim, tmp_path, redis_server.url)
    before = await gateway_factory(config)
    key = await team_key(before, "search")
    assert [(await ask(before, key))[0] for _ in range(2)] == ["miss", "hit"]
    for name, upstream, expected in (("same", MODEL, "hit"), ("moved", "llama-3-3-70b-instruct", "miss")):
        rolled = copy.deepcopy(config)
        rolled["ledger"]["spool_dir"] = str(tmp_path / f"spool-{name}")
        rolled["models"][0]["deployments"][0]["model"] = upstream
        assert (await ask(await gateway_factory(rolled), key))[0] == expected, name
