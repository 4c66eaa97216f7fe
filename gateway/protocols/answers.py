"""What upstreams send back, per protocol: a whole answer read for the client, a stream adapted event by event."""

from __future__ import annotations

import functools
from typing import Protocol

import orjson

from gateway.protocols.anthropic_clients import ChatToMessagesStream, MessagesPassthrough, chat_to_message
from gateway.protocols.anthropic_upstream import AnthropicStream, from_messages_response
from gateway.protocols.bedrock_converse import ConverseStream, ConverseToMessagesStream, from_converse_response
from gateway.protocols.request import Request
from gateway.protocols.sse import UpstreamStreamError, error_message
from gateway.protocols.tokens import estimate_tokens, usage_pair
from gateway.upstream.routing import DeploymentPool


class MalformedAnswer(Exception):
    """The upstream answered 200 with a body that is not the JSON it should be."""


def read_answer(dep: DeploymentPool, data: bytes, alias: str, endpoint: str = "chat",
                prompt_estimate: int = 0, restamp: bool = False) -> tuple[bytes, int, int]:
    """Answer bytes for the client, with (prompt, completion) tokens; raises MalformedAnswer.

    `restamp`: the answer's `model` becomes `alias`, the name the client asked for (see restamp_model).

    Usage the gateway cannot trust (missing, not an object, negative, absurd) is replaced by estimates:
    the prompt's (request bytes / 4) and the answer text's (characters / 4), so a call is never free.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedAnswer(f"answer is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MalformedAnswer("answer is not a JSON object")
    try:
        if endpoint == "messages":
            if dep.provider == "anthropic":
                counted = usage_pair(obj.get("usage"), "input_tokens", "output_tokens")
                return data, *(counted or _estimated(obj, prompt_estimate))
            if dep.provider == "bedrock":
                obj = from_converse_response(obj, alias)[0]
            message, prompt, completion = chat_to_message(obj, alias)
            return orjson.dumps(message), prompt, completion
        if dep.provider == "anthropic":
            translated, prompt, completion = from_messages_response(obj, alias)
            return orjson.dumps(translated), prompt, completion
        if dep.provider == "bedrock":
            translated, prompt, completion = from_converse_response(obj, alias)
            return orjson.dumps(translated), prompt, completion
    except (AttributeError, TypeError, KeyError, ValueError) as exc:  # a shape the translation cannot read
        raise MalformedAnswer(f"answer has an unexpected shape ({type(exc).__name__})") from None
    counted = usage_pair(obj.get("usage"), *(("input_tokens", "output_tokens") if endpoint == "images"
                                            else ("prompt_tokens", "completion_tokens")))  # gpt-image-1's usage
    if restamp and "model" in obj and obj["model"] != alias:
        data = restamp_model(data, obj, alias)
    return data, *(counted or _estimated(obj, prompt_estimate))


def restamp_model(data: bytes, obj: dict[str, object], alias: str) -> bytes:
    """`data` (the JSON of `obj`) with its top-level `model` set to `alias`.

    LiteLLM's proxy answers with the model name the client sent, not the deployment's, in whole answers and
    in every stream chunk, except after a fallback, when the model that answered is kept
    (litellm/proxy/common_request_processing.py@v1.106.2 `_override_openai_response_model`,
    proxy_server.py@v1.106.2 `_restamp_streaming_chunk_model`). vLLM and OpenAI write compact JSON: the name
    is replaced in place (a quote inside a JSON string is escaped, so the pattern cannot match inside one);
    anything else is re-serialised.
    """
    upstream = obj["model"]
    if isinstance(upstream, str):
        old, new = _model_fields(upstream, alias)
        if data.count(old) == 1:
            return data.replace(old, new)
    return orjson.dumps({**obj, "model": alias})


@functools.lru_cache(maxsize=1024)
def _model_fields(upstream: str, alias: str) -> tuple[bytes, bytes]:
    # A few deployments and aliases: built once, not per answer or per stream chunk.
    return b'"model":' + orjson.dumps(upstream), b'"model":' + orjson.dumps(alias)


def unmetered_images(data: bytes) -> int:
    """Images in an images answer that reports no usage (dall-e-2/3 answer `data` alone): charged per image."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(obj, dict) or usage_pair(obj.get("usage"), "input_tokens", "output_tokens") is not None:
        return 0
    images = obj.get("data")
    return len(images) if isinstance(images, list) else 0


