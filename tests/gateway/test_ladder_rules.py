"""Ladder request rules, pins and model access: which rungs a call starts on, and which it may use at all."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.gateway.conftest import MODEL
from tests.gateway.test_keys_admin import admin
from tests.gateway.test_ladder import BIG, CHEAP, chat, ladder_config, metric, spend_rows

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
RULES = {"rules": [{"prompt_tokens_over": 200, "start_at": BIG}, {"tools": True, "start_at": BIG}],
         "pins": {"keys": {"batch-ingest": CHEAP, "vip": BIG}, "teams": {"research": BIG}}}


@pytest.fixture
async def ruled(gateway_factory, sim_factory, tmp_path) -> Any:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path, RULES))
    gw.sims = (cheap, big)
    return gw


async def test_tools_start_on_the_rung_the_rule_names(ruled) -> None:
    headers, reply = await chat(ruled, tools=TOOLS)
    assert headers["x-llmp-route"] == f"{CHEAP}=skipped:tools,{BIG}=answered" and reply.model == BIG
    assert ruled.sims[0].stats.requests == 0


async def test_a_long_prompt_starts_higher_and_a_short_one_does_not(ruled, tmp_path) -> None:
    headers, _ = await chat(ruled, messages=[{"role": "user", "content": "Summarise this. " + "word " * 200}])
    assert headers["x-llmp-route"] == f"{CHEAP}=skipped:prompt_tokens,{BIG}=answered"
    headers, _ = await chat(ruled)
    assert headers["x-llmp-route"] == f"{CHEAP}=answered"
    assert [r["model"] for r in await spend_rows(ruled, tmp_path)] == [BIG, CHEAP], "a skipped rung costs nothing"


async def test_a_pinned_key_or_team_is_answered_by_its_rung_only(ruled) -> None:
    _, vip = await admin(ruled, "POST", "/key/generate", {"key_alias": "vip"})
    headers, reply = await chat(ruled, api_key=vip["key"])
    assert headers["x-llmp-route"] == f"{BIG}=pinned" and reply.model == BIG
    await admin(ruled, "POST", "/team/new", {"team_id": "research"})
    _, member = await admin(ruled, "POST", "/key/generate", {"team_id": "research"})
    headers, _ = await chat(ruled, api_key=member["key"])
    assert headers["x-llmp-route"] == f"{BIG}=pinned"
    _, ingest = await admin(ruled, "POST", "/key/generate", {"key_alias": "batch-ingest", "team_id": "research"})
    headers, _ = await chat(ruled, api_key=ingest["key"], tools=TOOLS)
    assert headers["x-llmp-route"] == f"{CHEAP}=pinned", "a key's pin wins over its team's and over the rules"


async def test_a_pinned_rung_that_fails_is_not_escalated(gateway_factory, sim_factory, tmp_path) -> None:
    broken, big = await sim_factory(name="cheap", fault="error_500"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(broken.base_url, big.base_url, tmp_path, RULES))
    _, ingest = await admin(gw, "POST", "/key/generate", {"key_alias": "batch-ingest"})
    with pytest.raises(openai.InternalServerError) as failed:
        await chat(gw, api_key=ingest["key"])
    assert failed.value.response.headers["x-llmp-route"] == f"{CHEAP}=error" and big.stats.requests == 0


async def test_rungs_a_key_may_not_use_are_skipped(gateway_factory, sim_factory, tmp_path) -> None:
    cheap = await sim_factory(name="cheap", misbehave={MODEL: "empty"})
    big = await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    _, upper = await admin(gw, "POST", "/key/generate", {"models": ["auto", BIG]})
    headers, reply = await chat(gw, api_key=upper["key"])
    assert headers["x-llmp-route"] == f"{CHEAP}=skipped:not_allowed,{BIG}=answered" and reply.model == BIG
    _, lower = await admin(gw, "POST", "/key/generate", {"models": ["auto", CHEAP]})
    headers, reply = await chat(gw, api_key=lower["key"])
    assert headers["x-llmp-route"] == f"{CHEAP}=answered"
    assert reply.choices[0].message.content == "", "its last usable rung answers whatever its checks say"
    _, only = await admin(gw, "POST", "/key/generate", {"models": ["auto"]})
    with pytest.raises(openai.PermissionDeniedError, match="'auto' is not available") as refused:
        await chat(gw, api_key=only["key"])
    assert refused.value.response.headers["x-llmp-route"] == \
        f"{CHEAP}=skipped:not_allowed,{BIG}=skipped:not_allowed"
    skipped = 'llmp_ladder_escalations_total{from_rung="llama-3-1-8b",ladder="auto",reason="skipped:not_allowed"}'
    assert await metric(gw, skipped) == 2, "the metric's reason is the header's outcome"
    refused_calls = 'llmp_gateway_requests_total{deployment="",model="auto",status="403"}'
    assert await metric(gw, refused_calls) == 1, "a call refused before any rung answered counts under the ladder"
    _, rung_only = await admin(gw, "POST", "/key/generate", {"models": [CHEAP, BIG]})
    with pytest.raises(openai.PermissionDeniedError, match="'auto' is not available"):
        await chat(gw, api_key=rung_only["key"])
    assert big.stats.requests == 1


async def test_models_lists_ladders_to_the_keys_that_may_call_them(ruled) -> None:
    assert [m.id for m in (await ruled.client().models.list()).data] == [CHEAP, BIG, "auto"]
    _, upper = await admin(ruled, "POST", "/key/generate", {"models": ["auto", BIG]})
    assert [m.id for m in (await ruled.client(api_key=upper["key"]).models.list()).data] == [BIG, "auto"]
    _, rungs = await admin(ruled, "POST", "/key/generate", {"models": [CHEAP, BIG]})
    assert [m.id for m in (await ruled.client(api_key=rungs["key"]).models.list()).data] == [CHEAP, BIG]
    _, ladder_only = await admin(ruled, "POST", "/key/generate", {"models": ["auto"]})
    client = ruled.client(api_key=ladder_only["key"])
    assert [m.id for m in (await client.models.list()).data] == [], "a ladder it may use no rung of answers it 403"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("auto")
