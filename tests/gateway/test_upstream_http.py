"""The lean upstream client against raw HTTP/1.1 servers: framing, keep-alive, stale connections, limits, errors."""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import time

import pytest

import gateway.upstream.client as client_module
from gateway.config.limits import UpstreamLimits
from gateway.upstream.client import (
    ReplicaConnections,
    UpstreamClient,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamLimitExceeded,
)
from tests.gateway.conftest import closed_port_url
from tests.gateway.faulty_upstream import gzip_bomb

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: "


class RawServer:
    """Answers each request with the next canned bytes; counts connections and requests."""

    def __init__(self, answers: list[bytes], close_after_each: bool = False) -> None:
        self.answers = answers
        self.close_after_each = close_after_each
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answers.pop(0))
                await writer.drain()
                if self.close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def __aenter__(self) -> ReplicaConnections:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return ReplicaConnections("127.0.0.1", self.server.sockets[0].getsockname()[1], False)

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body


async def test_content_length_answers_reuse_one_connection() -> None:
    server = RawServer([ok(b'{"a":1}'), ok(b'{"a":2}')])
    async with server as pool:
        client = UpstreamClient()
        first = await client.post(pool, HEAD, b"{}", 1, 2)
        second = await client.post(pool, HEAD, b'{"x":1}', 1, 2)
    assert (first.status, first.body, second.body) == (200, b'{"a":1}', b'{"a":2}')
    assert server.connections == 1 and server.requests[1].endswith(b'Content-Length: 7\r\n\r\n{"x":1}')


async def test_chunked_and_gzip_answers_are_decoded() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\n\r\n")
    packed = gzip.compress(b'{"z":true}')
    server = RawServer([chunked, ok(packed, b"Content-Encoding: gzip\r\n")])
    async with server as pool:
        client = UpstreamClient()
        assert (await client.post(pool, HEAD, b"{}", 1, 2)).body == b'{"a":1}'
        assert (await client.post(pool, HEAD, b"{}", 1, 2)).body == b'{"z":true}'


async def test_a_connection_closed_while_idle_is_replaced_transparently() -> None:
    server = RawServer([ok(b"1"), ok(b"2")], close_after_each=True)
    async with server as pool:
        client = UpstreamClient()
        assert (await client.post(pool, HEAD, b"{}", 1, 2)).body == b"1"
        await asyncio.sleep(0.05)  # the server has closed the pooled connection by now
        assert (await client.post(pool, HEAD, b"{}", 1, 2)).body == b"2"
    assert server.connections == 2


async def test_connection_close_and_body_until_eof() -> None:
    server = RawServer([b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nConnection: close\r\n\r\n{\"error\": \"busy\"}"],
                       close_after_each=True)
    async with server as pool:
        answer = await UpstreamClient().post(pool, HEAD, b"{}", 1, 2)
    assert (answer.status, answer.reason, answer.headers["retry-after"]) == (503, "Busy", "3")
    assert answer.body == b'{"error": "busy"}' and not pool.idle


async def test_an_answer_cut_short_is_an_error_not_a_short_body() -> None:
    server = RawServer([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half\":"], close_after_each=True)
    async with server as pool:
        with pytest.raises(UpstreamClosed):
            await UpstreamClient().post(pool, HEAD, b"{}", 1, 2)


async def test_refused_connection_and_silence() -> None:
    port = int(closed_port_url().split(":")[2].split("/")[0])
    with pytest.raises(UpstreamConnectError):
        await UpstreamClient().post(ReplicaConnections("127.0.0.1", port, False), HEAD, b"{}", 1, 2)
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    pool = ReplicaConnections("127.0.0.1", silent.sockets[0].getsockname()[1], False)
    with pytest.raises(TimeoutError):
        await UpstreamClient().post(pool, HEAD, b"{}", 1, 0.2)
    silent.close()


async def one_answer(raw: bytes, limits: UpstreamLimits | None = None, total: float = 2, idle: float | None = None):
    server = RawServer([raw], close_after_each=True)
    async with server as pool:
        kwargs = {} if limits is None else {"limits": limits}
        return await UpstreamClient().post(pool, HEAD, b"{}", 1, total, idle, **kwargs)


@pytest.mark.parametrize("size_line", [b"-6", b"0x10", b"+10", b" 10", b"10 10", b"fffffffffffffffffff"])
async def test_a_chunk_size_that_is_not_plain_hex_is_refused_at_once(size_line) -> None:
    # `int(x, 16)` took `-6` and span forever growing memory; llhttp takes hex digits only.
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\n{}\r\n0\r\n\r\n"
    started = time.monotonic()
    with pytest.raises(UpstreamClosed, match="unreadable HTTP answer"):
        await one_answer(raw)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}0\r\n\r\n",  # no CRLF after the data
    b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent Length: 2\r\n\r\n{}",
])
async def test_ambiguous_framing_is_refused(head) -> None:
    with pytest.raises(UpstreamClosed):
        await one_answer(head)


async def test_an_interim_100_continue_is_skipped() -> None:
    answer = await one_answer(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b'{"a":1}'))
    assert (answer.status, answer.body) == (200, b'{"a":1}')


async def test_bytes_after_an_answer_never_reach_the_next_caller() -> None:
    # Each answer comes with a stray second answer behind it: 5 of 6 callers used to get the stray one.
    answers = [ok(f'{{"n":{i}}}'.encode()) + ok(b'{"stray":true}') for i in range(6)]
    server = RawServer(answers)
    async with server as pool:
        client = UpstreamClient()
        bodies = [(await client.post(pool, HEAD, b"{}", 1, 2)).body for _ in range(6)]
    assert bodies == [f'{{"n":{i}}}'.encode() for i in range(6)]
    assert server.connections == 6, "a connection with unsolicited bytes is dropped, never pooled"


