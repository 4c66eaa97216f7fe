"""The response cache answers only what the call would have been answered without it: a teammate's key is refused the
fallbacks it may not name even when the answer is cached; an answer another model gave as a fallback is not kept
under the alias the caller named; a ladder's rungs are each cached under their own alias, a buffered stream's too,
and a cached rung answer that fails a check escalates as any other; browsers may read the cache's headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from multidict import CIMultiDict

from tests.gateway.conftest import MODEL, closed_port_url, deployment
from tests.gateway.test_cache import ASK, ask, cached_config, team_key
from tests.gateway.test_keys_admin import admin
from tests.gateway.test_ladder import AS_SCHEMA, BIG, CHEAP, MESSAGES, ladder_config, spend_rows

OTHER = "other-model"


def two_models(sim: Any, tmp_path: Path, redis_url: str, primary: str | None = None) -> dict[str, Any]:
    """MODEL (on `primary`, else the simulator) falling back to OTHER (the simulator), both cached."""
    config = cached_config(sim, tmp_path, redis_url, models=[MODEL, OTHER])
    config["models"][0]["deployments"] = [deployment("primary", primary or sim.base_url)]
    config["models"][0]["fallbacks"] = [OTHER]
    config["models"].append({"alias": OTHER, "deployments": [deployment("fallback", sim.base_url)],
                             "input_cost_per_token": 0.01, "output_cost_per_token": 0.02})
    config["gateway"]["retries"] = {"attempts": 0}
    return config


async def test_a_teammate_is_refused_the_fallbacks_it_may_not_name_even_when_the_answer_is_cached(
        gateway_factory, sim, tmp_path, redis_server) -> None:
    gw = await gateway_factory(two_models(sim, tmp_path, redis_server.url))
    await admin(gw, "POST", "/team/new", {"team_id": "search"})
    _, wide = await admin(gw, "POST", "/key/generate", {"team_id": "search", "models": [MODEL, OTHER]})
    _, narrow = await admin(gw, "POST", "/key/generate", {"team_id": "search", "models": [MODEL]})
    body = {"fallbacks": [OTHER]}
    assert (await ask(gw, wide["key"], extra_body=body))[0] == "miss"
    assert (await ask(gw, wide["key"], extra_body=body))[0] == "hit"
    with pytest.raises(openai.PermissionDeniedError, match=f"may not call model `{OTHER}`"):
        await ask(gw, narrow["key"], extra_body=body)
    assert (await ask(gw, narrow["key"]))[0] == "miss", "without the fallback it may not name: its own call"
    assert sim.stats.requests == 2


async def test_an_answer_a_fallback_gave_is_not_kept_under_the_alias_called(gateway_factory, sim, tmp_path,
                                                                            redis_server) -> None:
    gw = await gateway_factory(two_models(sim, tmp_path, redis_server.url, primary=closed_port_url()))
    key = await team_key(gw, "search")
    assert [(await ask(gw, key))[0] for _ in range(2)] == ["miss", "miss"], "OTHER's answer is not MODEL's"
    client = gw.client(api_key=key)
    streamed = [{"role": "user", "content": "and streamed"}]
    _ = [c async for c in await client.chat.completions.create(model=MODEL, messages=streamed, temperature=0,
                                                               stream=True)]
    await gw.state.cache.settle()
    assert (await ask(gw, key, messages=streamed))[0] == "miss"
    assert sim.stats.requests == 4
    headers = []
    for _ in range(2):
        raw = await client.chat.completions.with_raw_response.create(model=OTHER, messages=ASK, temperature=0)
        headers.append(raw.headers["x-llmp-cache"])
    assert headers == ["miss", "hit"], "called by its own name, OTHER's answers are kept"


def cached_ladder(cheap: str, big: str, tmp_path: Path, redis_url: str) -> dict[str, Any]:
    config = ladder_config(cheap, big, tmp_path)
    # 3 s: these are no tests of timeouts, and a loaded test machine can stall its loop past a short one
    config["redis"] = {"url": redis_url, "timeout_ms": 3000}
    config["cache"] = {"models": [CHEAP, BIG]}
    return config


async def ladder_stream(gw: Any) -> tuple[Any, str]:
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES, stream=True, temperature=0, response_format=AS_SCHEMA)
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    return raw.headers, text


async def test_a_ladders_buffered_stream_is_kept_so_its_repeat_is_a_hit_on_that_rung(
        gateway_factory, sim_factory, tmp_path, redis_server) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(cached_ladder(cheap.base_url, big.base_url, tmp_path, redis_server.url))
    headers, first = await ladder_stream(gw)
    assert headers["x-llmp-route"] == f"{CHEAP}=answered; buffered" and headers["x-llmp-cache"] == "miss"
    await gw.state.cache.settle()
    headers, again = await ladder_stream(gw)
    assert headers["x-llmp-route"] == f"{CHEAP}=answered; buffered" and headers["x-llmp-cache"] == "hit"
    assert again == first and cheap.stats.requests == 1 and big.stats.requests == 0


async def test_a_cached_rung_answer_that_fails_its_check_escalates_to_the_next_rungs_cached_answer(
        gateway_factory, sim_factory, tmp_path, redis_server) -> None:
    cheap = await sim_factory(name="cheap", misbehave={MODEL: "bad-schema"})
    big = await sim_factory(name="big")
    gw = await gateway_factory(cached_ladder(cheap.base_url, big.base_url, tmp_path, redis_server.url))
    client = gw.client()
    for request_id in ("r-1", "r-2"):
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES, temperature=0, response_format=AS_SCHEMA,
            extra_headers={"x-request-id": request_id})
        assert raw.headers["x-llmp-route"] == f"{CHEAP}=invalid_json,{BIG}=answered"
    assert raw.headers["x-llmp-cache"] == "hit" and raw.parse().model == BIG
    assert (cheap.stats.requests, big.stats.requests) == (1, 1), "the repeat reached no model"
    rows = {r["request_id"]: r for r in await spend_rows(gw, tmp_path)}
    assert rows["r-2:rung1"]["deployment"] == "cache" and rows["r-2"]["deployment"] == "cache"
    assert rows["r-2:rung1"]["cost"] == 0 and rows["r-2"]["cost"] == 0


async def test_browsers_may_read_the_cache_headers(gateway_factory, sim, tmp_path, redis_server) -> None:
    gw = await gateway_factory(cached_config(sim, tmp_path, redis_server.url))
    key = await team_key(gw, "search")
    await ask(gw, key)
    body = {"model": MODEL, "messages": ASK, "temperature": 0}
    headers = {"Origin": "https://chat.example.com", "Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/chat/completions", json=body,
                                                          headers=headers) as resp:
        assert resp.headers["x-llmp-cache"] == "hit"
        exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-llmp-cache", "x-litellm-cache-key"} <= exposed


async def test_no_store_on_a_second_cache_control_line_is_honoured(gateway_factory, sim, tmp_path,
                                                                    redis_server) -> None:
    gw = await gateway_factory(cached_config(sim, tmp_path, redis_server.url))
    key = await team_key(gw, "search")
    body = {"model": MODEL, "messages": ASK, "temperature": 0}
    headers = CIMultiDict([("Authorization", f"Bearer {key}"), ("Cache-Control", "max-age=0"),
                           ("Cache-Control", "no-store")])
    async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/chat/completions", json=body,
                                                          headers=headers) as resp:
        assert resp.status == 200 and resp.headers["x-llmp-cache"] == "bypass"
    assert (await ask(gw, key))[0] == "miss", "the no-store answer was not kept"
