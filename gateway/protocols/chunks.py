"""OpenAI chat.completion.chunk SSE events, as the stream translators (Anthropic, Bedrock Converse) write them."""

from __future__ import annotations

from typing import Any

import orjson


def tool_call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    """One OpenAI `tool_calls` entry of a whole answer, from a translated provider's tool use."""
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments or {}).decode()}}


def assistant_message(text: list[str], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's assistant message: the text (null when the answer is only tool calls) and the tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


class ChatChunks:
    """Writes one SSE `data:` event per chunk of one streamed answer; `id`, `created` and `alias` (the model name
    the client asked for) are set by the translator using it."""

    id: str
    created: int
    alias: str

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None,
               usage: dict[str, int] | None = None) -> bytes:
        # OpenAI's chunk object (platform.openai.com/docs/api-reference/chat-streaming/streaming): the usage-only
        # chunk sent with stream_options.include_usage has an empty `choices`.
        obj: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                               "model": self.alias,
                               "choices": [] if delta is None else
                               [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"
