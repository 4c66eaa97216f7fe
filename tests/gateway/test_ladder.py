"""Ladders with the official openai client: the cheap rung answers at the cheap price, a failed answer or a failed
rung escalates, and every rung tried is a spend row (gateway/routing/ladder.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
import openai
import orjson
import pytest

from tests.gateway.conftest import KEY, MODEL, closed_port_url, deployment, gateway_config
from tests.gateway.test_keys_admin import admin

MESSAGES = [{"role": "user", "content": "Say hello to the gateway"}]
CHEAP, BIG = "llama-3-1-8b", "llama-3-3-70b"
CHEAP_PRICE, BIG_PRICE = (0.000001, 0.000002), (0.001, 0.002)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
          "required": ["city", "population"], "additionalProperties": False}
AS_SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}


def ladder_config(cheap: str, big: str, tmp_path: Path, ladder: dict[str, Any] | None = None,
                  cheap_extra: dict[str, Any] | None = None, **gateway: Any) -> dict[str, Any]:
    """Two priced models, an `auto` ladder over them, and a SQLite ledger so spend can be read back."""
    gateway.setdefault("retries", {"attempts": 0})
    config = gateway_config(models=[
        {"alias": CHEAP, "deployments": [deployment("cheap-a", cheap, **(cheap_extra or {}))],
         "input_cost_per_token": CHEAP_PRICE[0], "output_cost_per_token": CHEAP_PRICE[1]},
        {"alias": BIG, "deployments": [deployment("big-a", big)],
         "input_cost_per_token": BIG_PRICE[0], "output_cost_per_token": BIG_PRICE[1]}], **gateway)
    config["ladders"] = [{"alias": "auto", "rungs": [CHEAP, BIG], **(ladder or {})}]
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                        "flush_interval": 0.05}
    return config


def price(usage: Any, rung: tuple[float, float]) -> float:
    return float(usage.prompt_tokens * rung[0] + usage.completion_tokens * rung[1])


async def spend_rows(gw: Any, tmp_path: Path) -> list[dict[str, Any]]:
    """The ledger's spend rows, oldest first, once every record the gateway holds is flushed."""
    await gw.state.governance.ledger.flush()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT request_id, model, deployment, status, cost FROM llmp_spend "
                                            "ORDER BY ts, request_id")]


async def chat(gw: Any, **kwargs: Any) -> Any:
    """One ladder call: (headers, parsed answer)."""
    kwargs.setdefault("model", "auto")
    kwargs.setdefault("messages", MESSAGES)
    client = gw.client(api_key=kwargs.pop("api_key", KEY))
    raw = await client.chat.completions.with_raw_response.create(**kwargs)
    return raw.headers, raw.parse()


async def metric(gw: Any, line_start: str) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


async def test_the_cheap_rung_answers_at_the_cheap_price(gateway_factory, sim_factory, tmp_path) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    headers, reply = await chat(gw, extra_headers={"x-request-id": "call-1"})
    assert headers["x-llmp-route"] == f"{CHEAP}=answered"
    assert reply.model == CHEAP, "the answer names the rung that answered"
    assert headers["x-litellm-model-id"] == "cheap-a"
    assert float(headers["x-litellm-response-cost"]) == pytest.approx(price(reply.usage, CHEAP_PRICE))
    assert (cheap.stats.requests, big.stats.requests) == (1, 0)
    assert cheap.stats.bodies[-1]["model"] == MODEL, "the rung's upstream model is sent, never the ladder's name"
    [row] = await spend_rows(gw, tmp_path)
    assert row["request_id"] == "call-1" and row["model"] == CHEAP and row["deployment"] == "cheap-a"
    assert row["cost"] == pytest.approx(price(reply.usage, CHEAP_PRICE))
    [call] = await gw.logged_calls(1)
    assert call["route"] == f"{CHEAP}=answered" and call["model"] == CHEAP and call["request_id"] == "call-1"
    assert await metric(gw, 'llmp_ladder_answers_total{ladder="auto",rung="llama-3-1-8b"}') == 1


