"""What the simulated model answers: OpenAI and Anthropic event streams, token counts, embeddings, errors."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from aiohttp import web

WORDS = (" The", " gateway", " passes", " tokens", " through", " as", " they", " arrive", ".")


def openai_events(
    ident: str, created: int, model: str, n: int, finish: str, usage: dict[str, int], chat: bool, include_usage: bool,
    pieces: list[str] | None = None,
) -> Any:
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {"id": ident, "object": obj, "created": created, "model": model,
                                "choices": [choice] if choice else []}
        if extra:
            data.update(extra)
        return b"data: " + orjson.dumps(data) + b"\n\n"

    if chat:
        yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None})
    for i in range(n):
        word = pieces[i] if pieces is not None else WORDS[i % len(WORDS)]
        last = finish if i == n - 1 else None
        if chat:
            yield chunk({"index": 0, "delta": {"content": word}, "logprobs": None, "finish_reason": last})
        else:
            yield chunk({"index": 0, "text": word, "logprobs": None, "finish_reason": last, "stop_reason": None})
    if include_usage:
        yield chunk(None, {"usage": usage})
    yield b"data: [DONE]\n\n"


def anthropic_events(ident: str, model: str, prompt: int, n: int, stop_reason: str) -> Any:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    yield event("message_start", {"type": "message_start", "message": {
        "id": ident, "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": 1}}})
    yield event("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}})
    yield event("ping", {"type": "ping"})
    for i in range(n):
        yield event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": WORDS[i % len(WORDS)]}})
    yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                  "usage": {"output_tokens": n}})
    yield event("message_stop", {"type": "message_stop"})


def count_tokens(value: Any) -> int:
    """About four characters a token, like the tokenizers most models use."""
    if value is None:
        return 0
    if isinstance(value, str):
        return max(1, len(value) // 4)
    if isinstance(value, list):
        return sum(count_tokens(v.get("content") if isinstance(v, dict) else v) for v in value)
    if isinstance(value, int):
        return 1
    return max(1, len(str(value)) // 4)


def embedding(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0 - 0.5, 6) for b in digest[:dims]]


def error_body(message: str, kind: str, code: int, anthropic: bool = False, legacy: bool = False) -> dict[str, Any]:
    if anthropic:
        kinds = {500: "api_error", 429: "rate_limit_error", 404: "not_found_error"}
        return {"type": "error", "error": {"type": kinds.get(code, kind), "message": message}}
    if legacy:  # vLLM before its ErrorResponse nested the error: the fields at the top, `object: "error"`
        # (vllm/entrypoints/openai/protocol.py@v0.10.0, ErrorResponse{object, message, type, param, code})
        return {"object": "error", "message": message, "type": kind, "param": None, "code": code}
    # OpenAI's shape, which vLLM answers too since its ErrorResponse became `{"error": ErrorInfo}`
    # (vllm/entrypoints/openai/protocol.py: ErrorInfo{message, type, param, code}, code the HTTP status).
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def json_response(data: Any, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
