"""Reading server-sent events off an upstream response, one whole event at a time, and how such a stream fails."""

from __future__ import annotations

from typing import Any

from aiohttp import StreamReader


class EventReader:
    """Whole events off a stream, each at most `max_bytes` (`gateway.upstream_limits.sse_event_bytes`).

    Lines are split here rather than with `StreamReader.readline`, whose limit is tied to the read
    buffer (512 KiB with ours): a large tool-call event the official client accepts must not break the
    stream, and a huge one must fail by name instead of growing memory.
    """

    __slots__ = ("_buf", "_content", "max_bytes")

    def __init__(self, content: StreamReader, max_bytes: int) -> None:
        self._content = content
        self._buf = bytearray()
        self.max_bytes = max_bytes

    async def next(self) -> tuple[bytes, bytes] | None:
        """The next event with a data field as (raw bytes to forward, its data); None at a clean end of stream.

        Raw bytes are kept so OpenAI-compatible events are forwarded exactly as they arrived, without
        re-serialising them. Events without data (comments such as `: keep-alive`, a lone `event:` or `id:`)
        are skipped, as the official clients skip them.
        """
        lines: list[bytes] = []
        size = 0
        data: bytes | None = None
        while True:
            line = await self._line(size)
            if line is None:
                if lines:
                    raise TruncatedStream("stream ended inside an event")
                return None
            if line in (b"\n", b"\r\n"):
                if data is not None:
                    return b"".join(lines) + b"\n", data
                lines, size = [], 0
                continue
            lines.append(line)
            size += len(line)
            if size > self.max_bytes:
                raise self._too_large()
            if line.startswith(b"data:"):
                piece = line[5:].strip()
                data = piece if data is None else data + b"\n" + piece

    def _too_large(self) -> EventTooLarge:
        return EventTooLarge(f"upstream stream event over gateway.upstream_limits.sse_event_bytes ({self.max_bytes})")

    async def _line(self, held: int) -> bytes | None:
        buf = self._buf
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                line = bytes(buf[: end + 1])
                del buf[: end + 1]
                return line
            if held + len(buf) > self.max_bytes:
                raise self._too_large()
            chunk = await self._content.readany()
            if not chunk:
                if buf:
                    raise TruncatedStream("stream ended inside an event")
                return None
            buf += chunk


def error_message(error: Any) -> str:
    """The text of an upstream's error: OpenAI's and Anthropic's `{"message": ...}`, or TGI's plain string."""
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or "upstream error")


class TruncatedStream(Exception):
    """The upstream closed the stream before its end marker."""


class UpstreamStreamError(Exception):
    """The upstream sent an error event inside the stream."""


class EventTooLarge(Exception):
    """One event of an upstream stream is over `gateway.upstream_limits.sse_event_bytes`."""
