"""Upstream faults on a real socket, against a running gateway: every call answered in time, cleanly, and accounted.

A raw TCP upstream (faulty_upstream.py) answers with scripted bytes: framing faults, encoding faults and
stream faults. Whatever it sends, the gateway's client gets an answer within the configured timeouts (a
clean 200, or a 4xx/5xx with a JSON error body, or an error event once a stream began), never a 200 with a
corrupted body; no provider key appears in any answer or log line; no limiter slot stays held; and every
call the client accepted is in the spend ledger.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import StreamReader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.limits import UpstreamLimits
from gateway.protocols.sse import EventReader, EventTooLarge, TruncatedStream
from gateway.upstream.client import Answer, UpstreamClosed, UpstreamLimitExceeded, _Connection
from gateway.upstream.redaction import redact
from tests.gateway.conftest import KEY, MODEL, RunningGateway, deployment, gateway_config
from tests.gateway.faulty_upstream import (
    CLOSE,
    HANG,
    FaultyUpstream,
    Step,
    chat_answer,
    chunked,
    delta,
    gzip_bomb,
    gzipped,
    http,
    sse_chunk,
    sse_head,
    stream,
    usage_event,
)
from tests.gateway.test_keys_admin import admin

SECRET = "sk-provider-0123456789abcdefSECRETSECRET"  # the deployment's provider key: must never come back
TIMEOUTS = {"connect": 1, "first_byte": 1, "idle": 0.5, "total": 2}
LIMITS = {"header_bytes": 4096, "body_bytes": 65536, "decompressed_bytes": 262144, "sse_event_bytes": 65536}
DEADLINE = TIMEOUTS["total"] * 2 + 2  # no call may take longer, whatever the upstream does
OK_TEXT = "hello from a raw upstream"
GOOD = chat_answer(OK_TEXT)


def echo(status: bytes) -> Callable[[bytes], list[Step]]:
    """An error answer that quotes the request head, Authorization header included (as some providers do)."""
    return lambda request: [http(orjson.dumps({"error": {"message": "bad key in: " + request.decode()}}), status)]


def slow_drip(request: bytes) -> list[Step]:
    steps: list[Step] = [b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n"]
    for _ in range(20):
        steps += [0.3, b" "]
    return steps


# name -> (stream, script, expected: "ok", "error", "limit:<field>", "stream_error", "stream_ok", or a status)
SCENARIOS: dict[str, tuple[bool, Any, str]] = {
    "chunk size -6": (False, [chunked(GOOD, sizes=[b"-6"])], "error"),
    "chunk size 0x10": (False, [chunked(GOOD, sizes=[b"0x10"])], "error"),
    "chunk without CRLF": (False, [chunked(GOOD).replace(GOOD + b"\r\n", GOOD)], "error"),
    "valid chunks": (False, [chunked(GOOD[:10], GOOD[10:])], "ok"),
    "content-length over the body, then close": (False, [http(GOOD, length=len(GOOD) + 10), CLOSE], "error"),
    "content-length under the body": (False, [http(GOOD, length=len(GOOD) - 3)], "error"),
    "content-length and chunked": (False, [chunked(GOOD).replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n", 1)],
                                   "error"),
    "duplicate content-length": (False, [http(GOOD, headers=b"Content-Length: 3\r\n")], "error"),
    "header over the limit": (False, [http(GOOD, headers=b"X-Pad: " + b"p" * 5000 + b"\r\n")], "limit:header_bytes"),
    "body over the limit": (False, [http(chat_answer("x" * 70000))], "limit:body_bytes"),
    "gzip bomb": (False, [http(gzip_bomb(8 * 1024 * 1024), headers=b"Content-Encoding: gzip\r\n")],
                  "limit:decompressed_bytes"),
    "gzip answer": (False, [http(gzipped(GOOD), headers=b"Content-Encoding: gzip\r\n")], "ok"),
    "unknown encoding": (False, [http(GOOD, headers=b"Content-Encoding: br\r\n")], "error"),
    "corrupt gzip": (False, [http(b"\x1f\x8b" + GOOD, headers=b"Content-Encoding: gzip\r\n")], "error"),
    "bytes after the answer": (False, [http(GOOD) + http(chat_answer("STRAY"))], "ok"),
    "close mid-body": (False, [http(GOOD)[:-20], CLOSE], "error"),
    "slowloris upstream": (False, slow_drip, "error"),
    "silent upstream": (False, [HANG], "error"),
    "usage negative": (False, [http(chat_answer(OK_TEXT, {"prompt_tokens": -5, "completion_tokens": -9}))], "ok"),
    "usage 2**64": (False, [http(chat_answer(OK_TEXT, {"prompt_tokens": 2**64, "completion_tokens": 1}))], "ok"),
    "usage a string": (False, [http(chat_answer(OK_TEXT, "lots"))], "ok"),
    "401 echoing the key": (False, echo(b"401 Unauthorized"), "503"),
    "400 echoing the key": (False, echo(b"400 Bad Request"), "400"),
    # The upstream's 429 reaches the client, as with LiteLLM (gateway/upstream/outcomes.py).
    "retry-after forever": (False, [http(b'{"error":"busy"}', b"429 Too Many", b"Retry-After: inf\r\n")], "429"),
    "stream ok": (True, stream(delta("hel"), delta("lo"), usage_event({"prompt_tokens": 5, "completion_tokens": 2})),
                  "stream_ok"),
    "stream event over the limit first": (True, stream(b"data: " + b"x" * 70000 + b"\n\n"),
                                          "limit:sse_event_bytes"),
    "stream event over the limit mid-stream": (True, stream(delta("a"), b"data: " + b"x" * 70000 + b"\n\n"),
                                               "stream_error"),
    "stream event without data": (True, stream(b": keep-alive\n\n", b"event: ping\n\n", delta("a")), "stream_ok"),
    "stream error string mid-stream": (True, stream(delta("a"), b'data: {"error": "x"}\n\n'), "stream_error"),
    "stream error echoing the key": (True, lambda r: stream(delta("a"), b'data: {"error": "' + r[:300].replace(
        b"\r\n", b" ").replace(b'"', b"'") + b'"}\n\n'), "stream_error"),
    "stream usage a string": (True, stream(delta("a"), usage_event("many")), "stream_ok"),
    "stream usage negative": (True, stream(delta("a"), usage_event({"prompt_tokens": -1, "completion_tokens": -1})),
                              "stream_ok"),
    "stream usage 2**64": (True, stream(delta("a"), usage_event({"prompt_tokens": 2**64, "completion_tokens": 2})),
                           "stream_ok"),
    "stream without [DONE]": (True, stream(delta("a"), done=False), "stream_error"),
    "stream closed before usage": (True, [*stream(delta("a"), done=False, end=False), CLOSE], "stream_error"),
    "stream stalls": (True, [*stream(delta("a"), done=False, end=False), HANG], "stream_error"),
    "stream not SSE": (True, [sse_head(), sse_chunk(b"data: {not json\n\n"), b"0\r\n\r\n"], "error"),
    "stream gzipped": (True, [sse_head().replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n"),
                              sse_chunk(gzipped(delta("a"))), b"0\r\n\r\n"], "error"),
}


def governed(upstream: FaultyUpstream, tmp_path: Path) -> dict[str, Any]:
    config = gateway_config([deployment("raw", upstream.base_url, api_key=SECRET)],
                            retries={"attempts": 0}, timeouts=TIMEOUTS, upstream_limits=LIMITS,
                            circuit_breaker={"failures": 1000})  # every fault must reach the one upstream
    config["models"][0].update(input_cost_per_token=0.001, output_cost_per_token=0.002)
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                        "flush_interval": 0.05}
    return config


async def call(gw: RunningGateway, key: str, stream_: bool, rid: str) -> tuple[int, bytes]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream_}
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {key}", "x-request-id": rid}) as resp:
            return resp.status, await resp.read()


async def ledger_rows(gw: RunningGateway, db_path: Path, wanted: set[str], timeout: float = 5) -> dict[str, int]:
    """request_id -> tokens of the ledger's rows, once `wanted` are all there (or the timeout passed).
    Polled: a flush the ledger's own loop started may still be inserting rows when ours returns."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await gw.state.governance.ledger.flush()
        with sqlite3.connect(db_path) as db:
            rows = dict(db.execute("SELECT request_id, prompt_tokens + completion_tokens FROM llmp_spend").fetchall())
        if wanted <= set(rows) or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.05)


