"""Whether a rung's answer is good enough to send: the checks a ladder escalates on (`invalid_json`, `length`,
`empty`), on a whole JSON answer or on a buffered stream of chat/completions chunks.

`response_format` is OpenAI's (https://platform.openai.com/docs/api-reference/chat/create#chat-create-
response_format): `{"type": "json_object"}` asks for a JSON object, `{"type": "json_schema", "json_schema":
{"name", "schema", "strict"}}` for JSON that validates against `schema`. vLLM honours both with guided decoding
(docs.vllm.ai/en/latest/features/structured_outputs.html), but a small model without it, or one cut short, answers
text that is not the JSON asked for: that is what `invalid_json` catches. Schemas are checked with `jsonschema`
(python-jsonschema.readthedocs.io), the reference implementation, with the draft the schema's `$schema` names
(2020-12 when it names none).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import orjson
from jsonschema.exceptions import SchemaError

from gateway.http.errors import bad_request


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a request asks its answer to be: JSON (an object, or valid against a schema), or anything."""

    kind: str  # "" (no JSON asked), "json_object", "json_schema", or "json" (any JSON: a schema too large to check)
    validator: Any = None  # jsonschema's validator for json_schema

    @property
    def json(self) -> bool:
        return bool(self.kind)


ANY = Wanted("")
JSON = Wanted("json")  # valid JSON of any kind: a schema too large to check on the request path
# jsonschema's meta-schema check is pure Python at about 15 us per byte of schema (4.26, draft 2020-12: 2 s for a
# 160 KB schema of 5,000 properties), so it never runs on the event loop: a schema not seen before is checked in a
# worker thread (`checked`). OpenAI's structured outputs take at most 5,000 properties and 120,000 characters of names
# (developers.openai.com/api/docs/guides/structured-outputs#supported-schemas); a schema over CHECKED_SCHEMA_BYTES
# (as sorted JSON) is beyond that: its answers are checked as JSON only.
CHECKED_SCHEMA_BYTES = 256 * 1024
CACHED_SCHEMA_BYTES = 64 * 1024  # only schemas up to this size are kept: 256 of them hold at most 16 MiB of keys
_SCHEMA = "response_format.json_schema.schema"


def wanted(body: dict[str, Any]) -> Wanted:
    """The request's `response_format` (a schema checked here, on the caller's thread); a schema that is not a
    schema is the client's 400, naming the field."""
    found = _asked(body)
    return found if isinstance(found, Wanted) else _compiled(found)


async def checked(body: dict[str, Any]) -> Wanted:
    """`wanted`, for the request path: a schema not cached yet is checked in a worker thread, off the event loop."""
    found = _asked(body)
    if isinstance(found, Wanted):
        return found
    with _lock:
        validator = _cache.get(found)
    if validator is not None:
        return Wanted("json_schema", validator)
    return await asyncio.to_thread(_compiled, found)


