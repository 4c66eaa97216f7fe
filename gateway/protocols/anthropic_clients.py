"""Anthropic Messages clients (POST /v1/messages) in front of OpenAI-compatible upstreams: the reverse translation."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocols.anthropic_upstream import is_number, need
from gateway.protocols.sse import UpstreamStreamError, error_message
from gateway.protocols.tokens import bounded_tokens

STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
               "content_filter": "refusal"}


TOOL_CHOICES = ("auto", "any", "tool", "none")


def check_messages(body: dict[str, Any]) -> None:
    """Types of the Messages request fields the gateway reads or converts (Anthropic's schema, not all of it:
    https://docs.anthropic.com/en/api/messages); a wrong one is a 400 naming it, never a 500 later."""
    for i, message in enumerate(body["messages"]):
        at = f"messages[{i}]"
        need(isinstance(message, dict), at, "an object with `role` and `content`")
        need(message.get("role") in ("user", "assistant"), f"{at}.role", '"user" or "assistant"')
        content = message.get("content")
        if not isinstance(content, str):
            need(isinstance(content, list), f"{at}.content", "a string or a list of content blocks")
            for j, block in enumerate(content):
                _check_block(block, f"{at}.content[{j}]")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        need(isinstance(system, list), "system", "a string or a list of text blocks")
        for i, block in enumerate(system):
            need(isinstance(block, dict) and isinstance(block.get("text"), str), f"system[{i}]",
                 "a text block (an object with a string `text`)")
    tools = body.get("tools")
    if tools is not None:
        need(isinstance(tools, list), "tools", "a list of tools")
        for i, tool in enumerate(tools):
            need(isinstance(tool, dict), f"tools[{i}]", "an object")
            need(isinstance(tool.get("name"), str), f"tools[{i}].name", "a string")
            need(isinstance(tool.get("description", ""), str), f"tools[{i}].description", "a string")
            need(isinstance(tool.get("input_schema", {}), dict), f"tools[{i}].input_schema", "an object")
    choice = body.get("tool_choice")
    if choice is not None:
        need(isinstance(choice, dict) and choice.get("type") in TOOL_CHOICES, "tool_choice",
             'an object whose `type` is "auto", "any", "tool" or "none"')
        if choice["type"] == "tool":
            need(isinstance(choice.get("name"), str), "tool_choice.name", "a string")
    metadata = body.get("metadata")
    if metadata is not None:
        need(isinstance(metadata, dict), "metadata", "an object")
        need(isinstance(metadata.get("user_id", ""), (str, type(None))), "metadata.user_id", "a string")
    stops = body.get("stop_sequences")
    need(stops is None or (isinstance(stops, list) and all(isinstance(x, str) for x in stops)), "stop_sequences",
         "a list of strings")
    for key in ("temperature", "top_p"):
        need(body.get(key) is None or is_number(body[key]), key, "a number")


def _check_block(block: Any, at: str) -> None:
    need(isinstance(block, dict), at, "a content block (an object with a `type`)")
    kind = block.get("type")
    need(isinstance(kind, str), f"{at}.type", "a string")
    if kind == "text":
        need(isinstance(block.get("text"), str), f"{at}.text", "a string")
    elif kind == "image":
        source = block.get("source")
        need(isinstance(source, dict), f"{at}.source", "an object")
        if source.get("type") == "url":
            need(isinstance(source.get("url"), str), f"{at}.source.url", "a string")
        else:
            need(source.get("type") == "base64", f"{at}.source.type", '"base64" or "url"')
            need(isinstance(source.get("media_type"), str), f"{at}.source.media_type", "a string")
            need(isinstance(source.get("data"), str), f"{at}.source.data", "a string")
    elif kind == "tool_use":
        need(isinstance(block.get("id", ""), str), f"{at}.id", "a string")
        need(isinstance(block.get("name"), str), f"{at}.name", "a string")
        need(isinstance(block.get("input", {}), dict), f"{at}.input", "an object")
    elif kind == "tool_result":
        need(isinstance(block.get("tool_use_id"), str), f"{at}.tool_use_id", "a string")
        result = block.get("content")
        if result is not None and not isinstance(result, str):
            need(isinstance(result, list), f"{at}.content", "a string or a list of content blocks")
            for j, inner in enumerate(result):
                _check_block(inner, f"{at}.content[{j}]")


def messages_to_chat(body: dict[str, Any], model: str, cap: int | None) -> dict[str, Any]:
    """A Messages request as an OpenAI chat request."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        text = system if isinstance(system, str) else "".join(b.get("text", "") for b in system if isinstance(b, dict))
        messages.append({"role": "system", "content": text})
    for message in body.get("messages") or []:
        role = message.get("role", "user")
        content = message.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        parts: list[dict[str, Any]] = []
        tool_calls: list[dict[str, Any]] = []
        for block in content or []:
            kind = block.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            elif kind == "image":
                source = block.get("source") or {}
                url = source.get("url") or f"data:{source.get('media_type', '')};base64,{source.get('data', '')}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif kind == "tool_use":
                tool_calls.append({"id": block.get("id", ""), "type": "function", "function": {
                    "name": block.get("name", ""), "arguments": orjson.dumps(block.get("input") or {}).decode()}})
            elif kind == "tool_result":
                result = block.get("content")
                if isinstance(result, list):
                    result = "".join(b.get("text", "") for b in result if isinstance(b, dict))
                messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": result or ""})
        if role == "assistant":
            text = "".join(p["text"] for p in parts if p["type"] == "text")
            out: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                out["tool_calls"] = tool_calls
            messages.append(out)
        elif parts:
            messages.append({"role": role, "content": parts})
    max_tokens = body.get("max_tokens")
    if cap is not None and (not isinstance(max_tokens, int) or max_tokens > cap):
        max_tokens = cap
    chat: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        chat["user"] = user
    if body.get("tools"):
        chat["tools"] = [{"type": "function", "function": {"name": t.get("name", ""),
                                                           "description": t.get("description", ""),
                                                           "parameters": t.get("input_schema") or {}}}
                         for t in body["tools"]]
        choice = body.get("tool_choice") or {}
        kind = choice.get("type")
        if kind == "any":
            chat["tool_choice"] = "required"
        elif kind in ("auto", "none"):
            chat["tool_choice"] = kind
        elif kind == "tool":
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name", "")}}
    return chat


def chat_to_message(answer: dict[str, Any], alias: str) -> tuple[dict[str, Any], int, int]:
    """An OpenAI chat completion as a Messages answer, with (input, output) tokens."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {}
        content.append({"type": "tool_use", "id": call.get("id", ""), "name": fn.get("name", ""), "input": args})
    usage = answer.get("usage") or {}
    prompt = bounded_tokens(usage.get("prompt_tokens"))
    completion = bounded_tokens(usage.get("completion_tokens"))
    result = {
        "id": answer.get("id", ""),
        "type": "message",
        "role": "assistant",
        "model": alias,
        "content": content,
        "stop_reason": STOP_REASON.get(choice.get("finish_reason") or "", "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    }
    return result, prompt, completion


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class ChatToMessagesStream:
    """Turns OpenAI chat.completion.chunk events into the Messages stream event sequence."""

    anthropic_events = True  # a failure mid-stream is reported as a Messages `error` event

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False
        self._started = False
        self._block: int | None = None  # index of the open content block
        self._block_kind = ""
        self._next_index = 0
        self._stop = "end_turn"

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block, self._block_kind = self._next_index, kind
        self._next_index += 1
        return out + _event("content_block_start", {"type": "content_block_start", "index": self._block,
                                                    "content_block": block})

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        index, self._block = self._block, None
        return _event("content_block_stop", {"type": "content_block_stop", "index": index})

    def feed(self, raw: bytes, data: bytes) -> bytes:
        if data == b"[DONE]":
            self.done = True
            out = self._close()
            out += _event("message_delta", {"type": "message_delta",
                                            "delta": {"stop_reason": self._stop, "stop_sequence": None},
                                            "usage": {"output_tokens": self.completion_tokens}})
            return out + _event("message_stop", {"type": "message_stop"})
        chunk = orjson.loads(data)
        out = b""
        if not self._started:
            self._started = True
            out += _event("message_start", {"type": "message_start", "message": {
                "id": chunk.get("id", ""), "type": "message", "role": "assistant", "content": [], "model": self.alias,
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}})
        usage = chunk.get("usage")
        if usage:
            self.prompt_tokens = bounded_tokens(usage.get("prompt_tokens"))
            self.completion_tokens = bounded_tokens(usage.get("completion_tokens"))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._block_kind != "text" or self._block is None:
                    out += self._open("text", {"type": "text", "text": ""})
                out += _event("content_block_delta", {"type": "content_block_delta", "index": self._block,
                                                      "delta": {"type": "text_delta", "text": text}})
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                if call.get("id"):
                    out += self._open("tool", {"type": "tool_use", "id": call["id"], "name": fn.get("name", ""),
                                               "input": {}})
                if fn.get("arguments") and self._block is not None:
                    out += _event("content_block_delta", {"type": "content_block_delta", "index": self._block,
                                                          "delta": {"type": "input_json_delta",
                                                                    "partial_json": fn["arguments"]}})
            if choice.get("finish_reason"):
                self._stop = STOP_REASON.get(choice["finish_reason"], "end_turn")
        return out


class MessagesPassthrough:
    """Messages events from an Anthropic upstream, forwarded as they are, usage read on the way."""

    anthropic_events = True

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False

    def feed(self, raw: bytes, data: bytes) -> bytes:
        event = orjson.loads(data)
        kind = event.get("type")
        if kind == "message_start":
            self.prompt_tokens = bounded_tokens(((event.get("message") or {}).get("usage") or {}).get("input_tokens"))
        elif kind == "message_delta":
            self.completion_tokens = bounded_tokens((event.get("usage") or {}).get("output_tokens"))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise UpstreamStreamError(error_message(event.get("error")))
        return raw


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}
    return {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": message}}