def judge(name: str, expected: str, status: int, body: bytes) -> bool:
    """Check one answer against what the scenario must produce; True when the client accepted it."""
    assert SECRET.encode() not in body and b"SECRETSECRET" not in body, f"{name}: the provider key came back"
    if expected in ("ok", "stream_ok"):
        assert status == 200, (name, status, body[:300])
        if expected == "ok":
            answer = orjson.loads(body)
            assert answer["choices"][0]["message"]["content"] == OK_TEXT, name
        else:
            assert body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body, (name, body[-300:])
        return True
    if expected == "stream_error":
        assert status == 200, (name, status)
        last = body.strip().split(b"\n\n")[-1]
        assert last.startswith(b"data: ") and "error" in orjson.loads(last[6:]), (name, body[-300:])
        assert not body.endswith(b"data: [DONE]\n\n"), name
        return False
    # LiteLLM's statuses once attempts are exhausted (gateway/upstream/outcomes.py): 500 for a broken or
    # unreadable answer, 408 for a timeout, the upstream's own 429 / 5xx; 502 for our size limits.
    assert status in (400, 408, 429, 500, 502, 503, 504), (name, status, body[:300])
    error = orjson.loads(body)["error"]
    assert error["message"], name
    if expected.startswith("limit:"):
        assert status == 502 and f"gateway.upstream_limits.{expected[6:]}" in error["message"], (name, error)
    elif expected.isdigit():
        assert status == int(expected), (name, status, error)
    return False


