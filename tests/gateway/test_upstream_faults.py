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
    "retry-after forever": (False, [http(b'{"error":"busy"}', b"429 Too Many", b"Retry-After: inf\r\n")], "503"),
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
    assert status in (400, 502, 503, 504), (name, status, body[:300])
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
        assert status == 503 and b"http_401" in body and b"[redacted]" in body
        assert SECRET.encode() not in body and b"SECRETSECRET" not in body
        await gw.logged_calls(1)
        gw.state.log.flush() if hasattr(gw.state.log, "flush") else None
        assert SECRET.encode() not in gw.log_buffer.getvalue()
        assert upstream.requests and SECRET.encode() in upstream.requests[0], "the upstream did get the key"
    finally:
        await upstream.stop()
