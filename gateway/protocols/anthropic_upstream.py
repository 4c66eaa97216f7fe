"""Anthropic's Messages API behind OpenAI's chat API: requests, answers and stream events translated."""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.protocols.chunks import ChatChunks, assistant_message, tool_call
from gateway.protocols.sse import UpstreamStreamError, error_message
from gateway.protocols.tokens import bounded_tokens

DEFAULT_MAX_TOKENS = 4096  # Messages requires max_tokens; OpenAI clients often leave it out
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "pause_turn": "stop", "refusal": "content_filter"}


class BadShape(ValueError):
    """A client request whose field has the wrong type: a 400 naming `param` (e.g. `messages[0].content`)."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"`{param}` {problem}.")
        self.param = param


def need(ok: bool, param: str, what: str) -> None:
    if not ok:
        raise BadShape(param, f"must be {what}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_chat(body: dict[str, Any]) -> None:
    """Types of the chat request fields the gateway reads or converts (OpenAI's schema, not all of it)."""
    for i, message in enumerate(body["messages"]):
        at = f"messages[{i}]"
        need(isinstance(message, dict), at, "an object")
        need(isinstance(message.get("role", ""), str), f"{at}.role", "a string")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            need(isinstance(content, list), f"{at}.content", "a string, null or a list of content parts")
            for j, part in enumerate(content):
                _check_part(part, f"{at}.content[{j}]")
        need(isinstance(message.get("tool_call_id", ""), str), f"{at}.tool_call_id", "a string")
        calls = message.get("tool_calls")
        if calls is not None:
            need(isinstance(calls, list), f"{at}.tool_calls", "a list")
            for j, call in enumerate(calls):
                need(isinstance(call, dict), f"{at}.tool_calls[{j}]", "an object")
                fn = call.get("function")
                need(isinstance(fn, dict), f"{at}.tool_calls[{j}].function", "an object")
                need(isinstance(fn.get("name"), str), f"{at}.tool_calls[{j}].function.name", "a string")
                need(isinstance(fn.get("arguments", ""), str), f"{at}.tool_calls[{j}].function.arguments",
                     "a string")
                need(isinstance(call.get("id", ""), str), f"{at}.tool_calls[{j}].id", "a string")
    tools = body.get("tools")
    if tools is not None:
        need(isinstance(tools, list), "tools", "a list")
        for i, tool in enumerate(tools):
            need(isinstance(tool, dict), f"tools[{i}]", "an object")
            fn = tool.get("function")
            if tool.get("type", "function") == "function":
                need(isinstance(fn, dict), f"tools[{i}].function", "an object")
                need(isinstance(fn.get("name"), str), f"tools[{i}].function.name", "a string")
                need(isinstance(fn.get("description", ""), str), f"tools[{i}].function.description", "a string")
                need(isinstance(fn.get("parameters", {}), dict), f"tools[{i}].function.parameters", "an object")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str):
        need(isinstance(choice, dict), "tool_choice", "a string or an object")
        fn = choice.get("function")
        if fn is not None:
            need(isinstance(fn, dict) and isinstance(fn.get("name"), str), "tool_choice.function",
                 "an object with a string `name`")
    stop = body.get("stop")
    need(stop is None or isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(x, str) for x in stop)),
         "stop", "a string or a list of strings")
    need(isinstance(body.get("user", ""), str), "user", "a string")
    for key in ("temperature", "top_p"):
        need(body.get(key) is None or is_number(body[key]), key, "a number")


def _check_part(part: Any, at: str) -> None:
    need(isinstance(part, dict), at, "an object")
    kind = part.get("type")
    need(isinstance(kind, str), f"{at}.type", "a string")
    if kind == "text":
        need(isinstance(part.get("text"), str), f"{at}.text", "a string")
    elif kind == "image_url":
        image = part.get("image_url")
        need(isinstance(image, dict) and isinstance(image.get("url"), str), f"{at}.image_url",
             "an object with a string `url`")