async def test_every_fault_is_answered_in_time_cleanly_without_secrets_and_accounted(gateway_factory, tmp_path):
    current: list[Any] = [None]
    upstream = await FaultyUpstream(lambda request: current[0](request)).start()
    try:
        gw = await gateway_factory(governed(upstream, tmp_path))
        status, made = await admin(gw, "POST", "/key/generate", {"max_parallel_requests": 1})
        assert status == 200, made
        accepted = []
        loop = asyncio.get_running_loop()
        for i, (name, (is_stream, script, expected)) in enumerate(SCENARIOS.items()):
            current[0] = script if callable(script) else (lambda _r, steps=script: list(steps))
            started = loop.time()
            status, body = await asyncio.wait_for(call(gw, made["key"], is_stream, f"fault-{i}"), DEADLINE)
            assert loop.time() - started < DEADLINE, name
            if judge(name, expected, status, body):
                accepted.append(f"fault-{i}")
        # No limiter slot was left held: the one-at-a-time key still gets a call through.
        current[0] = lambda _r: [http(GOOD)]
        status, body = await call(gw, made["key"], False, "after-faults")
        assert status == 200, body
        accepted.append("after-faults")
        calls = await gw.logged_calls(len(SCENARIOS) + 1)
        assert SECRET.encode() not in gw.log_buffer.getvalue() and b"SECRETSECRET" not in gw.log_buffer.getvalue()
        rows = await ledger_rows(gw, tmp_path / "ledger.db", set(accepted))
        assert set(accepted) <= set(rows), "every accepted call is in the ledger"
        assert all(0 < tokens < 10**9 for rid, tokens in rows.items() if rid in accepted), rows
        assert all(c["prompt_tokens"] >= 0 and c["completion_tokens"] >= 0 for c in calls)
    finally:
        await upstream.stop()