@pytest.mark.parametrize("misbehave", ["bad-json", "bad-schema"])
async def test_json_that_fails_the_schema_escalates_and_valid_json_comes_back(gateway_factory, sim_factory, tmp_path,
                                                                            misbehave) -> None:
    cheap = await sim_factory(name="cheap", misbehave={MODEL: misbehave})
    big = await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    headers, reply = await chat(gw, response_format=AS_SCHEMA, extra_headers={"x-request-id": "call-2"})
    assert headers["x-llmp-route"] == f"{CHEAP}=invalid_json,{BIG}=answered"
    jsonschema.validate(orjson.loads(reply.choices[0].message.content), SCHEMA)
    assert reply.model == BIG and headers["x-litellm-model-id"] == "big-a"
    assert (headers["x-litellm-model-group"], headers["x-litellm-attempted-fallbacks"]) == (BIG, "0"), \
        "the answering rung's LiteLLM headers, none of the rung escalated from"
    assert float(headers["x-litellm-response-cost"]) == pytest.approx(price(reply.usage, BIG_PRICE))
    rows = {r["request_id"]: r for r in await spend_rows(gw, tmp_path)}
    assert set(rows) == {"call-2:rung1", "call-2"}, "every rung tried is a spend row"
    assert (rows["call-2:rung1"]["model"], rows["call-2:rung1"]["deployment"]) == (CHEAP, "cheap-a")
    assert rows["call-2:rung1"]["cost"] > 0, "the cheap rung's tokens are paid for too"
    assert (rows["call-2"]["model"], rows["call-2"]["deployment"]) == (BIG, "big-a")
    calls = {c["request_id"]: c for c in await gw.logged_calls(2)}
    assert calls["call-2:rung1"]["route"] == f"{CHEAP}=invalid_json"
    assert calls["call-2:rung1"]["error"].startswith("invalid_json: choice 0:")
    assert calls["call-2"]["route"] == f"{CHEAP}=invalid_json,{BIG}=answered"
    reason = 'llmp_ladder_escalations_total{from_rung="llama-3-1-8b",ladder="auto",reason="invalid_json"}'
    assert await metric(gw, reason) == 1


async def test_json_object_that_is_not_an_object_escalates(gateway_factory, sim_factory, tmp_path) -> None:
    cheap = await sim_factory(name="cheap", misbehave={MODEL: "bad-json"})
    gw = await gateway_factory(ladder_config(cheap.base_url, (await sim_factory(name="big")).base_url, tmp_path))
    headers, reply = await chat(gw, response_format={"type": "json_object"})
    assert headers["x-llmp-route"] == f"{CHEAP}=invalid_json,{BIG}=answered"
    assert isinstance(orjson.loads(reply.choices[0].message.content), dict)


@pytest.mark.parametrize("misbehave", ["length", "empty"])
async def test_a_cut_short_or_empty_answer_escalates(gateway_factory, sim_factory, tmp_path, misbehave) -> None:
    cheap = await sim_factory(name="cheap", misbehave={MODEL: misbehave})
    big = await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    headers, reply = await chat(gw)
    assert headers["x-llmp-route"] == f"{CHEAP}={misbehave},{BIG}=answered"
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content.strip()
    assert len(await spend_rows(gw, tmp_path)) == 2


async def test_escalate_on_leaves_out_what_the_ladder_should_not_escalate_on(gateway_factory, sim_factory,
                                                                           tmp_path) -> None:
    cheap = await sim_factory(name="cheap", misbehave={MODEL: "length"})
    big = await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path,
                                             {"escalate_on": ["error", "empty"]}))
    headers, reply = await chat(gw)
    assert headers["x-llmp-route"] == f"{CHEAP}=answered" and reply.choices[0].finish_reason == "length"
    assert big.stats.requests == 0


async def test_the_last_rung_answers_whatever_its_checks_say(gateway_factory, sim_factory, tmp_path) -> None:
    cheap = await sim_factory(name="cheap", misbehave={MODEL: "empty"})
    big = await sim_factory(name="big", misbehave={MODEL: "empty"})
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    headers, reply = await chat(gw)
    assert headers["x-llmp-route"] == f"{CHEAP}=empty,{BIG}=answered" and reply.choices[0].message.content == ""


