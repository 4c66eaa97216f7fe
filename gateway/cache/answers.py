"""Cached answers as the client gets them: which answers are kept, a streamed answer assembled from its chunks,
and a stored answer replayed as OpenAI's SSE chunks.

An entry is the whole non-streamed answer (OpenAI's `chat.completion` or `text_completion` object) as bytes, so
one stored answer serves a later call with or without `stream`. The stream replay follows OpenAI's chunk format
(platform.openai.com/docs/api-reference/chat-streaming/streaming): a role chunk, the content (and tool calls) of
each choice, a chunk with its `finish_reason`, the usage chunk with empty `choices` when the call asked for
`stream_options.include_usage`, then `data: [DONE]`.
"""

from __future__ import annotations

from typing import Any

import orjson

# Answers cut short by max_tokens (`length`) are not kept: a repeat would get the same truncated text, and a
# caller retrying with the same request usually wants the chance of a whole one. Nor are answers without a
# finish_reason (an upstream that did not finish).
KEPT_FINISH = frozenset({"stop", "tool_calls", "function_call", "content_filter", "end_turn"})


def usage_of(answer: dict[str, Any]) -> tuple[int, int] | None:
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)):
        return None
    return prompt, completion  # type: ignore[return-value]


def keepable(answer: Any) -> bool:
    """Whether an answer may be stored: a whole answer with usage, every choice finished for a reason kept."""
    if not isinstance(answer, dict) or usage_of(answer) is None:
        return False
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") in KEPT_FINISH for c in choices)


def read_entry(entry: bytes) -> dict[str, Any] | None:
    """A stored answer, or None when it is not one (written by another version, damaged): then it is a miss."""
    try:
        answer = orjson.loads(entry)
    except orjson.JSONDecodeError:
        return None
    return answer if keepable(answer) else None


# ---- a streamed miss: the answer assembled from the chunks relayed to the client -------------------------------

def events(data: bytes) -> list[bytes]:
    """The `data:` payloads of SSE bytes (whole events only, as the relay writes them)."""
    out = []
    for block in data.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                out.append(line[5:].strip())
    return out


