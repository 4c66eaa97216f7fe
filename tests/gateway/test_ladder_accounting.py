"""A ladder's accounting when its checks cannot run as planned, and rungs skipped for their own caps: every rung
tried is paid for and gives its limiter slot back, whatever happened after its answer came (routing/ladder.py)."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

import gateway.routing.ladder as ladder_module
from tests.gateway.test_keys_admin import admin
from tests.gateway.test_ladder import AS_SCHEMA, BIG, CHEAP, MESSAGES, chat, ladder_config, spend_rows

# Passes jsonschema's meta-schema, yet validating anything against it recurses without end.
LOOPING = {"type": "json_schema", "json_schema": {"name": "loop", "schema": {"$ref": "#"}}}


async def one_at_a_time(gw: object) -> str:
    """A key allowed one call in flight: a rung whose limiter slot is never given back locks it out."""
    status, made = await admin(gw, "POST", "/key/generate", {"max_parallel_requests": 1})
    assert status == 200, made
    return str(made["key"])


async def test_a_schema_whose_ref_loops_escalates_instead_of_failing_the_call(gateway_factory, sim_factory,
                                                                              tmp_path) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    key = await one_at_a_time(gw)
    headers, reply = await chat(gw, api_key=key, response_format=LOOPING, extra_headers={"x-request-id": "loop"})
    assert headers["x-llmp-route"] == f"{CHEAP}=invalid_json,{BIG}=answered" and reply.model == BIG
    calls = {c["request_id"]: c for c in await gw.logged_calls(2)}
    assert "loops without end" in calls["loop:rung1"]["error"]
    headers, _ = await chat(gw, api_key=key)
    assert headers["x-llmp-route"] == f"{CHEAP}=answered", "the key's one slot was given back by both rungs"


async def test_a_check_that_breaks_still_pays_for_the_rung_and_frees_its_slot(gateway_factory, sim_factory, tmp_path,
                                                                             monkeypatch) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    key = await one_at_a_time(gw)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug in a check")

    monkeypatch.setattr(ladder_module, "failed_check", broken)
    with pytest.raises(openai.InternalServerError):
        await chat(gw, api_key=key, extra_headers={"x-request-id": "bug"})
    monkeypatch.undo()
    [row] = await spend_rows(gw, tmp_path)
    assert (row["request_id"], row["model"], row["deployment"]) == ("bug", CHEAP, "cheap-a")
    assert row["cost"] > 0, "the rung's answer used tokens: they are charged"
    headers, _ = await chat(gw, api_key=key)
    assert headers["x-llmp-route"] == f"{CHEAP}=answered", "the limiter slot of the rung was given back"
    assert big.stats.requests == 0


async def test_a_rungs_own_caps_skip_it_while_a_rung_above_takes_the_request(gateway_factory, sim_factory,
                                                                             tmp_path) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    config = ladder_config(cheap.base_url, big.base_url, tmp_path)
    config["models"][0].update(max_tokens=16, over_max_tokens="refuse", max_request_bytes=2000)
    gw = await gateway_factory(config)
    headers, reply = await chat(gw, max_tokens=100)
    assert headers["x-llmp-route"] == f"{CHEAP}=skipped:model_cap,{BIG}=answered" and reply.model == BIG
    headers, reply = await chat(gw, messages=[{"role": "user", "content": "long " * 600}])
    assert headers["x-llmp-route"] == f"{CHEAP}=skipped:model_cap,{BIG}=answered"
    headers, reply = await chat(gw, max_tokens=16)
    assert headers["x-llmp-route"] == f"{CHEAP}=answered", "within its caps the cheap rung answers"
    assert cheap.stats.requests == 1
    _, lower = await admin(gw, "POST", "/key/generate", {"models": ["auto", CHEAP]})
    with pytest.raises(openai.BadRequestError, match=r"over the model cap: models\[llama-3-1-8b\].max_tokens"):
        await chat(gw, api_key=lower["key"], max_tokens=100)  # its last usable rung refuses, as it would alone
    assert cheap.stats.requests == 1


async def test_a_client_gone_while_a_rung_is_held_frees_the_upstream_and_the_slot(gateway_factory, sim_factory,
                                                                                  tmp_path) -> None:
    hung = await sim_factory(name="cheap", fault="hang_mid_stream")
    big = await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(hung.base_url, big.base_url, tmp_path,
                                             cheap_extra={"timeouts": {"total": 60, "idle": 60}}))
    key = await one_at_a_time(gw)
    body = {"model": "auto", "messages": MESSAGES, "stream": True, "response_format": AS_SCHEMA}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):  # the cheap rung's stream is held to be checked, and hangs: hang up
                async with http.post(gw.url + "/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {key}", "x-request-id": "gone"}) as resp:
                    await resp.read()
    [call] = await gw.logged_calls(1)
    assert (call["request_id"], call["status"], call["model"]) == ("gone", 499, CHEAP)
    assert [r.in_flight for pool in gw.state.router.pools for r in pool.replicas] == [0, 0]
    assert big.stats.requests == 0
    reply = await gw.client(api_key=key).chat.completions.create(model=BIG, messages=MESSAGES)
    assert reply.model == BIG, "the key's one slot was given back"
    spent = {r["request_id"]: r for r in await spend_rows(gw, tmp_path)}
    assert (spent["gone"]["model"], spent["gone"]["status"]) == (CHEAP, 499), "what the held rung streamed is paid"
    assert spent["gone"]["cost"] > 0


async def test_a_rung_with_no_deployment_in_the_callers_zone_is_skipped(gateway_factory, sim_factory,
                                                                        tmp_path) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    config = ladder_config(cheap.base_url, big.base_url, tmp_path)  # a gateway serving every zone
    config["models"][0]["deployments"][0]["residency"] = "us"
    config["models"][1]["deployments"][0]["residency"] = "eu"
    gw = await gateway_factory(config)
    _, eu = await admin(gw, "POST", "/key/generate", {"residency": "eu"})
    headers, reply = await chat(gw, api_key=eu["key"])
    assert headers["x-llmp-route"] == f"{CHEAP}=skipped:residency,{BIG}=answered" and reply.model == BIG
    assert cheap.stats.requests == 0
    _, us = await admin(gw, "POST", "/key/generate", {"residency": "us"})
    headers, reply = await chat(gw, api_key=us["key"])
    assert headers["x-llmp-route"] == f"{CHEAP}=answered"
    _, apac = await admin(gw, "POST", "/key/generate", {"residency": "apac"})
    with pytest.raises(openai.PermissionDeniedError, match="no deployment in residency zone `apac`") as refused:
        await chat(gw, api_key=apac["key"])
    assert refused.value.response.headers["x-llmp-route"] == f"{CHEAP}=skipped:residency,{BIG}=skipped:residency"
