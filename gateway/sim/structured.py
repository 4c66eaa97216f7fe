"""Structured answers of the simulator: JSON for a `response_format`, and the misbehaviours a ladder escalates on.

vLLM answers `response_format` with guided decoding (docs.vllm.ai/en/latest/features/structured_outputs.html): a
JSON object, or JSON valid against `json_schema.schema`. The simulator builds the smallest such instance from the
schema (`instance`). `misbehave` makes a model answer as a weak or cut-short one does: `bad-json` (JSON cut in
half), `bad-schema` (a JSON object the schema refuses), `length` (finish_reason length), `empty` (no content).
"""

from __future__ import annotations

import math
from typing import Any

import orjson

MISBEHAVIOURS = ("bad-json", "bad-schema", "length", "empty")


def instance(schema: Any) -> Any:
    """A value valid against the usual subset of JSON Schema (types, properties, items, enum, const, anyOf)."""
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return instance(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        return {} if not isinstance(props, dict) else {name: instance(sub) for name, sub in props.items()}
    if kind == "array":
        return [instance(schema.get("items"))] * max(1, int(schema.get("minItems", 1)))
    return {"string": "The gateway", "integer": 1, "number": 1.5, "boolean": True, "null": None}.get(
        kind if isinstance(kind, str) else "", {})


def shaped(body: dict[str, Any], n: int, finish: str, misbehave: str | None) -> tuple[list[str] | None, str]:
    """The answer's text in `n` pieces (None: the simulator's usual words) and its finish reason."""
    if misbehave == "length":
        return None, "length"
    if misbehave == "empty":
        return [""] * n, finish
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("json_object", "json_schema"):
        return None, finish
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    value = instance(schema) if schema is not None else {"answer": "The gateway"}
    if misbehave == "bad-schema":
        value = {"unexpected": True} if value != {"unexpected": True} else {"other": 1}
    text = orjson.dumps(value).decode()
    if misbehave == "bad-json":
        text = text[: max(1, len(text) // 2)]
    size = math.ceil(len(text) / n) if n else len(text)
    return [text[i * size:(i + 1) * size] for i in range(n)], finish
