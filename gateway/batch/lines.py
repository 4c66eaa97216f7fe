"""A batch's input file read and checked line by line, and the objects the openai client parses (file, batch).

The input format is OpenAI's (https://platform.openai.com/docs/api-reference/batch/request-input): one JSON
object per line, `{"custom_id", "method": "POST", "url", "body"}`; the batch object's fields are those of
`openai.types.Batch` (openai-python src/openai/types/batch.py), the file's those of `openai.types.FileObject`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config.native import GatewayConfig

# The batch endpoint -> the gateway's endpoint name for the request path (gateway/http/handlers.py).
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings", "/v1/completions": "completions"}
MAX_ERRORS = 100  # validation errors listed on a failed batch (the first ones, by line)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class Line:
    number: int  # 1-based, the line's number in the file (blank lines counted), as errors name it
    custom_id: str
    alias: str  # the `tier: batch` model it runs on
    raw: bytes  # the line as uploaded: its body is parsed when it runs (50,000 parsed bodies held at once are GBs)
    refused: dict[str, Any] | None = None  # on a re-read only: why the line can no longer run (it fails with this)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.raw)["body"]
        return body


def error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def batch_alias(config: GatewayConfig, model: str) -> str | None:
    """The `tier: batch` model a line naming `model` runs on: mapped by batch.models, or itself; None if neither."""
    assert config.batch is not None
    mapped = config.batch.models.get(model)
    if mapped is not None:
        return mapped
    found = config.model(model)
    return model if found is not None and found.tier == "batch" else None


def read_lines(data: bytes, url: str, config: GatewayConfig,
               rerun: bool = False) -> tuple[list[Line], list[dict[str, Any]]]:
    """Every line of an input file checked: the lines to run, and the errors (OpenAI fails the whole batch on any).

    `rerun`: the file was validated when the batch started, and is read again to run the lines left (after a
    restart, on a replica with a newer config). Nothing may vanish then: no line cap, and a line this config can no
    longer run (its model gone, or no longer mapped to a batch-tier one) comes back `refused`, to fail as its own
    error, so that every custom_id is still answered once.
    """
    assert config.batch is not None
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    numbered = [(n, raw) for n, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]
    if not rerun and len(numbered) > config.batch.max_lines:
        return [], [error("too_many_requests", f"The input file has {len(numbered)} requests, over this gateway's "
                          f"limit of {config.batch.max_lines} per batch (batch.max_lines).")]
    if not numbered:
        return [], [error("empty_file", "The input file has no requests.")]
    for number, raw in numbered:
        problem = _check(number, raw, url, config, seen)
        if isinstance(problem, Line):
            lines.append(problem)
        elif rerun and problem[0] is not None:
            lines.append(Line(number, problem[0], "", raw, problem[1]))
        elif len(errors) < MAX_ERRORS:
            errors.append(problem[1])
    return lines, errors


def _check(number: int, raw: bytes, url: str, config: GatewayConfig,
           seen: set[str]) -> Line | tuple[str | None, dict[str, Any]]:
    """The line to run, or (its custom_id when it has a usable one, the error)."""
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, error("invalid_json_line", f"Line {number} is not valid JSON.", number)
    if not isinstance(item, dict):
        return None, error("invalid_json_line", f"Line {number} is not a JSON object.", number)
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, error("missing_required_parameter", f"Line {number}: `custom_id` is required (a non-empty "
                           "string).", number, "custom_id")
    if len(custom_id) > 512:
        return None, error("invalid_value", f"Line {number}: `custom_id` is over 512 characters.", number,
                           "custom_id")
    if custom_id in seen:
        return None, error("duplicate_custom_id", f"Line {number}: `custom_id` {custom_id[:80]!r} is used by an "
                           "earlier line; each request needs its own.", number, "custom_id")
    seen.add(custom_id)
    cap = config.gateway.front_door.body_bytes  # as the call would be refused at the door (a 413), so is the line
    if len(raw) > cap:
        return custom_id, error("line_too_large", f"Line {number} is {len(raw)} bytes, over this gateway's limit of "
                                f"{cap} bytes per request (gateway.front_door.body_bytes).", number)
    if item.get("method") != "POST":
        return custom_id, error("invalid_method", f"Line {number}: `method` must be \"POST\".", number, "method")
    if item.get("url") != url:
        return custom_id, error("mismatched_endpoint", f"Line {number}: `url` is {str(item.get('url'))[:80]!r}, but "
                                f"this batch's endpoint is {url!r}; every line must use the batch's endpoint.", number,
                                "url")
    body = item.get("body")
    if not isinstance(body, dict):
        return custom_id, error("missing_required_parameter", f"Line {number}: `body` is required (a JSON object).",
                                number, "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return custom_id, error("missing_required_parameter", f"Line {number}: `body.model` is required.", number,
                                "body.model")
    alias = batch_alias(config, model)
    if alias is None:
        return custom_id, error("model_not_batch_capable", f"Line {number}: model {model[:80]!r} cannot run in a "
                                "batch: name a model with `tier: batch`, or map this one to one in the gateway's "
                                "batch.models.", number, "body.model")
    needed = {"chat": "messages", "embeddings": "input", "completions": "prompt"}[ENDPOINTS[url]]
    if needed not in body:
        return custom_id, error("missing_required_parameter", f"Line {number}: `body.{needed}` is required.", number,
                                f"body.{needed}")
    return Line(number, custom_id, alias, raw)


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": int(row["bytes"]), "created_at": int(row["created_at"]),
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "expires_at": None,
            "status_details": None}


def batch_object(doc: dict[str, Any], counts: tuple[int, int] | None) -> dict[str, Any]:
    """The batch as the openai client parses it; `counts` (completed, failed) from its line rows."""
    done, failed = counts or (0, 0)
    total = max(int(doc.get("total", 0)), done + failed)
    shown = {k: v for k, v in doc.items() if k not in ("total", "owner_user")}
    return {**shown, "request_counts": {"total": total, "completed": done, "failed": failed}}