async def test_an_erroring_or_dead_cheap_rung_escalates(gateway_factory, sim_factory, tmp_path) -> None:
    broken, big = await sim_factory(name="cheap", fault="error_500"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(broken.base_url, big.base_url, tmp_path))
    headers, reply = await chat(gw, extra_headers={"x-request-id": "call-3"})
    assert headers["x-llmp-route"] == f"{CHEAP}=error,{BIG}=answered" and reply.model == BIG
    rows = await spend_rows(gw, tmp_path)
    assert [r["request_id"] for r in rows] == ["call-3"], "a rung that failed without an answer used no tokens"
    calls = {c["request_id"]: c for c in await gw.logged_calls(2)}
    assert calls["call-3:rung1"]["status"] == 500 and "simulated engine failure" in calls["call-3:rung1"]["error"]

    dead = await gateway_factory(ladder_config(closed_port_url(), big.base_url, tmp_path / "dead"))
    headers, reply = await chat(dead)
    assert headers["x-llmp-route"] == f"{CHEAP}=error,{BIG}=answered" and reply.model == BIG


async def test_a_timeout_and_an_open_circuit_escalate_by_name(gateway_factory, sim_factory, tmp_path) -> None:
    hung, big = await sim_factory(name="cheap", fault="hang_before_headers"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(hung.base_url, big.base_url, tmp_path,
                                             cheap_extra={"timeouts": {"total": 0.3}},
                                             circuit_breaker={"failures": 1, "cooldown": 60}))
    headers, _ = await chat(gw)
    assert headers["x-llmp-route"] == f"{CHEAP}=timeout,{BIG}=answered"
    headers, _ = await chat(gw)  # the cheap replica's circuit opened on that failure: nothing is tried there
    assert headers["x-llmp-route"] == f"{CHEAP}=circuit_open,{BIG}=answered"
    assert hung.stats.requests == 1


async def test_the_callers_own_refusals_are_not_escalated(gateway_factory, sim_factory, tmp_path) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    _, capped = await admin(gw, "POST", "/key/generate", {"max_tokens": 16})
    with pytest.raises(openai.BadRequestError, match="over the key cap") as refused:
        await chat(gw, api_key=capped["key"], max_tokens=100)
    assert big.stats.requests == 0, "a request the cheap rung refuses as the caller's mistake goes back to it"
    assert "x-llmp-route" not in refused.value.response.headers
    _, made = await admin(gw, "POST", "/key/generate", {"max_budget": 0.0000001})
    await chat(gw, api_key=made["key"])  # spends the budget
    await gw.state.governance.ledger.flush()
    with pytest.raises(openai.UnprocessableEntityError, match="Budget has been exceeded") as refused:
        await chat(gw, api_key=made["key"])
    assert "x-llmp-route" not in refused.value.response.headers, "the caller's budget is not a rung's failure"
    assert big.stats.requests == 0


async def test_a_prompt_over_the_cheap_rungs_context_window_escalates(gateway_factory, sim_factory, tmp_path) -> None:
    too_long = "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens."
    short = await sim_factory(name="cheap", fault="error_500", error_status=400, error_message=too_long)
    big = await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(short.base_url, big.base_url, tmp_path))
    headers, reply = await chat(gw, extra_headers={"x-request-id": "long"})
    assert headers["x-llmp-route"] == f"{CHEAP}=error,{BIG}=answered" and reply.model == BIG
    calls = {c["request_id"]: c for c in await gw.logged_calls(2)}
    assert "maximum context length" in calls["long:rung1"]["error"]
    _, lower = await admin(gw, "POST", "/key/generate", {"models": ["auto", CHEAP]})
    with pytest.raises(openai.BadRequestError, match="maximum context length") as refused:
        await chat(gw, api_key=lower["key"])  # no rung above it may take the prompt: the rung's 400 as it is
    assert refused.value.code == "context_length_exceeded"


async def test_a_ladder_serves_chat_and_completions_only(gateway_factory, sim_factory, tmp_path) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    reply = await gw.client().completions.create(model="auto", prompt="Once upon a time", max_tokens=20)
    assert reply.model == CHEAP
    with pytest.raises(openai.BadRequestError, match="is a ladder of models"):
        await gw.client().embeddings.create(model="auto", input="hello")
