"""Reading ConverseStream's `application/vnd.amazon.eventstream` frames off an upstream response, one event at a time.

The binary framing (prelude, headers, CRC32s) is untrusted input: botocore's own parser reads it
(`botocore.eventstream.EventStreamBuffer`, what boto3 uses for the same stream), which checks both CRCs and
bounds headers (128 KiB) and payload (24 MiB). On top, no event may be over
`gateway.upstream_limits.sse_event_bytes`, and no more than that is held while an event is incomplete.
Frame format: docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html#streaming-event-stream.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import StreamReader
from botocore.eventstream import EventStreamBuffer, ParserError

from gateway.protocols.sse import EventTooLarge, TruncatedStream, UpstreamStreamError

_PRELUDE = 12  # total length, headers length, prelude CRC: 4 bytes each


class ConverseEventReader:
    """Whole ConverseStream events as (`:event-type`, JSON payload); raises on exceptions the stream carries."""

    __slots__ = ("_buffer", "_content", "_held", "max_bytes")

    def __init__(self, content: StreamReader, max_bytes: int) -> None:
        self._content = content
        self._buffer = EventStreamBuffer()
        self._held = 0  # bytes given to the buffer and not yet parsed into events
        self.max_bytes = max_bytes

    async def next(self) -> tuple[bytes, bytes] | None:
        """The next event; None at a clean end of stream (between frames). One frame is parsed at a time, so
        a corrupt frame fails only when it is reached, after every good event before it was relayed."""
        while True:
            try:
                message: Any = next(self._buffer)
            except StopIteration:
                message = None
            except ParserError as exc:
                raise TruncatedStream(f"unreadable event stream frame: {exc}") from None
            if message is not None:
                self._held -= message.prelude.total_length
                return _event(message, self.max_bytes)
            if self._held > self.max_bytes + _PRELUDE:
                raise EventTooLarge(
                    f"upstream stream event over gateway.upstream_limits.sse_event_bytes ({self.max_bytes})")
            chunk = await self._content.readany()
            if not chunk:
                if self._held:
                    raise TruncatedStream("stream ended inside an event")
                return None
            self._held += len(chunk)
            self._buffer.add_data(chunk)


def _event(message: Any, max_bytes: int) -> tuple[bytes, bytes]:
    if message.prelude.total_length > max_bytes + _PRELUDE:
        raise EventTooLarge(f"upstream stream event over gateway.upstream_limits.sse_event_bytes ({max_bytes})")
    headers = message.headers
    kind = headers.get(":message-type")
    if kind == "exception":  # a modeled error (throttlingException...) after the 200: the payload names it
        name = str(headers.get(":exception-type", "exception"))
        raise UpstreamStreamError(f"{name[0].upper()}{name[1:]}: {_message(message.payload)}")
    if kind == "error":
        raise UpstreamStreamError(f"{headers.get(':error-code', 'error')}: {headers.get(':error-message', '')}")
    return str(headers.get(":event-type", "")).encode(), bytes(message.payload)


def _message(payload: bytes) -> str:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:200].decode(errors="replace")
    return str(body.get("message", "")) if isinstance(body, dict) else ""
