"""Amazon Bedrock's Converse API behind OpenAI's chat API: requests, answers and stream events translated.

Shapes: docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html and
API_runtime_ConverseStream.html (botocore data/bedrock-runtime/2023-09-30/service-2.json, the same model).
Over REST-JSON a blob (an image's bytes) is a base64 string, so a data URL's payload passes as it is.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.protocols.anthropic_clients import ChatToMessagesStream
from gateway.protocols.anthropic_upstream import DEFAULT_MAX_TOKENS, BadShape
from gateway.protocols.chunks import ChatChunks, assistant_message, tool_call
from gateway.protocols.sse import UpstreamStreamError
from gateway.protocols.tokens import bounded_tokens

# Converse's StopReason enum (service-2.json) -> OpenAI's finish_reason, as LiteLLM maps them
# (litellm/llms/bedrock/chat/converse_transformation.py: map_finish_reason).
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "guardrail_intervened": "content_filter", "content_filtered": "content_filter",
          "model_context_window_exceeded": "length", "malformed_model_output": "stop", "malformed_tool_use": "stop"}
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}


def to_converse_request(body: dict[str, Any], cap: int | None) -> dict[str, Any]:
    """An OpenAI chat request as a Converse request (the model id travels in the URL, not the body)."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = content if isinstance(content, str) else _text_of(content)
            if text:
                system.append({"text": text})
            continue
        if role == "tool":
            result = {"toolUseId": message.get("tool_call_id", ""),
                      "content": [{"text": content if isinstance(content, str) else _text_of(content)}]}
            _append(messages, "user", [{"toolResult": result}])
            continue
        blocks = _blocks(content, f"messages[{i}].content")
        if role == "assistant":
            for call in message.get("tool_calls") or []:
                fn = call.get("function") or {}
                try:
                    args = orjson.loads(fn.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    args = {}
                blocks.append({"toolUse": {"toolUseId": call.get("id", ""), "name": fn.get("name", ""),
                                           "input": args if isinstance(args, dict) else {"value": args}}})
        _append(messages, "assistant" if role == "assistant" else "user", blocks)
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    max_tokens = requested if isinstance(requested, int) and not isinstance(requested, bool) else cap
    if cap is not None and max_tokens is not None:
        max_tokens = min(max_tokens, cap)
    inference: dict[str, Any] = {"maxTokens": max_tokens or DEFAULT_MAX_TOKENS}
    if body.get("temperature") is not None:
        inference["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        inference["topP"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        inference["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    out["inferenceConfig"] = inference
    tools = [t for t in body.get("tools") or [] if t.get("type", "function") == "function"]
    choice = body.get("tool_choice")
    if tools and choice != "none":  # Converse has no "none": the model gets no tools (as LiteLLM does)
        config: dict[str, Any] = {"tools": [
            {"toolSpec": {"name": t["function"]["name"], "description": t["function"].get("description") or
                          t["function"]["name"],
                          "inputSchema": {"json": t["function"].get("parameters") or {"type": "object",
                                                                                    "properties": {}}}}}
            for t in tools]}
        if choice == "required":
            config["toolChoice"] = {"any": {}}
        elif choice == "auto":
            config["toolChoice"] = {"auto": {}}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
        out["toolConfig"] = config
    return out


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    # Converse wants user and assistant turns to alternate: consecutive turns of one role (several tool
    # results after one assistant turn, a user turn after tool results) become one turn.
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _text_of(parts: Any) -> str:
    if not isinstance(parts, list):
        return "" if parts is None else str(parts)
    return "".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")


def _blocks(parts: Any, at: str) -> list[dict[str, Any]]:
    if parts is None:
        return []
    if isinstance(parts, str):
        return [{"text": parts}] if parts else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        kind = part.get("type")
        if kind == "text":
            blocks.append({"text": part.get("text", "")})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            media, _, data = url[5:].partition(";base64,") if url.startswith("data:") else ("", "", "")
            if media not in IMAGE_FORMATS or not data:
                # Converse takes image bytes only (or an S3 location), never a URL to fetch.
                raise BadShape(f"{at}[{j}].image_url", "a base64 data URL of a png, jpeg, gif or webp image for a "
                               "Bedrock deployment")
            blocks.append({"image": {"format": IMAGE_FORMATS[media], "source": {"bytes": data}}})
    return blocks


def from_converse_response(answer: dict[str, Any], alias: str) -> tuple[dict[str, Any], int, int]:
    """A Converse answer as an OpenAI chat completion, with (prompt, completion) tokens."""
    message = (answer.get("output") or {}).get("message") or {}
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if "text" in block:
            text.append(str(block["text"]))
        elif "toolUse" in block:
            use = block["toolUse"]
            calls.append(tool_call(use.get("toolUseId", ""), use.get("name", ""), use.get("input")))
    usage = answer.get("usage") or {}
    prompt = bounded_tokens(usage.get("inputTokens"))
    completion = bounded_tokens(usage.get("outputTokens"))
    reply = assistant_message(text, calls)
    return {
        "id": "chatcmpl-bedrock-" + str(time.time_ns()),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": FINISH.get(str(answer.get("stopReason") or ""), "stop")}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }, prompt, completion


class ConverseStream(ChatChunks):
    """Turns ConverseStream events into OpenAI chat.completion.chunk events, with a final usage chunk.

    `feed(event_type, payload)`: the event's `:event-type` header and its JSON payload, as
    `gateway.protocols.bedrock_events.ConverseEventReader` reads them. Bedrock sends `metadata` (usage)
    after `messageStop`, so the stream ends there.
    """

    def __init__(self, alias: str, include_usage: bool) -> None:
        self.alias = alias
        self.include_usage = include_usage
        self.id = "chatcmpl-bedrock-" + str(time.time_ns())
        self.created = int(time.time())
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False
        self._tools: dict[int, int] = {}  # contentBlockIndex -> tool call index

    def feed(self, event_type: bytes, payload: bytes) -> bytes:
        event = orjson.loads(payload) if payload else {}
        kind = event_type.decode()
        if kind == "contentBlockDelta":
            delta = event.get("delta") or {}
            if "text" in delta:
                return self._chunk({"content": str(delta["text"])})
            use = delta.get("toolUse")
            index = self._tools.get(event.get("contentBlockIndex", -1))
            if isinstance(use, dict) and index is not None:
                return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": use.get("input", "")}}]})
            return b""  # reasoning content and other deltas OpenAI's chat API has no place for
        if kind == "messageStart":
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "contentBlockStart":
            use = (event.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                index = self._tools.setdefault(event.get("contentBlockIndex", 0), len(self._tools))
                call = {"index": index, "id": use.get("toolUseId", ""), "type": "function",
                        "function": {"name": use.get("name", ""), "arguments": ""}}
                return self._chunk({"tool_calls": [call]})
            return b""
        if kind == "messageStop":
            return self._chunk({}, FINISH.get(str(event.get("stopReason") or ""), "stop"))
        if kind == "metadata":
            usage = event.get("usage") or {}
            self.prompt_tokens = bounded_tokens(usage.get("inputTokens"))
            self.completion_tokens = bounded_tokens(usage.get("outputTokens"))
            self.done = True
            out = b""
            if self.include_usage:
                p, c = self.prompt_tokens, self.completion_tokens
                out = self._chunk(None, usage={"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
            return out + b"data: [DONE]\n\n"
        if kind.endswith("Exception"):  # an exception event inside a 200 stream (ConverseStreamOutput's members)
            raise UpstreamStreamError(f"{kind[0].upper()}{kind[1:]}: {event.get('message') or 'stream failed'}")
        return b""  # contentBlockStop


class ConverseToMessagesStream:
    """ConverseStream events as Anthropic Messages stream events (Anthropic clients on a Bedrock deployment):
    through OpenAI chunks, composing the two translations the gateway has."""

    anthropic_events = True  # a failure mid-stream is reported as a Messages `error` event

    def __init__(self, alias: str) -> None:
        self._chat = ConverseStream(alias, include_usage=True)  # the usage chunk carries output_tokens on
        self._messages = ChatToMessagesStream(alias)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False

    def feed(self, event_type: bytes, payload: bytes) -> bytes:
        out = b""
        for event in self._chat.feed(event_type, payload).split(b"\n\n"):
            if event.startswith(b"data: "):
                out += self._messages.feed(event + b"\n\n", event[6:])
        self.prompt_tokens, self.completion_tokens = self._chat.prompt_tokens, self._chat.completion_tokens
        self.done = self._messages.done
        return out
