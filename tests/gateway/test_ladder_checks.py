"""The answer checks a ladder escalates on (routing/checks.py), the `ladders:` config's errors (config/ladders.py),
and how a rung's error is classified (routing/ladder.py `escalation`)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.config.errors import ConfigError
from gateway.config.ladders import ESCALATE_ON
from gateway.config.native import parse_native
from gateway.http.errors import GatewayError
from gateway.observability.usage import CallRecord
from gateway.routing.checks import ANY, failed_check, streamed_answer, wanted, whole_answer
from gateway.routing.ladder import escalation
from gateway.sim.structured import instance

ALL = frozenset(ESCALATE_ON)
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"]}
AS_SCHEMA = {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}}


def chat_answer(content: Any, finish: str = "stop", **message: Any) -> bytes:
    return orjson.dumps({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": finish}]})


def sse(*deltas: dict[str, Any], finish: str = "stop") -> bytes:
    out = b""
    for i, delta in enumerate(deltas):
        reason = finish if i == len(deltas) - 1 else None
        out += b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}) + b"\n\n"
    return out + b"data: [DONE]\n\n"


@pytest.mark.parametrize(("content", "expected"), [
    ('{"n": 3}', None),
    ('{"n": -1}', "invalid_json"),  # valid JSON the schema refuses
    ('{"n": "three"}', "invalid_json"),
    ('{"n": 3', "invalid_json"),  # cut short
    ("Sure! Here is the JSON", "invalid_json"),
    ("", "empty"),
    ("   \n", "empty"),
])
def test_a_json_schema_answer_is_checked_against_its_schema(content: str, expected: str | None) -> None:
    failed = failed_check(whole_answer(chat_answer(content)), wanted(AS_SCHEMA), ALL)
    assert (failed[0] if failed else None) == expected


def test_the_reason_names_where_the_schema_failed() -> None:
    failed = failed_check(whole_answer(chat_answer('{"n": -1}')), wanted(AS_SCHEMA), ALL)
    assert failed is not None and "at n:" in failed[1] and "minimum" in failed[1]


def test_json_object_needs_an_object() -> None:
    want = wanted({"response_format": {"type": "json_object"}})
    assert failed_check(whole_answer(chat_answer('{"a": 1}')), want, ALL) is None
    assert failed_check(whole_answer(chat_answer("[1, 2]")), want, ALL)[0] == "invalid_json"  # type: ignore[index]
    assert failed_check(whole_answer(chat_answer("[1, 2]")), ANY, ALL) is None, "no JSON asked: any text will do"


def test_length_comes_first_and_checks_left_out_do_not_fire() -> None:
    cut = whole_answer(chat_answer('{"n": ', finish="length"))
    assert failed_check(cut, wanted(AS_SCHEMA), ALL)[0] == "length"  # type: ignore[index]
    assert failed_check(cut, wanted(AS_SCHEMA), frozenset({"invalid_json"}))[0] == "invalid_json"  # type: ignore[index]
    assert failed_check(cut, wanted(AS_SCHEMA), frozenset({"error"})) is None


def test_tool_calls_are_an_answer_not_an_empty_one() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert failed_check(whole_answer(chat_answer(None, "tool_calls", tool_calls=calls)), wanted(AS_SCHEMA), ALL) \
        is None


def test_every_choice_is_checked_and_completions_read_their_text() -> None:
    body = orjson.dumps({"choices": [{"index": 0, "text": "fine", "finish_reason": "stop"},
                                     {"index": 1, "text": "", "finish_reason": "stop"}]})
    assert failed_check(whole_answer(body), ANY, ALL) == ("empty", "choice 1 has no content")
    assert failed_check(whole_answer(b"not json"), ANY, ALL) == ("empty", "the answer holds no choices")


def test_a_buffered_stream_adds_up_to_its_text_and_finish_reason() -> None:
    stream = sse({"role": "assistant", "content": ""}, {"content": '{"n"'}, {"content": ": 3}"})
    answer = streamed_answer(stream)
    assert answer is not None and answer.choices[0].text == '{"n": 3}'
    assert failed_check(answer, wanted(AS_SCHEMA), ALL) is None
    cut = streamed_answer(sse({"content": '{"n"'}, finish="length"))
    assert failed_check(cut, wanted(AS_SCHEMA), ALL)[0] == "length"  # type: ignore[index]
    assert streamed_answer(b"data: [DONE]\n\n") is None


def test_a_schema_that_is_not_one_is_the_callers_400() -> None:
    bad = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}}
    with pytest.raises(GatewayError) as refused:
        wanted(bad)
    assert refused.value.status == 400 and refused.value.param == "response_format.json_schema.schema"


def test_the_simulators_json_is_valid_against_the_schema_it_was_asked_for() -> None:
    import jsonschema

    properties = {"tags": {"type": "array", "items": {"enum": ["a", "b"]}}, "ok": {"type": ["boolean", "null"]},
                  "x": {"anyOf": [{"type": "number"}]}}
    schema = {"type": "object", "properties": properties}
    jsonschema.validate(instance(schema), schema)


@pytest.mark.parametrize(("error", "attempts", "outcome"), [
    (GatewayError(500, "boom", "internal_server_error"), 1, "error"),
    (GatewayError(503, "none", "service_unavailable"), 1, "error"),
    (GatewayError(408, "slow", "timeout_error"), 1, "timeout"),
    (GatewayError(504, "slow", "timeout_error"), 1, "timeout"),
    (GatewayError(429, "No deployments available", "throttling_error"), 0, "circuit_open"),
    (GatewayError(429, "upstream busy", "throttling_error"), 2, "error"),
    (GatewayError(429, "Rate limit reached for this key", "rate_limit_error"), 0, None),
    (GatewayError(422, "Budget has been exceeded!", "budget_exceeded"), 0, None),
    (GatewayError(400, "bad", "invalid_request_error"), 0, None),
    (GatewayError(403, "pinned elsewhere", "permission_error"), 0, None),
    (GatewayError(403, "no", "key_model_access_denied"), 0, "not_allowed"),
    (GatewayError(400, "maximum context length", "invalid_request_error", None, "context_length_exceeded"), 1,
     "error"),
    (GatewayError(403, "no deployment in zone", "permission_error", "model", "residency_unavailable"), 0,
     "skipped:residency"),
])
def test_which_rung_errors_escalate(error: GatewayError, attempts: int, outcome: str | None) -> None:
    assert escalation(error, CallRecord("r", attempts=attempts)) == outcome


MODELS = [{"alias": a, "deployments": [{"name": f"{a}-d", "model": "m", "api_base": "http://127.0.0.1:9/v1"}]}
          for a in ("small", "large")]


@pytest.mark.parametrize(("ladder", "extra", "message"), [
    ({"rungs": ["small", "huge"]}, {}, "ladders[auto].rungs: 'huge' is not a model alias"),
    ({"alias": "small"}, {}, "ladders[small].alias: 'small' is also a model alias"),
    ({}, {"model_aliases": {"auto": {"model": "small"}}}, "ladders[auto].alias: 'auto' is also a model_aliases name"),
    ({"rungs": ["small"]}, {}, "ladders[0].rungs: a ladder needs at least two rungs"),
    ({"rungs": ["small", "small"]}, {}, "ladders[0].rungs: a rung is listed twice"),
    ({"escalate_on": ["error", "slow"]}, {}, "ladders[0].escalate_on: 'slow' is not a reason to escalate"),
    ({"rules": [{"tools": True, "start_at": "huge"}]}, {},
     "ladders[auto].rules[0].start_at: 'huge' is not one of this ladder's rungs (large, small)"),
    ({"rules": [{"start_at": "large"}]}, {}, "ladders[0].rules[0]: a rule has exactly one condition"),
    ({"pins": {"keys": {"ingest": "huge"}}}, {}, "ladders[auto].pins.keys.ingest: 'huge' is not one of"),
    ({"pins": {"teams": {"research": "medium"}}}, {}, "ladders[auto].pins.teams.research: 'medium' is not one of"),
    ({"escalate": ["error"]}, {}, "ladders[0].escalate: unknown field"),
    ({"rungs": ["small", "openai/*"]}, {"models": [*MODELS, {"alias": "openai/*", "deployments": [
        {"name": "o", "model": "*", "api_base": "http://127.0.0.1:9/v1"}]}]},
     "ladders[auto].rungs: 'openai/*' is a wildcard alias; a rung names one model"),
])
def test_config_errors_name_the_field(ladder: dict[str, Any], extra: dict[str, Any], message: str) -> None:
    doc = {"version": 1, "models": MODELS, "ladders": [{"alias": "auto", "rungs": ["small", "large"], **ladder}],
           **extra}
    with pytest.raises(ConfigError) as refused:
        parse_native(doc)
    assert message in str(refused.value)


def test_a_ladder_defined_twice_is_refused_and_a_good_one_loads() -> None:
    good = {"alias": "auto", "rungs": ["small", "large"]}
    with pytest.raises(ConfigError, match=r"ladders\[auto\].alias: 'auto' is defined twice"):
        parse_native({"version": 1, "models": MODELS, "ladders": [good, good]})
    [ladder] = parse_native({"version": 1, "models": MODELS, "ladders": [good]}).ladders
    assert ladder.escalate_on == list(ESCALATE_ON) and ladder.rules == []


def test_the_native_example_has_a_ladder(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config.loading import load_config
    from tests.gateway.test_config import ENV, EXAMPLES

    for name in ENV:
        monkeypatch.setenv(name, f"value-of-{name}")
    [ladder] = load_config(EXAMPLES / "native.yaml").ladders
    assert ladder.alias == "auto" and ladder.rungs == ["llama-3.1-8b", "gpt-4o-mini"]


def big_schema(properties: int, variant: int = 0) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "big", "schema": {
        "type": "object", "description": f"variant {variant}",
        "properties": {f"field_{i:06d}": {"type": "string"} for i in range(properties)}}}}}


async def test_a_large_schema_is_checked_off_the_event_loop_and_not_kept() -> None:
    import asyncio
    import time

    from gateway.routing import checks

    checks._cache.clear()
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    want = await checks.checked(big_schema(2000))  # about 66 KB: the meta-schema check takes most of a second
    took = time.perf_counter() - started
    ticking.cancel()
    assert want.kind == "json_schema" and want.validator is not None
    assert gaps, "the event loop never ran during the check"
    assert max(gaps) < max(0.3, took / 2), f"the event loop stalled {max(gaps):.2f}s of a {took:.2f}s check"
    assert failed_check(whole_answer(chat_answer('{"field_000001": 1}')), want, ALL)[0] == "invalid_json"  # type: ignore[index]
    assert not checks._cache, "a schema over CACHED_SCHEMA_BYTES is not kept"
    await checks.checked(AS_SCHEMA)
    assert len(checks._cache) == 1 and (await checks.checked(AS_SCHEMA)).validator is checks._cache[next(iter(
        checks._cache))], "a usual schema is checked once, then served from the cache"


def test_a_schema_too_large_to_check_asks_for_json_only() -> None:
    want = wanted(big_schema(9000))  # over CHECKED_SCHEMA_BYTES: never given to the meta-schema check
    assert want.kind == "json" and want.validator is None
    assert failed_check(whole_answer(chat_answer('{"anything": 1}')), want, ALL) is None
    assert failed_check(whole_answer(chat_answer('{"cut": ')), want, ALL)[0] == "invalid_json"  # type: ignore[index]
