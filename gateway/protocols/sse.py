"""Reading server-sent events off an upstream response, one whole event at a time, and how such a stream fails."""

from __future__ import annotations

from aiohttp import StreamReader

BLANK = (b"\n", b"\r\n")


async def read_event(content: StreamReader) -> tuple[bytes, bytes] | None:
    """The next event as (raw bytes to forward, its data field); None at a clean end of stream.

    Raw bytes are kept so OpenAI-compatible events are forwarded exactly as they
    arrived, without re-serialising them.
    """
    lines: list[bytes] = []
    data = b""
    while True:
        line = await content.readline()
        if not line:
            if lines:
                raise TruncatedStream("stream ended inside an event")
            return None
        if line in BLANK:
            if lines:
                return b"".join(lines) + b"\n", data
            continue
        if line[-1:] != b"\n":
            raise TruncatedStream("stream ended inside an event")
        lines.append(line)
        if line.startswith(b"data:"):
            piece = line[5:].strip()
            data = piece if not data else data + b"\n" + piece


class TruncatedStream(Exception):
    """The upstream closed the stream before its end marker."""


class UpstreamStreamError(Exception):
    """The upstream sent an error event inside the stream."""