def _asked(body: dict[str, Any]) -> Wanted | bytes:
    """What `response_format` asks for, or the schema (as sorted JSON) when it names one."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return ANY
    kind = fmt.get("type")
    if kind == "json_object":
        return Wanted("json_object")
    if kind != "json_schema":
        return ANY
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if schema is None:
        return Wanted("json_object")  # a json_schema without one: at least it must be JSON
    if not isinstance(schema, (dict, bool)):
        raise bad_request("`response_format.json_schema.schema` must be a JSON Schema object.", _SCHEMA)
    text = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    return JSON if len(text) > CHECKED_SCHEMA_BYTES else text


def _compiled(schema: bytes) -> Wanted:
    with _lock:
        validator = _cache.get(schema)
    if validator is None:
        try:
            validator = _build(schema)
        except SchemaError as exc:
            raise bad_request(f"`response_format.json_schema.schema` is not a valid JSON Schema: "
                              f"{exc.message[:200]}", _SCHEMA) from None
        if len(schema) <= CACHED_SCHEMA_BYTES:
            with _lock:
                _cache[schema] = validator
                while len(_cache) > 256:
                    _cache.popitem(last=False)
    return Wanted("json_schema", validator)


# Validators by schema, oldest first: a client sends the same schema call after call. Read on the event loop, written
# from worker threads too.
_cache: OrderedDict[bytes, Any] = OrderedDict()
_lock = threading.Lock()


def _build(schema: bytes) -> Any:
    """A schema's validator, the schema checked against its draft's meta-schema first."""
    value = orjson.loads(schema)
    cls = jsonschema.validators.validator_for(value, default=jsonschema.Draft202012Validator)
    cls.check_schema(value)
    return cls(value)


@dataclass(slots=True)
class Choice:
    """One choice of an answer, as far as the checks read it."""

    text: str = ""
    finish_reason: str | None = None
    tool_calls: bool = False  # an answer that calls tools is not empty, and is not the JSON text asked for


@dataclass(slots=True)
class Answer:
    choices: dict[int, Choice] = field(default_factory=dict)

    def choice(self, index: Any) -> Choice:
        key = index if isinstance(index, int) else 0
        found = self.choices.get(key)
        if found is None:
            found = self.choices[key] = Choice()
        return found


def whole_answer(body: bytes) -> Answer | None:
    """A chat or completions answer's choices; None when it is not one (then no check applies)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        return None
    answer = Answer()
    for item in choices:
        if not isinstance(item, dict):
            continue
        choice = answer.choice(item.get("index"))
        message = item.get("message")
        text = message.get("content") if isinstance(message, dict) else item.get("text")
        choice.text = text if isinstance(text, str) else ""
        calls = message.get("tool_calls") or message.get("function_call") if isinstance(message, dict) else None
        choice.tool_calls = bool(calls)
        reason = item.get("finish_reason")
        choice.finish_reason = reason if isinstance(reason, str) else None
    return answer


def streamed_answer(data: bytes) -> Answer | None:
    """The choices a buffered SSE stream of chat/completions chunks adds up to; None when it holds none."""
    answer = Answer()
    seen = False
    for line in data.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]" or not payload:
            continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        choices = obj.get("choices") if isinstance(obj, dict) else None
        for item in choices if isinstance(choices, list) else ():
            if not isinstance(item, dict):
                continue
            seen = True
            choice = answer.choice(item.get("index"))
            delta = item.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else item.get("text")
            if isinstance(text, str):
                choice.text += text
            if isinstance(delta, dict) and (delta.get("tool_calls") or delta.get("function_call")):
                choice.tool_calls = True
            reason = item.get("finish_reason")
            if isinstance(reason, str):
                choice.finish_reason = reason
    return answer if seen else None


def failed_check(answer: Answer | None, want: Wanted, escalate_on: frozenset[str]) -> tuple[str, str] | None:
    """The first check the answer fails, as (outcome, why), among those the ladder escalates on; else None.

    Order: `length` first (a cut-short answer is also invalid JSON, and `length` says why), then `empty`, then
    `invalid_json`. Every choice is checked (a request with `n` > 1 gets all its choices from one rung)."""
    if answer is None or not answer.choices:
        return ("empty", "the answer holds no choices") if "empty" in escalate_on else None
    for index, choice in sorted(answer.choices.items()):
        if "length" in escalate_on and choice.finish_reason == "length":
            return "length", f"choice {index} stopped at the token limit (finish_reason length)"
        if "empty" in escalate_on and not choice.text.strip() and not choice.tool_calls:
            return "empty", f"choice {index} has no content"
        if "invalid_json" in escalate_on and want.json and not choice.tool_calls:
            why = json_problem(choice.text, want)
            if why is not None:
                return "invalid_json", f"choice {index}: {why}"
    return None


def json_problem(text: str, want: Wanted) -> str | None:
    """Why `text` is not the JSON `want` asks for, or None."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({str(exc)[:80]})"
    if want.kind == "json_object" and not isinstance(value, dict):
        return f"JSON but not an object ({type(value).__name__})"
    if want.validator is not None:
        try:
            error = jsonschema.exceptions.best_match(want.validator.iter_errors(value))
        except RecursionError:
            # A `$ref` that loops back without consuming the instance (`{"$ref": "#"}`) passes the meta-schema yet
            # recurses without end in jsonschema: the answer cannot be shown to match, as no answer could.
            return "the schema could not be applied: a `$ref` in it loops without end"
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            return f"does not match the schema at {where}: {error.message[:160]}"
    return None
