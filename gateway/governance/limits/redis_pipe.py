"""One pipelined Redis connection for the limiter's scripts: commands written back to back, replies matched in order.

Why not redis-py's asyncio client: the limiter makes one call per request, and the pool
client spends ~100 us of CPU per call (connection checkout, command machinery) and fails
with "Too many connections" past its pool size under bursts. A single connection carrying
every call in flight, in order (RESP is strictly ordered per connection), costs a few
microseconds per call and pipelines naturally under load.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse


class RedisReplyError(Exception):
    """Redis answered with an error (`-ERR ...`)."""


class ScriptNotRun(RedisReplyError):
    """Redis no longer knew the script (NOSCRIPT): nothing of it ran."""


# Replies that say Redis cannot serve anyone right now (loading, busy, not authenticated, a replica or cluster
# mid-failover), not that this command was wrong; redis-py likewise raises BusyLoadingError and
# AuthenticationError, both ConnectionError subclasses, for LOADING and auth failures (redis/exceptions.py).
# OOM: maxmemory reached under noeviction, every write refused; NOREPLICAS: min-replicas-to-write unmet.
OUTAGE_REPLIES = ("LOADING", "BUSY", "NOAUTH", "WRONGPASS", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN",
                  "MISCONF", "OOM", "NOREPLICAS")


def is_outage(exc: BaseException) -> bool:
    """Whether a failure means Redis is unreachable or unable (outage: fail-open or fail-closed for every call),
    as opposed to a command Redis refused (`-ERR ...`: this call's bug or input, never everyone's outage)."""
    if isinstance(exc, RedisReplyError):
        return str(exc).split(" ", 1)[0] in OUTAGE_REPLIES
    return isinstance(exc, (OSError, TimeoutError, EOFError))


def encode_args(args: Any) -> bytes:
    """Arguments as RESP bulk strings, without the array header (see `Encoded`)."""
    out = []
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Encoded:
    """A run of arguments encoded once and sent many times (e.g. a scope's limits on every call)."""

    __slots__ = ("count", "data")

    def __init__(self, args: list[Any]) -> None:
        self.count = len(args)
        self.data = encode_args(args)


def encode(args: tuple[Any, ...], tail: Encoded | None = None) -> bytes:
    if tail is None:
        return b"*%d\r\n" % len(args) + encode_args(args)
    return b"*%d\r\n" % (len(args) + tail.count) + encode_args(args) + tail.data


def parse(buf: bytes, pos: int) -> tuple[Any, int] | None:
    """One RESP2 reply from buf[pos:], or None when it is not complete yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    nxt = end + 2
    if kind == b"+":
        return line, nxt
    if kind == b":":
        return int(line), nxt
    if kind == b"-":
        return RedisReplyError(line.decode(errors="replace")), nxt
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            return None
        return buf[nxt:nxt + n], nxt + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            got = parse(buf, nxt)
            if got is None:
                return None
            item, nxt = got
            items.append(item)
        return items, nxt
    raise RedisReplyError(f"unexpected reply type {kind!r}")


def _bulk_size(buf: bytes, pos: int) -> int:
    """The whole size of the bulk string reply starting at buf[pos] when it is one and longer than 64 KiB; else 0."""
    if buf[pos:pos + 1] != b"$":
        return 0
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return 0
    try:
        size = end + 2 - pos + int(buf[pos + 1:end]) + 2
    except ValueError:
        return 0
    return size if size > 65536 else 0


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.buf = b""
        # A long bulk reply (a cached answer: gateway/cache/stores.py) arrives in many reads: its parts are gathered
        # and joined once it is whole, rather than the buffer copied and re-parsed at every read (quadratic: a 64 MiB
        # GET took 4.3 s here, 1 MiB 3.7 ms).
        self.parts: list[bytes] = []
        self.have = 0
        self.need = 0
        self.lost = False
        self.out: list[bytes] = []  # commands of this loop iteration, written together (one syscall)

    def send(self, data: bytes) -> None:
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(data)

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and not self.lost:
            self.transport.write(b"".join(out))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.need:
            self.parts.append(data)
            self.have += len(data)
            if self.have < self.need:
                return
            data, self.parts, self.have, self.need = b"".join(self.parts), [], 0, 0
        buf = self.buf + data if self.buf else data
        pos = 0
        while pos < len(buf):
            try:
                got = parse(buf, pos)
            except (ValueError, RedisReplyError) as exc:
                self._fail(ConnectionError(f"bad reply from redis: {exc}"))
                if self.transport is not None:
                    self.transport.close()
                return
            if got is None:
                self.need = _bulk_size(buf, pos)
                if self.need:
                    self.parts, self.have = [buf[pos:]], len(buf) - pos
                    pos = len(buf)
                break
            value, pos = got
            if self.waiting:
                fut = self.waiting.popleft()
                if not fut.done():  # a caller that timed out left: its reply is read and dropped
                    if isinstance(value, RedisReplyError):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        self.buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionError(f"redis connection lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)


class RedisPipe:
    """`redis://[user:password@]host[:port][/db]` or `rediss://...`; connects lazily, reconnects after a loss."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        if u.scheme not in ("redis", "rediss"):
            raise ValueError(f"{url!r}: the limiter speaks redis:// and rediss:// URLs")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.db = int(u.path.lstrip("/") or 0)
        self.tls = u.scheme == "rediss"
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._waiting_to_send = 0  # calls queued behind a connection attempt: later calls queue behind them
        self._shas: dict[str, str] = {}

    async def _connection(self) -> _Protocol:
        """The connection, made if needed; callers get it in the order they asked (the lock is FIFO)."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.lost:
                return self._proto
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_connection(_Protocol, self.host, self.port,
                                                    ssl=ssl.create_default_context() if self.tls else None)
            try:
                if self.password is not None:
                    auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                    await self._send(proto, encode(auth))
                if self.db:
                    await self._send(proto, encode(("SELECT", self.db)))
            except BaseException:
                if proto.transport is not None:
                    proto.transport.close()
                raise
            # A new connection may be a new Redis: each script's first use on it is an EVAL, so that no
            # NOSCRIPT retry can let a later call run before it.
            self._shas.clear()
            self._proto = proto
            return proto

    async def call(self, *args: Any, tail: Encoded | None = None) -> Any:
        """Send a command and wait for its reply. Commands reach Redis in the order `call` was entered."""
        proto = self._proto
        if proto is None or proto.lost or self._waiting_to_send:
            self._waiting_to_send += 1
            try:
                proto = await self._connection()
            finally:
                self._waiting_to_send -= 1
        return await self._send(proto, encode(args, tail))

    @staticmethod
    async def _send(proto: _Protocol, data: bytes) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.waiting.append(fut)
        proto.send(data)
        return await fut

    async def script(self, source: str, args: list[Any], tail: Encoded | None = None, retry: bool = True) -> Any:
        """EVALSHA; EVAL (which caches the script in Redis) on first use and after a Redis restart (NOSCRIPT).
        Never a separate load first: scripts run in the order they were called. A NOSCRIPT retry runs after
        calls made meanwhile: with `retry=False` the caller gets `ScriptNotRun` instead, and decides.
        `tail`: more arguments, already encoded, after `args`."""
        sha = self._shas.get(source)
        if sha is None:
            self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
            return await self.call("EVAL", source, 0, *args, tail=tail)
        try:
            return await self.call("EVALSHA", sha, 0, *args, tail=tail)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            self._shas.pop(source, None)
            if not retry:
                raise ScriptNotRun(str(exc)) from None
            return await self.call("EVAL", source, 0, *args, tail=tail)

    def abort(self) -> None:
        """Drop the connection now: calls waiting for replies fail; the next call connects again."""
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.abort()
        self._proto = None

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