def _estimated(obj: dict[str, object], prompt_estimate: int) -> tuple[int, int]:
    return prompt_estimate, estimate_tokens(_text_chars(obj.get("choices") or obj.get("content")))


def _text_chars(items: object) -> int:
    """Characters of generated text in `choices` (chat, completions) or `content` (Messages) of an answer."""
    chars = 0
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        for part in (item, item.get("message"), item.get("delta")):
            if isinstance(part, dict):
                for name in ("content", "text", "reasoning_content"):
                    value = part.get(name)
                    if isinstance(value, str):
                        chars += len(value)
                calls = part.get("tool_calls")
                for call in calls if isinstance(calls, list) else ():
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        chars += len(fn["arguments"])
    return chars


class StreamAdapter(Protocol):
    prompt_tokens: int
    completion_tokens: int
    done: bool

    def feed(self, raw: bytes, data: bytes) -> bytes: ...


class OpenAIStream:
    """Passes OpenAI-style events through byte for byte, reading usage and stripping it when not asked for.

    `streamed_tokens` estimates the completion from the text relayed so far (characters / 4, at least one
    per chunk that carries text): what a call is charged when the upstream's usage never arrives (the
    client hung up first) or cannot be trusted (`usage_problem` says why).
    """

    __slots__ = ("completion_tokens", "done", "model", "prompt_tokens", "streamed_tokens", "strip_usage",
                 "usage_problem")

    def __init__(self, strip_usage: bool, model: str | None = None) -> None:
        self.strip_usage = strip_usage
        self.model = model  # restamped into every chunk when set (see restamp_model)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.streamed_tokens = 0
        self.usage_problem: str | None = None
        self.done = False

    def feed(self, raw: bytes, data: bytes) -> bytes:
        if data == b"[DONE]":
            self.done = True
            return raw
        obj = orjson.loads(data)  # a malformed chunk must fail here, not in the client
        if isinstance(obj, dict):
            if "error" in obj and "choices" not in obj:
                raise UpstreamStreamError(error_message(obj.get("error")))
            chars = _text_chars(obj.get("choices"))
            if chars:
                self.streamed_tokens += max(1, estimate_tokens(chars))
            usage = obj.get("usage")
            if usage is not None:
                counted = usage_pair(usage, "prompt_tokens", "completion_tokens")
                if counted is None:
                    self.usage_problem = "upstream usage unreadable: " + orjson.dumps(usage)[:80].decode(
                        errors="replace")
                else:
                    self.prompt_tokens, self.completion_tokens = counted
                if self.strip_usage and not obj.get("choices"):
                    return b""
            model = self.model
            if model is not None and obj.get("model", model) != model:
                return b"data: " + restamp_model(data, obj, model) + b"\n\n"
        return raw


def stream_adapter(dep: DeploymentPool, request: Request, restamp: bool = False) -> StreamAdapter:
    if request.endpoint == "messages":
        if dep.provider == "bedrock":
            return ConverseToMessagesStream(request.alias)
        return MessagesPassthrough() if dep.provider == "anthropic" else ChatToMessagesStream(request.alias)
    if dep.provider == "anthropic":
        return AnthropicStream(request.alias, include_usage=request.wants_usage)
    if dep.provider == "bedrock":
        return ConverseStream(request.alias, include_usage=request.wants_usage)
    return OpenAIStream(strip_usage=not request.wants_usage, model=request.alias if restamp else None)
