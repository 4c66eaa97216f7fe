"""A cached answer replayed as a stream is what the official openai client's own stream accumulator
(`openai.lib.streaming.chat.ChatCompletionStreamState`) turns back into the same answer, tool calls and several
choices included; a stream assembled from its chunks is the answer the upstream would have sent whole."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace
from typing import Any

import orjson
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from gateway.cache.answers import assemble, events, keepable, sse_chunks
from gateway.cache.request_key import entry_id, opt_out, samples
from gateway.cache.response_cache import CacheCall, ResponseCache
from gateway.cache.stores import InProcessStore
from gateway.config.cache import CacheSettings
from gateway.observability.usage import CallRecord
from gateway.protocols.request import Request

ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1_760_000_000, "model": "llama-3-1-8b",
    "choices": [
        {"index": 0, "finish_reason": "tool_calls", "logprobs": None,
         "message": {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
             {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": '{"tz": "CET"}'}}]}},
        {"index": 1, "finish_reason": "stop", "logprobs": None,
         "message": {"role": "assistant", "content": "It is cold in Oslo."}},
    ],
    "usage": {"prompt_tokens": 21, "completion_tokens": 17, "total_tokens": 38},
}


def replayed(answer: dict[str, Any], include_usage: bool) -> list[ChatCompletionChunk]:
    chunks = events(b"".join(sse_chunks("chat", answer, include_usage)))
    assert chunks[-1] == b"[DONE]"
    return [ChatCompletionChunk.model_validate(orjson.loads(c)) for c in chunks[:-1]]


def test_the_openai_clients_accumulator_rebuilds_the_cached_answer_from_its_replay() -> None:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    chunks = replayed(ANSWER, include_usage=True)
    for chunk in chunks:
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_a", "weather", '{"city": "Oslo"}'), ("call_b", "time", '{"tz": "CET"}')]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.choices[1].message.content == "It is cold in Oslo." and final.choices[1].finish_reason == "stop"
    assert final.usage is not None and final.usage.total_tokens == 38 and final.id == "chatcmpl-1"
    assert chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1])


def test_no_usage_chunk_unless_asked() -> None:
    assert all(c.usage is None and c.choices for c in replayed(ANSWER, include_usage=False))


def test_a_stream_assembled_from_its_chunks_is_the_whole_answer() -> None:
    data = b"".join(sse_chunks("chat", ANSWER, include_usage=False))
    rebuilt = assemble("chat", events(data), (21, 17))
    assert rebuilt == {**ANSWER, "choices": [
        {**ANSWER["choices"][0], "message": {**ANSWER["choices"][0]["message"]}}, ANSWER["choices"][1]]}
    assert keepable(rebuilt)


def test_a_stream_that_did_not_end_is_not_an_answer() -> None:
    chunks = events(b"".join(sse_chunks("chat", ANSWER, include_usage=False)))
    assert assemble("chat", chunks[:-1], (21, 17)) is None
    assert assemble("chat", [b"{not json", b"[DONE]"], (1, 1)) is None


def test_answers_cut_short_or_unfinished_are_not_kept() -> None:
    cut = {**ANSWER, "choices": [{**ANSWER["choices"][1], "finish_reason": "length"}]}
    assert not keepable(cut)
    assert not keepable({**ANSWER, "usage": None})


def test_fields_that_do_not_change_the_answer_are_not_in_the_key() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    same = {**body, "user": "ana", "stream": True, "stream_options": {"include_usage": True},
            "metadata": {"a": 1}, "cache": {"no-cache": False}}
    assert entry_id("t:search", "chat", "m", body) == entry_id("t:search", "chat", "m", same)
    assert entry_id("t:search", "chat", "m", body) != entry_id("t:ads", "chat", "m", body)
    assert entry_id("t:search", "chat", "m", body) != entry_id("t:search", "chat", "rung-2", body)
    for change in ({"temperature": 0.0001}, {"seed": 1}, {"tools": []}, {"n": 2}, {"stop": ["x"]}, {"top_p": 0.5},
                   {"response_format": {"type": "json_object"}}, {"logprobs": True}, {"unknown": 1}):
        assert entry_id("t:search", "chat", "m", {**body, **change}) != entry_id("t:search", "chat", "m", body)


def test_sampling_and_opt_outs_are_read_as_documented() -> None:
    assert samples({}) and samples({"temperature": 0.2}) and samples({"temperature": "0"})
    assert not samples({"temperature": 0}) and not samples({"temperature": 0.0})
    assert opt_out({}, {}) == (True, True)
    assert opt_out({"Cache-Control": "max-age=0, No-Cache"}, {}) == (False, True)
    assert opt_out({"Cache-Control": "no-store"}, {}) == (False, False)
    assert opt_out({}, {"cache": {"no-store": True}}) == (False, False)
    assert opt_out({}, {"cache": {"no-cache": "yes"}}) == (True, True), "only a JSON true opts out"


class Relayed:
    """A stream adapter that sends what it is fed (the relay's view of one), with the stream's metered tokens."""

    prompt_tokens, completion_tokens, done = 12, 5000, False

    def feed(self, raw: bytes, data: bytes) -> bytes:
        return data


def token_chunk(text: str, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1,
                                     "model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                                                "logprobs": None, "finish_reason": finish}]}) + b"\n\n"


async def test_a_covered_stream_holds_about_its_answer_not_its_chunks() -> None:
    # Each token comes wrapped in some 170 bytes of JSON: holding a stream's chunks until its end cost some 40 times
    # its answer, per stream in flight.
    settings = CacheSettings(models=["m"])
    cache = ResponseCache(settings, InProcessStore(60, 1 << 30), None, None, str, lambda *a, **k: None)
    record = CallRecord("r-1", endpoint="chat", status=200)
    call = CacheCall(cache, Request("chat", b"{}", {}, "m", True, False), record, {}, "entry")
    call.write = True
    opened = SimpleNamespace(adapter=Relayed(), body=b"")
    before_eof = call.tap(opened, None)
    assert before_eof is not None
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            opened.adapter.feed(b"", token_chunk("word "))
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    relayed = 5000 * len(token_chunk("word "))
    assert held < relayed / 10, f"{held} bytes held for a {relayed}-byte stream of a 25,000-character answer"
    opened.adapter.feed(b"", token_chunk("", "stop") + b"data: [DONE]\n\n")
    before_eof(record)
    await cache.settle()
    stored = orjson.loads(await cache.store.get("entry") or b"{}")
    assert stored["choices"][0]["message"]["content"] == "word " * 5000
    assert stored["usage"] == {"prompt_tokens": 12, "completion_tokens": 5000, "total_tokens": 5012}
