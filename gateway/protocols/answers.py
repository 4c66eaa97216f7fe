"""What upstreams send back, per protocol: a whole answer read for the client, a stream adapted event by event."""

from __future__ import annotations

from typing import Protocol

import orjson

from gateway.protocols.anthropic_clients import ChatToMessagesStream, MessagesPassthrough, chat_to_message
from gateway.protocols.anthropic_upstream import AnthropicStream, from_messages_response
from gateway.protocols.request import Request
from gateway.protocols.sse import UpstreamStreamError
from gateway.upstream.routing import DeploymentPool


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

    __slots__ = ("completion_tokens", "done", "prompt_tokens", "strip_usage")

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
