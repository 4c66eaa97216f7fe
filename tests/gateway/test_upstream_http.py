"""The lean upstream client against raw HTTP/1.1 servers: framing, keep-alive, stale connections, errors."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from gateway.upstream.client import (
    ReplicaConnections,
    UpstreamClient,
    UpstreamClosed,
    UpstreamConnectError,
)
from tests.gateway.conftest import closed_port_url

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
