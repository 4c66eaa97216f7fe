"""The listening socket's guards: connection cap, slow-request and idle timers, parse errors as JSON, draining."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from gateway.config.limits import FrontDoor

# A slow head is answered before the close, so a client sees why (RFC 9110 section 15.5.9: 408, then close).
_TIMEOUT = orjson.dumps({"error": {
    "message": "The request was not received in time (gateway.front_door.request_read).",
    "type": "invalid_request_error", "param": None, "code": "request_timeout"}})
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                   b"Content-Length: " + str(len(_TIMEOUT)).encode() + b"\r\n\r\n" + _TIMEOUT)


def handler_settings(door: FrontDoor) -> dict[str, Any]:
    """aiohttp's per-connection settings from `gateway.front_door` (web_protocol.RequestHandler kwargs)."""
    return {
        "access_log": None,
        "keepalive_timeout": door.keepalive_idle,
        "max_line_size": door.header_bytes,  # the request line
        "max_field_size": door.header_bytes,  # each header field
        # After an early answer (413, 401) aiohttp reads and discards the rest of the body this long, so the
        # client sees the answer instead of a reset; never longer than a request may take to arrive.
        "lingering_time": min(10.0, door.request_read),
    }


class Guarded(web.RequestHandler):
    """aiohttp's connection protocol with a deadline for each request head, counted by its `Door`.

    aiohttp has no header-read timeout: its keep-alive timer only closes a connection that is idle
    between requests. The head timer starts when the connection opens (a client that never sends a
    byte is closed after `request_read`) and when the first byte of a later head arrives; a complete
    head cancels it, and the body is timed by the handler (handlers.read_body).
    """

    def __init__(self, manager: web.Server, door: Door, **kwargs: Any) -> None:
        super().__init__(manager, loop=door.loop, **kwargs)
        self._door = door
        self._head_timer: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a head arrived, the head is not complete yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._door.open.add(self)
        self._head_timer = self._loop.call_later(self._door.request_read, self._read_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._door.open.discard(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # The hot path: a whole request in one read costs this one test and, at most, one cancel.
        if self._messages:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
                self._partial = False
        elif self._waiter is not None:  # waiting for a head, and only part of one is here
            self._partial = True
            if self._head_timer is None:
                self._head_timer = self._loop.call_later(self._door.request_read, self._read_timed_out)

    def _read_timed_out(self) -> None:
        self._head_timer = None
        if self._waiter is None or self._messages:
            return  # a request is being handled: the handler times its body
        transport = self.transport
        if self._partial and transport is not None:
            transport.write(REQUEST_TIMEOUT)
        self._door.slow += 1
        self.force_close()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse: OpenAI's error JSON, and one log line without a traceback."""
        if status == 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)  # a bug of ours: aiohttp logs it
        if isinstance(exc, LineTooLong):
            status = 431
            text = (f"A request header field (or the request line) is over {self._door.settings.header_bytes} "
                    f"bytes (gateway.front_door.header_bytes).")
        else:
            # aiohttp's message quotes the offending header line, which may hold a key: only its first words.
            detail = (message or getattr(exc, "message", "") or "").strip()
            reason = detail.split(":", 1)[0].splitlines()[0][:200] if detail else type(exc).__name__
            text = f"The request is not valid HTTP/1.1: {reason}."
        self._door.event("bad_http_request", status=status, error=text)
        body = orjson.dumps({"error": {"message": text, "type": "invalid_request_error", "param": None,
                                       "code": "request_header_fields_too_large" if status == 431 else None}})
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed at once, before any byte is read or any object is built for it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class Door:
    """The protocol factory of the listening socket: caps open connections and builds guarded ones."""

    def __init__(self, server: web.Server, settings: FrontDoor, on_event: Callable[..., None]) -> None:
        self.server = server
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.request_read = settings.request_read
        self.cap = settings.connections
        self.kwargs = handler_settings(settings)
        self.event = on_event
        self.open: set[Guarded] = set()
        self.refused = 0
        self.slow = 0
        self._refusal_logged = 0.0

    def __call__(self) -> asyncio.Protocol:
        if len(self.open) >= self.cap:
            self.refused += 1
            now = time.monotonic()
            if now - self._refusal_logged > 10:  # once per 10 s: a flood must not flood the log too
                self._refusal_logged = now
                self.event("connections_refused", open=len(self.open), cap=self.cap, refused_total=self.refused,
                           field="gateway.front_door.connections")
            return _Refused()
        return Guarded(self.server, self, **self.kwargs)

    def busy(self) -> bool:
        """A request is being handled on some connection."""
        return any(conn._request_in_progress for conn in self.open)

    async def drain(self, grace: float) -> None:
        """Finish the requests in flight within `grace` seconds, then cut what is left.

        Applied once, in total (aiohttp's own shutdown timeout applies its value twice per connection).
        """
        self.server.pre_shutdown()  # idle keep-alive connections close now, busy ones after their answer
        deadline = self.loop.time() + grace
        # A request ends inside aiohttp's protocol, which signals nobody: poll, and only while shutting down.
        while self.busy() and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for conn in list(self.open):
            if conn._request_in_progress:
                conn.force_close()  # with handler_cancellation, the handler is cancelled and accounts the call


class FrontDoorSite(web.TCPSite):
    """aiohttp's TCP site, with `Door` as the protocol factory instead of the runner's server."""

    def __init__(self, runner: web.BaseRunner, door: Door, host: str, port: int, *,
                 backlog: int, reuse_port: bool | None, sock: socket.socket | None = None) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_port=reuse_port)
        self.door = door
        self.sock = sock  # already bound and listening (gateway/server.py binds before anything starts)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        if self.sock is not None:
            self._server = await self.door.loop.create_server(self.door, sock=self.sock, backlog=self._backlog)
        else:
            self._server = await self.door.loop.create_server(
                self.door, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address,
                reuse_port=self._reuse_port)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
