"""Streamed ladder calls: escalation only before the first byte, unless the request asks for JSON, whose stream is
then buffered, checked and replayed (routing/ladder.py, routing/replay.py)."""

from __future__ import annotations

from typing import Any

import jsonschema
import openai
import orjson
import pytest

from tests.gateway.conftest import MODEL
from tests.gateway.test_ladder import AS_SCHEMA, BIG, CHEAP, MESSAGES, SCHEMA, ladder_config, spend_rows


async def stream(gw: Any, **kwargs: Any) -> tuple[Any, str, list[Any]]:
    """One streamed ladder call: (headers, the text streamed, the chunks)."""
    raw = await gw.client().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES, stream=True,
                                                                       **kwargs)
    chunks = [chunk async for chunk in raw.parse()]
    return raw.headers, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


async def test_a_failing_rung_escalates_before_the_first_byte(gateway_factory, sim_factory, tmp_path) -> None:
    broken, big = await sim_factory(name="cheap", fault="error_500"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(broken.base_url, big.base_url, tmp_path))
    headers, text, chunks = await stream(gw)
    assert headers["x-llmp-route"] == f"{CHEAP}=error,{BIG}=answered"
    assert text.strip().startswith("The gateway") and {c.model for c in chunks} == {BIG}
    [row] = await spend_rows(gw, tmp_path)
    assert row["model"] == BIG and row["cost"] > 0


async def test_a_json_stream_that_fails_before_its_first_byte_was_not_held(gateway_factory, sim_factory,
                                                                          tmp_path) -> None:
    broken, big = await sim_factory(name="cheap", fault="error_500"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(broken.base_url, big.base_url, tmp_path))
    headers, text, _ = await stream(gw, response_format=AS_SCHEMA)
    assert headers["x-llmp-route"] == f"{CHEAP}=error,{BIG}=answered", "nothing came to hold: not `; buffered`"
    jsonschema.validate(orjson.loads(text), SCHEMA)


async def test_a_stream_is_not_escalated_after_its_first_byte(gateway_factory, sim_factory, tmp_path) -> None:
    cut, big = await sim_factory(name="cheap", fault="truncate_stream"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cut.base_url, big.base_url, tmp_path))
    raw = await gw.client().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES, stream=True)
    assert raw.headers["x-llmp-route"] == f"{CHEAP}=answered", "sent before the stream broke"
    with pytest.raises(openai.APIError, match="upstream closed the stream"):
        _ = [chunk async for chunk in raw.parse()]
    assert big.stats.requests == 0, "bytes were sent: the call stays on the rung that sent them"


async def test_a_stream_is_not_checked_unless_it_asks_for_json(gateway_factory, sim_factory, tmp_path) -> None:
    cheap = await sim_factory(name="cheap", misbehave={MODEL: "length"})
    big = await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    headers, _, chunks = await stream(gw)
    assert headers["x-llmp-route"] == f"{CHEAP}=answered"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


@pytest.mark.parametrize("misbehave", ["bad-json", "bad-schema", "length"])
async def test_a_json_stream_is_buffered_checked_and_replayed(gateway_factory, sim_factory, tmp_path,
                                                             misbehave) -> None:
    cheap = await sim_factory(name="cheap", misbehave={MODEL: misbehave})
    big = await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    headers, text, chunks = await stream(gw, response_format=AS_SCHEMA, extra_headers={"x-request-id": "s-1"})
    reason = "length" if misbehave == "length" else "invalid_json"
    assert headers["x-llmp-route"] == f"{CHEAP}={reason},{BIG}=answered; buffered"
    assert headers["content-type"].startswith("text/event-stream")
    jsonschema.validate(orjson.loads(text), SCHEMA)
    assert {c.model for c in chunks} == {BIG}
    rows = {r["request_id"]: r for r in await spend_rows(gw, tmp_path)}
    assert set(rows) == {"s-1:rung1", "s-1"} and rows["s-1:rung1"]["model"] == CHEAP and rows["s-1"]["model"] == BIG
    calls = {c["request_id"]: c for c in await gw.logged_calls(2)}
    assert calls["s-1"]["route"] == f"{CHEAP}={reason},{BIG}=answered; buffered"


async def test_a_good_json_stream_from_the_cheap_rung_is_replayed_whole(gateway_factory, sim_factory,
                                                                       tmp_path) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path))
    headers, text, chunks = await stream(gw, response_format=AS_SCHEMA, stream_options={"include_usage": True})
    assert headers["x-llmp-route"] == f"{CHEAP}=answered; buffered"
    jsonschema.validate(orjson.loads(text), SCHEMA)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    [row] = await spend_rows(gw, tmp_path)
    assert row["model"] == CHEAP and big.stats.requests == 0


async def test_a_held_streams_time_to_first_token_is_when_the_client_got_it(gateway_factory, sim_factory,
                                                                           tmp_path) -> None:
    cheap = await sim_factory(name="cheap", tokens_per_s=20)  # 8 tokens: some 0.35 s from first to last
    gw = await gateway_factory(ladder_config(cheap.base_url, (await sim_factory(name="big")).base_url, tmp_path))
    headers, _, _ = await stream(gw, response_format=AS_SCHEMA)
    assert headers["x-llmp-route"] == f"{CHEAP}=answered; buffered"
    [call] = await gw.logged_calls(1)
    assert call["ttft_ms"] >= 300, "the first byte left once the whole stream was held and checked"


async def test_a_json_stream_on_the_last_rung_is_not_held(gateway_factory, sim_factory, tmp_path) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path,
                                             {"rules": [{"tools": True, "start_at": BIG}]}))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    headers, text, _ = await stream(gw, response_format=AS_SCHEMA, tools=tools)
    assert headers["x-llmp-route"] == f"{CHEAP}=skipped:tools,{BIG}=answered", "nothing was checked: no buffering"
    jsonschema.validate(orjson.loads(text), SCHEMA)


async def test_a_held_stream_over_the_answer_cap_is_dropped_and_escalated(gateway_factory, sim_factory,
                                                                          tmp_path) -> None:
    cheap, big = await sim_factory(name="cheap"), await sim_factory(name="big")
    # The buffer holds at most upstream_limits.body_bytes (1 KiB here; the sim's JSON stream is some 8 chunks of
    # about 200 bytes): what is past it is dropped, so the held answer cannot be checked, nor sent.
    gw = await gateway_factory(ladder_config(cheap.base_url, big.base_url, tmp_path,
                                             upstream_limits={"body_bytes": 1024}))
    headers, text, chunks = await stream(gw, response_format=AS_SCHEMA, extra_headers={"x-request-id": "big-1"})
    assert headers["x-llmp-route"] == f"{CHEAP}=error,{BIG}=answered; buffered"
    jsonschema.validate(orjson.loads(text), SCHEMA)
    assert {c.model for c in chunks} == {BIG}, "nothing of the dropped stream reached the client"
    calls = {c["request_id"]: c for c in await gw.logged_calls(2)}
    assert calls["big-1:rung1"]["error"] == "error: stream larger than upstream_limits.body_bytes"
    rows = {r["request_id"]: r for r in await spend_rows(gw, tmp_path)}
    assert rows["big-1:rung1"]["model"] == CHEAP and rows["big-1:rung1"]["cost"] > 0, "its tokens are paid for"
