"""A lean HTTP/1.1 keep-alive client for whole (non-streaming) upstream answers, one connection pool per replica.

Why not aiohttp's client here: measured on the benchmark machine, an aiohttp
server forwarding through aiohttp's client spent about 136 us of CPU per call,
and about 52 us through this client; the difference is ClientRequest and
ClientResponse machinery (cookies, redirects, proxies, tracing) that a proxy to
known upstreams never uses. Streams still go through aiohttp's client, where a
call lasts seconds and that cost does not matter.

It speaks what model servers answer: Content-Length or chunked bodies, or a
body ended by closing; keep-alive unless the server says `Connection: close`;
gzip/deflate only if the server ignores our `Accept-Encoding: identity`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from typing import Any

IDLE_PER_REPLICA = 256


class UpstreamConnectError(ConnectionError):
    """The upstream could not be reached (refused, unreachable, TLS failure)."""


class UpstreamConnectTimeout(TimeoutError):
    """No connection within the connect limit."""


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before its answer was complete."""


class Answer:
    """Status, lower-cased headers and body of a whole upstream answer."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one answer at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._buf = bytearray()
        self._future: asyncio.Future[Answer] | None = None
        self._got_bytes = False
        self._reset()

    def _reset(self) -> None:
        self._head: tuple[int, str, dict[str, str]] | None = None
        self._length = -1  # body bytes expected; -1 unknown
        self._chunked = False
        self._to_eof = False
        self._parts: list[bytes] = []
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def expect(self, future: asyncio.Future[Answer]) -> None:
        self._future = future
        self._got_bytes = False
        self._buf.clear()  # bytes a server sent between answers (a 408 before closing) belong to no request
        self._reset()

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except ValueError as exc:
            self._fail(UpstreamClosed(f"unreadable HTTP answer: {exc}"))
            self.close()

    def _parse(self) -> None:
        buf = self._buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise ValueError("header section too large")
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            status = int(code)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                return self._parse()  # interim answer: the real one follows
            self._head = (status, reason, headers)
            connection = headers.get("connection", "").lower()
            self._keep_alive = not (connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive"))
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked = True
            elif "content-length" in headers:
                self._length = int(headers["content-length"])
            elif status in (204, 304):
                self._length = 0
            else:
                self._to_eof = True
                self._keep_alive = False
        if self._chunked:
            while True:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    return
                size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
                if size == 0:
                    no_trailer = buf[line_end + 2: line_end + 4] == b"\r\n"
                    trailer_end = line_end if no_trailer else buf.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0:
                        return
                    del buf[: trailer_end + 4]
                    return self._complete()
                if len(buf) < line_end + 2 + size + 2:
                    return
                self._parts.append(bytes(buf[line_end + 2: line_end + 2 + size]))
                del buf[: line_end + 2 + size + 2]
        if self._length >= 0 and len(buf) >= self._length:
            self._parts.append(bytes(buf[: self._length]))
            del buf[: self._length]
            self._complete()

    def _complete(self) -> None:
        assert self._head is not None
        status, reason, headers = self._head
        body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            body = zlib.decompress(body, 47)  # 47: gzip or zlib header, detected
        future, self._future = self._future, None
        if not self._keep_alive:
            self.close()
        if future is not None and not future.done():
            future.set_result(Answer(status, reason, headers, body))

    def _fail(self, exc: BaseException) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._future is not None and self._to_eof and self._head is not None:
            self._parts.append(bytes(self._buf))
            self._complete()
            return
        if self._future is not None:
            stale = self.reused and not self._got_bytes
            error = _StaleConnection() if stale else UpstreamClosed("upstream closed the connection mid-answer")
            self._fail(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def idle(self) -> bool:
        return self._future is None and not self.closed


class _StaleConnection(Exception):
    """A pooled connection the server had closed while idle: send again on a new one."""


class ReplicaConnections:
    """The idle connections to one replica."""

    def __init__(self, host: str, port: int, tls: bool) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.idle: collections.deque[_Connection] = collections.deque()


class UpstreamClient:
    """Sends one request and returns the whole answer, reusing connections per replica."""

    def __init__(self) -> None:
        self._tls: ssl.SSLContext | None = None

    def tls(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def post(self, pool: ReplicaConnections, head: bytes, body: bytes, connect_timeout: float,
                   first_byte_timeout: float) -> Answer:
        message = head + str(len(body)).encode() + b"\r\n\r\n" + body
        try:
            return await self._send(pool, message, connect_timeout, first_byte_timeout, reuse=True)
        except _StaleConnection:
            return await self._send(pool, message, connect_timeout, first_byte_timeout, reuse=False)

    async def _send(self, pool: ReplicaConnections, message: bytes, connect_timeout: float,
                    first_byte_timeout: float, reuse: bool) -> Answer:
        loop = asyncio.get_running_loop()
        conn = None
        while reuse and pool.idle:
            candidate = pool.idle.pop()
            if candidate.idle:
                conn = candidate
                conn.reused = True
                break
        if conn is None:
            conn = await self._connect(loop, pool, connect_timeout)
        future: asyncio.Future[Answer] = loop.create_future()
        conn.expect(future)
        assert conn.transport is not None
        conn.transport.write(message)
        timer = loop.call_later(first_byte_timeout, _expire, future, first_byte_timeout)
        try:
            answer = await future
        except BaseException:
            conn.close()  # cancelled (client gone), timed out or broken: never reuse it
            raise
        finally:
            timer.cancel()
        if conn.idle and len(pool.idle) < IDLE_PER_REPLICA:
            pool.idle.append(conn)
        return answer

    async def _connect(self, loop: asyncio.AbstractEventLoop, pool: ReplicaConnections,
                       timeout: float) -> _Connection:
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    _Connection, pool.host, pool.port, ssl=self.tls() if pool.tls else None,
                    server_hostname=pool.host if pool.tls else None,
                )
        except TimeoutError:
            raise UpstreamConnectTimeout(f"no connection to {pool.host}:{pool.port} within {timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"{pool.host}:{pool.port}: {exc.strerror or exc}") from None
        return conn

    def close(self, pools: list[Any]) -> None:
        for pool in pools:
            while pool.idle:
                pool.idle.pop().close()


def _expire(future: asyncio.Future[Answer], seconds: float) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"no complete answer within {seconds:g}s"))