def to_messages_request(body: dict[str, Any], model: str, cap: int | None) -> dict[str, Any]:
    """An OpenAI chat request as a Messages request."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(content if isinstance(content, str) else _text_of(content))
        elif role == "tool":
            block = {"type": "tool_result", "tool_use_id": message.get("tool_call_id", ""),
                     "content": content if isinstance(content, str) else _text_of(content)}
            messages.append({"role": "user", "content": [block]})
        elif role == "assistant" and message.get("tool_calls"):
            blocks = _blocks(content) if content else []
            for call in message["tool_calls"]:
                fn = call.get("function") or {}
                try:
                    args = orjson.loads(fn.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    args = {}
                blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": fn.get("name", ""), "input": args})
            messages.append({"role": "assistant", "content": blocks})
        else:
            messages.append({"role": "assistant" if role == "assistant" else "user",
                             "content": content if isinstance(content, str) else _blocks(content)})
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    max_tokens = requested if isinstance(requested, int) else (cap or DEFAULT_MAX_TOKENS)
    if cap is not None:
        max_tokens = min(max_tokens, cap)
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        out["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        out["tools"] = [
            {"name": t["function"]["name"], "description": t["function"].get("description", ""),
             "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}}}
            for t in body["tools"] if t.get("type") == "function"
        ]
        choice = body.get("tool_choice")
        if choice == "required":
            out["tool_choice"] = {"type": "any"}
        elif choice in ("auto", "none"):
            out["tool_choice"] = {"type": choice}
        elif isinstance(choice, dict) and choice.get("function"):
            out["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
    return out


def _text_of(parts: Any) -> str:
    if not isinstance(parts, list):
        return "" if parts is None else str(parts)
    return "".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")


def _blocks(parts: Any) -> list[dict[str, Any]]:
    if parts is None:
        return []
    if isinstance(parts, str):
        return [{"type": "text", "text": parts}]
    blocks = []
    for part in parts:
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                media, data = url[5:].split(";base64,", 1)
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
            else:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
    return blocks


def from_messages_response(answer: dict[str, Any], alias: str) -> tuple[dict[str, Any], int, int]:
    """A Messages answer as an OpenAI chat completion, with (prompt, completion) tokens."""
    text = []
    tool_calls = []
    for block in answer.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            tool_calls.append(tool_call(block.get("id", ""), block.get("name", ""), block.get("input")))
    usage = answer.get("usage") or {}
    prompt = bounded_tokens(usage.get("input_tokens"))
    completion = bounded_tokens(usage.get("output_tokens"))
    message = assistant_message(text, tool_calls)
    completion_obj = {
        "id": answer.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": FINISH.get(answer.get("stop_reason") or "", "stop")}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }
    return completion_obj, prompt, completion


class AnthropicStream(ChatChunks):
    """Turns Messages stream events into OpenAI chat.completion.chunk events."""

    def __init__(self, alias: str, include_usage: bool) -> None:
        self.alias = alias
        self.include_usage = include_usage
        self.id = ""
        self.created = int(time.time())
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False
        self._tools: dict[int, int] = {}  # content block index -> tool call index

    def feed(self, raw: bytes, data: bytes) -> bytes:
        event = orjson.loads(data)
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if delta.get("type") == "input_json_delta" and event.get("index") in self._tools:
                call = {"index": self._tools[event["index"]], "function": {"arguments": delta.get("partial_json", "")}}
                return self._chunk({"tool_calls": [call]})
            return b""
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = message.get("id", "")
            self.prompt_tokens = bounded_tokens((message.get("usage") or {}).get("input_tokens"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tools.setdefault(event.get("index", 0), len(self._tools))
                call = {"index": index, "id": block.get("id", ""), "type": "function",
                        "function": {"name": block.get("name", ""), "arguments": ""}}
                return self._chunk({"tool_calls": [call]})
            return b""
        if kind == "message_delta":
            self.completion_tokens = bounded_tokens((event.get("usage") or {}).get("output_tokens"))
            reason = (event.get("delta") or {}).get("stop_reason") or ""
            return self._chunk({}, FINISH.get(reason, "stop"))
        if kind == "message_stop":
            self.done = True
            out = b""
            if self.include_usage:
                p, c = self.prompt_tokens, self.completion_tokens
                out = self._chunk(None, usage={"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
            return out + b"data: [DONE]\n\n"
        if kind == "error":
            raise UpstreamStreamError(error_message(event.get("error")))
        return b""  # ping, content_block_stop