class Assembler:
    """A stream's answer built as its chunks are relayed, so a covered stream holds about its answer's size, never
    its chunks (some 40 times more: each token or so wrapped in some 150 bytes of JSON). `size`: a bound on what it
    holds (the text merged, and the whole chunk for each carrying logprobs); the caller stops feeding past a limit."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.head: dict[str, Any] | None = None
        self.choices: dict[int, dict[str, Any]] = {}
        self.done = False
        self.broken = False
        self.size = 0

    def feed(self, data: bytes) -> None:
        """SSE bytes, whole events (as the relay writes them)."""
        for payload in events(data):
            self.event(payload)

    def event(self, data: bytes) -> None:
        """One event's `data:` payload."""
        if self.broken:
            return
        if data == b"[DONE]":
            self.done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.broken = True
            return
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            self.broken = True
            return
        if self.head is None:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        for part in chunk["choices"]:
            if not isinstance(part, dict) or not isinstance(part.get("index", 0), int):
                self.broken = True
                return
            self.size += len(data) if part.get("logprobs") else _text_size(part)
            _merge(self.choices.setdefault(part.get("index", 0), {}), part, self.endpoint)

    def answer(self, usage: tuple[int, int]) -> dict[str, Any] | None:
        """The non-streamed answer the stream amounts to, or None when it was not a whole OpenAI stream.
        `usage`: the stream's (prompt, completion) tokens as the relay metered them (the usage chunk may have been
        stripped for a client that did not ask for it)."""
        head = self.head
        if self.broken or not self.done or head is None or not self.choices:
            return None
        prompt, completion = usage
        endpoint = self.endpoint
        answer = {"id": head["id"], "object": "chat.completion" if endpoint == "chat" else "text_completion",
                  "created": head["created"], "model": head["model"],
                  "choices": [_choice(self.choices[i], i, endpoint) for i in sorted(self.choices)],
                  "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion}}
        if head["system_fingerprint"] is not None:
            answer["system_fingerprint"] = head["system_fingerprint"]
        return answer


def assemble(endpoint: str, chunks: list[bytes], usage: tuple[int, int]) -> dict[str, Any] | None:
    """The answer of a whole stream's `data:` payloads (`Assembler`), or None."""
    assembler = Assembler(endpoint)
    for data in chunks:
        assembler.event(data)
    return assembler.answer(usage)


def _text_size(part: dict[str, Any]) -> int:
    text = part.get("text") if "text" in part else part.get("delta")
    if isinstance(text, str):
        return len(text)
    if not isinstance(text, dict):
        return 0
    size = sum(len(v) for v in text.values() if isinstance(v, str))
    for call in text.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            size += sum(len(v) for v in function.values() if isinstance(v, str)) + 64
    return size


def _merge(into: dict[str, Any], part: dict[str, Any], endpoint: str) -> None:
    if part.get("finish_reason") is not None:
        into["finish_reason"] = part["finish_reason"]
    logprobs = part.get("logprobs")
    if isinstance(logprobs, dict):
        held = into.setdefault("logprobs", {})
        for name, value in logprobs.items():
            if isinstance(value, list):
                held.setdefault(name, []).extend(value)
            else:
                held[name] = value
    # Text is gathered in lists (`_append`), joined in _choice: `+=` on a string held in a dict copies it each time
    # (quadratic in the answer's length).
    if endpoint != "chat":
        text = part.get("text")
        if isinstance(text, str):
            _append(into.setdefault("text", []), text)
        return
    delta = part.get("delta")
    if not isinstance(delta, dict):
        return
    if isinstance(delta.get("role"), str):
        into["role"] = delta["role"]
    for field in ("content", "reasoning_content", "refusal"):
        if isinstance(delta.get(field), str):
            _append(into.setdefault(field, []), delta[field])
    for call in delta.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        calls = into.setdefault("tool_calls", {})
        index = call.get("index", len(calls))
        if not isinstance(index, int):
            continue
        held = calls.setdefault(index, {"type": "function",
                                "function": {"name": [], "arguments": []}})
        if call.get("id"):
            held["id"] = call["id"]
        function = call.get("function") or {}
        if not isinstance(function, dict):
            continue
        for name in ("name", "arguments"):
            if isinstance(function.get(name), str):
                _append(held["function"][name], function[name])


def _append(parts: list[str], text: str) -> None:
    # A token's text is a few characters in a string object of some 50 bytes: joined every 256 pieces, the pieces
    # held stay about the text's own size, and the copying linear but for a 256th of its square.
    parts.append(text)
    if len(parts) >= 256:
        parts[:] = ["".join(parts)]


def _choice(held: dict[str, Any], index: int, endpoint: str) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": held.get("finish_reason"),
                              "logprobs": held.get("logprobs")}
    if endpoint != "chat":
        choice["text"] = "".join(held.get("text", ()))
        return choice
    content = "".join(held["content"]) if "content" in held else None
    if content == "" and "tool_calls" in held:
        content = None  # the role chunk's empty text: a tool-call answer's content is null, as OpenAI sends it whole
    message: dict[str, Any] = {"role": held.get("role", "assistant"), "content": content}
    for field in ("reasoning_content", "refusal"):
        if field in held:
            message[field] = "".join(held[field])
    if "tool_calls" in held:
        message["tool_calls"] = [{**call, "function": {k: "".join(v) for k, v in call["function"].items()}}
                                 for _, call in sorted(held["tool_calls"].items())]
    choice["message"] = message
    return choice


# ---- a hit replayed as a stream ------------------------------------------------------------------------------

def sse_chunks(endpoint: str, answer: dict[str, Any], include_usage: bool) -> list[bytes]:
    """The stored answer as the SSE events of a stream, `[DONE]` included."""
    chat = endpoint == "chat"
    head = {"id": answer.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": answer.get("created"), "model": answer.get("model")}
    if answer.get("system_fingerprint") is not None:
        head["system_fingerprint"] = answer["system_fingerprint"]
    out = []

    def emit(choice: dict[str, Any] | None, usage: Any = None) -> None:
        chunk = {**head, "choices": [] if choice is None else [choice]}
        if usage is not None:
            chunk["usage"] = usage
        out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")

    for choice in answer["choices"]:
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            emit({"index": index, "delta": {"role": message.get("role", "assistant"), "content": ""},
                  "logprobs": None, "finish_reason": None})
            delta = {k: v for k, v in message.items() if k != "role" and v is not None}
            if "tool_calls" in delta:
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
            if delta:
                emit({"index": index, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None})
            emit({"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")})
        else:
            emit({"index": index, "text": choice.get("text", ""), "logprobs": choice.get("logprobs"),
                  "finish_reason": None})
            emit({"index": index, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")})
    if include_usage:
        emit(None, answer.get("usage"))
    out.append(b"data: [DONE]\n\n")
    return out