@pytest.mark.parametrize("stream_", [False, True])
async def test_an_upstream_echoing_the_provider_key_in_a_401_leaks_it_nowhere(gateway_factory, stream_) -> None:
    upstream = await FaultyUpstream(echo(b"401 Unauthorized")).start()
    try:
        gw = await gateway_factory(gateway_config([deployment("raw", upstream.base_url, api_key=SECRET)],
                                                  timeouts=TIMEOUTS))
        status, body = await call(gw, KEY, stream_, "echo")
        # A refusal of our credentials reaches the client as its class alone; its text, redacted, only the log.
        assert status == 503 and b"raw: http_401;" in body and b"[redacted]" not in body
        assert SECRET.encode() not in body and b"SECRETSECRET" not in body
        [logged] = await gw.logged_calls(1)
        assert "[redacted]" in logged["error"] and SECRET.encode() not in gw.log_buffer.getvalue()
        assert upstream.requests and SECRET.encode() in upstream.requests[0], "the upstream did get the key"
    finally:
        await upstream.stop()


# ---- generated byte sequences, fed to the parser directly --------------------------------------------------------

FUZZ_LIMITS = UpstreamLimits(header_bytes=1024, body_bytes=4096, decompressed_bytes=8192, sse_event_bytes=1024)


class Transport:
    closed = False

    def write(self, data: bytes) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def parse(pieces: list[bytes], close: bool = True) -> tuple[Answer | BaseException | None, bool]:
    """What a caller gets when an upstream sends `pieces` as successive reads (then closes, if `close`),
    and whether the connection was dropped."""

    async def run() -> tuple[Answer | BaseException | None, bool]:
        conn = _Connection(FUZZ_LIMITS)
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        conn.expect(future, 5, 5)
        for piece in pieces:
            conn.data_received(piece)
        if close and not future.done():
            conn.connection_lost(None)
        if not future.done():
            future.cancel()
            return None, transport.closed
        return (future.exception() or future.result()), transport.closed

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


HEAD_PARTS = [b"HTTP/1.1 ", b"HTTP/1.0 ", b"HTTP/2 ", b"200", b"100", b"204", b"-1", b"99999", b" OK", b"\r\n", b"\n",
              b"Content-Length: ", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
              b"Content-Encoding: gzip", b"Connection: close", b"Connection: keep-alive", b"0", b"5", b"-6",
              b"0x10", b"ffffffffffffffffff", b":", b" ", b"\t", b"\x00", b"\r\n\r\n", b"{}", b"hello"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(HEAD_PARTS) | st.binary(max_size=12), max_size=30),
       st.lists(st.integers(min_value=0, max_value=400), max_size=4), st.booleans())
def test_any_answer_head_is_parsed_or_refused_never_misread(parts: list[bytes], cuts: list[int], close: bool) -> None:
    data = b"".join(parts)
    outcome, dropped = parse(split(data, cuts), close)
    if isinstance(outcome, Answer):
        assert 200 <= outcome.status <= 999 and len(outcome.body) <= FUZZ_LIMITS.decompressed_bytes
    elif outcome is not None:
        assert isinstance(outcome, UpstreamClosed | UpstreamLimitExceeded), repr(outcome)
        assert dropped, "a connection that failed is never pooled"


CHUNK = st.binary(min_size=1, max_size=40)
SIZE_FAULTS = [None, b"-{n}", b"0x{n}", b"+{n}", b" {n}", b"{n} ", b"{n};ext=1", b"{n};ext=\"a b\"", b"{n}\t", b"0{n}"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CHUNK, min_size=1, max_size=6), st.lists(st.sampled_from(SIZE_FAULTS), min_size=6, max_size=6),
       st.lists(st.integers(min_value=0, max_value=600), max_size=5), st.binary(max_size=8))
