"""OpenAI chat.completion.chunk SSE events, as the stream translators (Anthropic, Bedrock Converse) write them."""

from __future__ import annotations

from typing import Any

import orjson


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
