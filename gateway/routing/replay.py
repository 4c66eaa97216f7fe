"""A rung's stream held whole so it can be checked (`Buffer`), and sent to the client once it passed (`replay`)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest

from gateway.http.responses import SSE_HEADERS
from gateway.observability.usage import CallRecord


class Buffer(web.StreamResponse):
    """What `relay_stream` writes, kept in memory instead of sent: nothing reaches the client until `replay`.

    Bounded by the gateway's cap on a whole upstream answer (upstream_limits.body_bytes): past it the rest is
    dropped and `overflow` set, and the ladder treats the rung as failed (an answer it could not check)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.data = bytearray()
        self.limit = limit
        self.overflow = False

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        return None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(self.data) + len(data) > self.limit:
            self.overflow = True
            return
        self.data += data

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            await self.write(data)


async def replay(http: web.Request, buffer: Buffer, headers: dict[str, str], record: CallRecord,
                 before_eof: Callable[[CallRecord], None]) -> web.StreamResponse:
    """Send a checked stream as it came; the call is accounted before the last byte, as a relayed stream is
    (http/responses.py `relay_stream`)."""
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    await response.prepare(http)
    await response.write(bytes(buffer.data))
    before_eof(record)
    await response.write_eof()
    return response
