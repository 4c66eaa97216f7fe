"""Routing: residency never crossed, local region first, weights, least-busy, session affinity with bounded load."""

from __future__ import annotations

import random
from collections import Counter

import openai
import pytest

from gateway.config.model_names import match, pattern_regex
from gateway.config.native import parse_native
from gateway.upstream.hashring import BoundedLoadRing
from gateway.upstream.routing import Router
from tests.gateway.conftest import MODEL, deployment, gateway_config

MESSAGES = [{"role": "user", "content": "hello"}]


def router(deployments, **gateway) -> Router:
    return Router(parse_native(gateway_config(deployments, **gateway)), rng=random.Random(7))


def order(r: Router, key: bytes = b"k") -> list[str]:
    return [d.name for d, _ in r.candidates(r.route(MODEL), "chat", lambda: key)]


def test_requests_never_leave_the_residency_zone() -> None:
    r = router([deployment("eu-1", "http://eu-1:8000/v1", region="eu-west-1", residency="eu"),
                deployment("us-1", "http://us-1:8000/v1", region="us-east-1", residency="us")],
               region="eu-west-1", residency="eu")
    assert order(r) == ["eu-1"]


async def test_a_failing_zone_gets_a_503_not_another_zone(sim_factory, gateway_factory) -> None:
    eu = await sim_factory(name="eu", fault="error_500")
    us = await sim_factory(name="us")
    gw = await gateway_factory(gateway_config(
        [deployment("eu", eu.base_url, region="eu-west-1", residency="eu"),
         deployment("us", us.base_url, region="us-east-1", residency="us")], region="eu-west-1", residency="eu"))
    with pytest.raises(openai.InternalServerError):
        await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert us.stats.requests == 0


def test_local_region_first_then_other_regions_then_hosted_fallbacks() -> None:
    r = router([deployment("hosted", "http://hosted/v1", region="us-east-1", residency="us", tier="fallback"),
                deployment("west", "http://west/v1", region="us-west-2", residency="us"),
                deployment("east", "http://east/v1", region="us-east-1", residency="us")],
               region="us-east-1", residency="us")
    assert order(r) == ["east", "west", "hosted"]


def test_weighted_choice_follows_the_weights() -> None:
    r = router([deployment("heavy", "http://a/v1", weight=3), deployment("light", "http://b/v1", weight=1)],
               routing="weighted")
    firsts = Counter(order(r)[0] for _ in range(4000))
    assert 0.70 < firsts["heavy"] / 4000 < 0.80


def test_least_busy_prefers_the_idle_deployment() -> None:
    r = router([deployment("busy", "http://a/v1"), deployment("idle", "http://b/v1")])
    r.route(MODEL).deployments[0].replicas[0].in_flight = 5
    assert all(order(r)[0] == "idle" for _ in range(20))


def test_session_affinity_keeps_a_session_on_one_replica() -> None:
    urls = [f"http://10.0.0.{i}:8000/v1" for i in range(1, 5)]
    r = router([deployment("pool", urls)])
    pool = r.route(MODEL).deployments[0]
    picks = {s: pool.order(lambda s=s: f"s:{s}".encode())[0].base_url for s in range(200)}
    again = {s: pool.order(lambda s=s: f"s:{s}".encode())[0].base_url for s in range(200)}
    assert picks == again
    spread = Counter(picks.values())
    assert len(spread) == 4 and min(spread.values()) > 20, spread


def test_bounded_load_moves_a_session_off_an_overloaded_replica() -> None:
    ring = BoundedLoadRing(["a", "b", "c"], str)
    load = {"a": 0, "b": 0, "c": 0}
    home = ring.order(b"session-1", load.__getitem__, lambda m: True, 1.25)[0]
    load[home] = 10  # far above 1.25x the mean
    moved = ring.order(b"session-1", load.__getitem__, lambda m: True, 1.25)[0]
    assert moved != home
    load[home] = 0
    assert ring.order(b"session-1", load.__getitem__, lambda m: True, 1.25)[0] == home


def test_replica_changes_keep_most_sessions_in_place() -> None:
    names = [f"r{i}" for i in range(5)]
    before = BoundedLoadRing(names, str)
    after = BoundedLoadRing([*names, "r5"], str)
    keys = [f"user-{i}".encode() for i in range(1000)]
    free = lambda m: 0  # noqa: E731
    moved = sum(before.order(k, free, bool, 1.25)[0] != after.order(k, free, bool, 1.25)[0] for k in keys)
    assert moved < 300, "adding one replica of six moves about a sixth of the sessions"


async def test_x_session_id_pins_calls_through_the_gateway(sim_factory, gateway_factory) -> None:
    sims = [await sim_factory(name=f"r{i}") for i in range(3)]
    gw = await gateway_factory(gateway_config([deployment("pool", [s.base_url for s in sims])]))
    client = gw.client()
    for _ in range(6):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_headers={"x-session-id": "chat-42"})
    assert sorted(s.stats.requests for s in sims) == [0, 0, 6]
    for i in range(30):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"other {i}"}])
    assert all(s.stats.requests > 0 for s in sims), "prompt-prefix hashing spreads different prompts"


async def test_fallback_alias_answers_when_the_model_fails(sim_factory, gateway_factory) -> None:
    bad = await sim_factory(name="bad", fault="error_500")
    hosted = await sim_factory(name="hosted", models=("gpt-4o-mini",))
    config = gateway_config(models=[
        {"alias": MODEL, "fallbacks": ["gpt-4o-mini"], "deployments": [deployment("bad", bad.base_url)]},
        {"alias": "gpt-4o-mini", "deployments": [{"name": "hosted", "model": "gpt-4o-mini",
                                                  "api_base": hosted.base_url}]},
    ])
    gw = await gateway_factory(config)
    reply = await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.model == "gpt-4o-mini"
    [call] = gw.calls()
    assert call["fallbacks"] == ["gpt-4o-mini"] and call["attempts"] == 4  # 1 + 2 retries, then the fallback


def test_a_wildcard_pattern_is_compiled_once_not_per_request() -> None:
    pattern_regex.cache_clear()
    for _ in range(3):
        assert match(["openai/*"], "openai/gpt-4o") == ("openai/*", ("gpt-4o",))
    assert pattern_regex.cache_info().misses == 1 and pattern_regex("openai/*") is pattern_regex("openai/*")
