"""What crosses the wire per upstream protocol: the request body sent, the answer read, the stream relayed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.protocols.anthropic_upstream import AnthropicStream, UpstreamStreamError, from_messages_response, to_messages_request
from gateway.protocols.anthropic_clients import ChatToMessagesStream, MessagesPassthrough, chat_to_message, messages_to_chat
from gateway.upstream.routing import DeploymentPool, ModelRoute


@dataclass(slots=True)
class Request:
    """A client request, parsed once: the raw bytes and the few fields the gateway reads."""

    endpoint: str  # chat | completions | embeddings | messages (Anthropic's API, inbound)
    raw: bytes
    body: dict[str, Any]
    alias: str
    stream: bool
    wants_usage: bool  # the client asked for stream_options.include_usage
    hopped: bool = False  # passed on by another region's gateway (routing.HOP_HEADER)
    _payloads: dict[tuple[str, str, int | None], bytes] = field(default_factory=dict)

    def payload_for(self, dep: DeploymentPool, route: ModelRoute) -> bytes:
        key = (dep.provider, dep.model, route.max_tokens)
        cached = self._payloads.get(key)
        if cached is None:
            cached = self._payloads[key] = self._build(dep, route)
        return cached

    def _build(self, dep: DeploymentPool, route: ModelRoute) -> bytes:
        body = self.body
        if self.endpoint == "messages":
            return self._build_messages(dep, route)
        if dep.provider == "anthropic":
            return orjson.dumps(to_messages_request(body, dep.model, route.max_tokens))
        changes: dict[str, Any] = {}
        if body.get("model") != dep.model:
            changes["model"] = dep.model
        cap = route.max_tokens
        if cap is not None and self.endpoint != "embeddings":
            key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            asked = body.get(key)
            # Chat answers run to the context limit when no max is given: the cap applies then too.
            if (asked is None and self.endpoint == "chat") or (isinstance(asked, int) and asked > cap):
                changes[key] = cap
        if self.stream and not self.wants_usage:
            # Meter tokens even when the client did not ask; the usage chunk is stripped on the way back.
            changes["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if not changes:
            return self.raw  # forwarded untouched
        return orjson.dumps({**body, **changes})

    def _build_messages(self, dep: DeploymentPool, route: ModelRoute) -> bytes:
        body, cap = self.body, route.max_tokens
        if dep.provider != "anthropic":
            return orjson.dumps(messages_to_chat(body, dep.model, cap))
        changes: dict[str, Any] = {}
        if body.get("model") != dep.model:
            changes["model"] = dep.model
        if cap is not None and body.get("max_tokens", cap + 1) > cap:
            changes["max_tokens"] = cap
        return orjson.dumps({**body, **changes}) if changes else self.raw


class MalformedAnswer(Exception):
    """The upstream answered 200 with a body that is not the JSON it should be."""


def read_answer(dep: DeploymentPool, data: bytes, alias: str, endpoint: str = "chat") -> tuple[bytes, int, int]:
    """Answer bytes for the client, with (prompt, completion) tokens; raises MalformedAnswer."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedAnswer(f"answer is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MalformedAnswer("answer is not a JSON object")
    if endpoint == "messages":
        if dep.provider == "anthropic":
            usage = obj.get("usage") or {}
            return data, int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
        message, prompt, completion = chat_to_message(obj, alias)
        return orjson.dumps(message), prompt, completion
    if dep.provider == "anthropic":
        translated, prompt, completion = from_messages_response(obj, alias)
        return orjson.dumps(translated), prompt, completion
    usage = obj.get("usage") or {}
    return data, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class StreamAdapter(Protocol):
    prompt_tokens: int
    completion_tokens: int
    done: bool

    def feed(self, raw: bytes, data: bytes) -> bytes: ...


class OpenAIStream:
    """Passes OpenAI-style events through byte for byte, reading usage and stripping it when not asked for."""

    __slots__ = ("strip_usage", "prompt_tokens", "completion_tokens", "done")

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False

    def feed(self, raw: bytes, data: bytes) -> bytes:
        if data == b"[DONE]":
            self.done = True
            return raw
        obj = orjson.loads(data)  # a malformed chunk must fail here, not in the client
        if isinstance(obj, dict):
            if "error" in obj and "choices" not in obj:
                raise UpstreamStreamError(str((obj.get("error") or {}).get("message", "upstream error")))
            usage = obj.get("usage")
            if usage:
                self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                self.completion_tokens = int(usage.get("completion_tokens") or 0)
                if self.strip_usage and not obj.get("choices"):
                    return b""
        return raw


def stream_adapter(dep: DeploymentPool, request: Request) -> StreamAdapter:
    if request.endpoint == "messages":
        return MessagesPassthrough() if dep.provider == "anthropic" else ChatToMessagesStream(request.alias)
    if dep.provider == "anthropic":
        return AnthropicStream(request.alias, include_usage=request.wants_usage)
    return OpenAIStream(strip_usage=not request.wants_usage)