async def test_bytes_sent_while_a_connection_is_idle_drop_it() -> None:
    async def late_stray(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
            writer.write(ok(b'{"n":"own"}'))
            await asyncio.sleep(0.05)
            writer.write(ok(b'{"n":"stray"}'))  # while the connection sits in the pool

    server = await asyncio.start_server(late_stray, "127.0.0.1", 0)
    pool = ReplicaConnections("127.0.0.1", server.sockets[0].getsockname()[1], False)
    client = UpstreamClient()
    assert (await client.post(pool, HEAD, b"{}", 1, 2)).body == b'{"n":"own"}'
    await asyncio.sleep(0.15)
    assert (await client.post(pool, HEAD, b"{}", 1, 2)).body == b'{"n":"own"}'
    server.close()


class ClosingAfterFirst:
    """Answers the first request; on the second, closes: after reading it (FIN), or unread with a reset (RST)."""

    def __init__(self, reset: bool) -> None:
        self.reset = reset
        self.requests = 0
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
            self.requests += 1
            if self.requests == 1 or self.connections > 1:
                writer.write(ok(b'{"n":%d}' % self.requests))
                continue
            if self.reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
            return


async def test_a_reused_connection_closed_after_our_request_is_a_failure_not_a_silent_resend() -> None:
    # The upstream may have read (and acted on) the request: re-sending it would run it twice unseen.
    behaviour = ClosingAfterFirst(reset=False)
    server = await asyncio.start_server(behaviour.handle, "127.0.0.1", 0)
    pool = ReplicaConnections("127.0.0.1", server.sockets[0].getsockname()[1], False)
    client = UpstreamClient()
    await client.post(pool, HEAD, b"{}", 1, 2)
    with pytest.raises(UpstreamClosed):
        await client.post(pool, HEAD, b"{}", 1, 2)
    assert behaviour.requests == 2, "sent once, not re-sent"
    server.close()


async def test_a_reused_connection_reset_before_reading_is_sent_again_on_a_new_one() -> None:
    behaviour = ClosingAfterFirst(reset=True)
    server = await asyncio.start_server(behaviour.handle, "127.0.0.1", 0)
    pool = ReplicaConnections("127.0.0.1", server.sockets[0].getsockname()[1], False)
    client = UpstreamClient()
    await client.post(pool, HEAD, b"{}", 1, 2)
    assert (await client.post(pool, HEAD, b"{}", 1, 2)).body == b'{"n":3}'
    assert behaviour.connections == 2
    server.close()


SMALL = UpstreamLimits(header_bytes=1024, body_bytes=4096, decompressed_bytes=65536, sse_event_bytes=1024)


@pytest.mark.parametrize("raw, field", [
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2000 + b"\r\nContent-Length: 2\r\n\r\n{}", "header_bytes"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000, "header_bytes"),  # never ends
    (ok(b"x" * 5000), "body_bytes"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 300000000\r\n\r\n{", "body_bytes"),  # refused before any body
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n" * 1
     + b"400\r\n" + b"x" * 1024 + b"\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n" + b"400\r\n" + b"x" * 1024
     + b"\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n", "body_bytes"),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 5000, "body_bytes"),  # until EOF
])
async def test_answers_over_the_upstream_limits_are_refused_by_name(raw, field) -> None:
    with pytest.raises(UpstreamLimitExceeded, match=f"gateway.upstream_limits.{field}"):
        await one_answer(raw, SMALL)


async def test_a_gzip_bomb_is_never_inflated_past_the_limit() -> None:
    bomb = gzip_bomb(16 * 1024 * 1024)  # 16 KiB that inflate to 16 MiB
    assert len(bomb) < SMALL.body_bytes * 8
    limits = UpstreamLimits(header_bytes=1024, body_bytes=len(bomb) + 1, decompressed_bytes=65536)
    with pytest.raises(UpstreamLimitExceeded, match="decompressed_bytes \\(65536\\)"):
        await one_answer(ok(bomb, b"Content-Encoding: gzip\r\n"), limits)


@pytest.mark.parametrize("encoding, body", [(b"br", b"{}"), (b"gzip", b"not gzip"),
                                            (b"gzip", gzip.compress(b"{}")[:-6])])
async def test_unknown_or_corrupt_encodings_are_refused(encoding, body) -> None:
    with pytest.raises(UpstreamClosed):
        await one_answer(ok(body, b"Content-Encoding: " + encoding + b"\r\n"))


async def test_idle_applies_once_an_answer_began_and_total_before_it() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
        await asyncio.sleep(0.4)  # generating: model servers send nothing before the whole answer
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}")
        await asyncio.sleep(5)  # then stalls mid-body
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    pool = ReplicaConnections("127.0.0.1", server.sockets[0].getsockname()[1], False)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"silent mid-answer for 0\.2s"):
        await UpstreamClient().post(pool, HEAD, b"{}", 1, 3, 0.2)
    assert 0.5 < time.monotonic() - started < 1.5, "idle applies once the answer began, total before"
    server.close()


async def test_a_connection_idle_past_the_reuse_bound_is_not_reused(monkeypatch) -> None:
    # A server closing an idle connection as we reuse it makes a request it may have read (uvicorn: after 5 s).
    monkeypatch.setattr(client_module, "REUSE_IDLE_MAX", 0.05)
    server = RawServer([ok(b"1"), ok(b"2"), ok(b"3")])
    async with server as pool:
        client = UpstreamClient()
        await client.post(pool, HEAD, b"{}", 1, 2)
        await client.post(pool, HEAD, b"{}", 1, 2)  # right away: reused
        await asyncio.sleep(0.1)
        await client.post(pool, HEAD, b"{}", 1, 2)
    assert server.connections == 2