def test_chunked_framing_is_exact_or_refused(chunks: list[bytes], faults: list[bytes | None], cuts: list[int],
                                             after: bytes) -> None:
    sizes = []
    for chunk, fault in zip(chunks, faults, strict=False):
        hexed = f"{len(chunk):x}".encode()
        sizes.append(hexed if fault is None else fault.replace(b"{n}", hexed))
    framed = chunked(*chunks, sizes=sizes) + after
    outcome, dropped = parse(split(framed, cuts), close=False)
    exact = all(s == f"{len(c):x}".encode() or s.startswith(f"{len(c):x};".encode()) or s == b"0" + f"{len(c):x}"
                .encode() for s, c in zip(sizes, chunks, strict=True))
    if isinstance(outcome, Answer):
        assert exact, f"a malformed size line was accepted: {sizes}"
        assert outcome.body == b"".join(chunks)
        # llhttp skips blank lines between answers (RFC 9112 section 2.2): they carry nothing to misread.
        assert dropped or not after.strip(b"\r\n"), "bytes after the answer drop the connection"
    else:
        assert not exact, f"well-formed chunks refused: {sizes} -> {outcome!r}"
        assert isinstance(outcome, UpstreamClosed | UpstreamLimitExceeded), repr(outcome)


class Reading:
    """The half of a protocol aiohttp's StreamReader talks to."""

    _reading_paused = False

    def pause_reading(self, *args: Any, **kwargs: Any) -> None:
        return None

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        return None


def read_events(pieces: list[bytes], max_bytes: int) -> tuple[list[bytes], BaseException | None]:
    async def run() -> tuple[list[bytes], BaseException | None]:
        content = StreamReader(Reading(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        for piece in pieces:
            content.feed_data(piece)
        content.feed_eof()
        reader = EventReader(content, max_bytes)
        found: list[bytes] = []
        try:
            while (event := await reader.next()) is not None:
                assert len(event[0]) <= max_bytes + 1
                found.append(event[1])
        except (TruncatedStream, EventTooLarge) as exc:
            return found, exc
        return found, None

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


SSE_PARTS = [b"data: ", b"data:", b"event: x", b": comment", b"id: 1", b"\n", b"\r\n", b"\n\n", b"{}", b"[DONE]",
             b"x" * 100]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(SSE_PARTS) | st.binary(max_size=10), max_size=40),
       st.lists(st.integers(min_value=0, max_value=2000), max_size=5))
def test_any_event_stream_is_split_into_bounded_events_or_refused(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    events, error = read_events(split(data, cuts), 256)
    assert error is None or isinstance(error, TruncatedStream | EventTooLarge)
    assert all(len(e) <= 256 for e in events)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=8),
       st.lists(st.integers(min_value=0, max_value=3000), max_size=5))
def test_well_formed_events_come_out_as_sent(datas: list[bytes], cuts: list[int]) -> None:
    data = b"".join(b"data: " + d + b"\n\n" for d in datas)
    events, error = read_events(split(data, cuts), 1024)
    assert error is None and events == [d.strip() for d in datas]


@pytest.mark.parametrize("text", [
    "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz0123. You can find your API key at ...",
    "bad header Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc123 in request",
    '{"x-api-key": "ant-0123456789abcdef0123456789"}',
    "key=" + "k" * 30 + "9 rejected",
])
def test_upstream_error_text_is_redacted_and_capped(text: str) -> None:
    shown = redact(text * 3, ["k" * 30 + "9"])
    assert "[redacted]" in shown and len(shown) <= 200 and "\n" not in shown
    for secret in ("abcdefghijklmnopqrstuvwxyz0123", "eyJhbGciOiJIUzI1NiJ9", "0123456789abcdef0123456789", "k" * 30):
        assert secret not in shown
