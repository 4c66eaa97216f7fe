"""Sending an answer to the client: a JSON body, or a stream relayed event by event as it arrives."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import orjson
from aiohttp import web

from gateway.http.errors import GatewayError
from gateway.observability.usage import CallRecord
from gateway.protocols.sse import TruncatedStream, UpstreamStreamError, read_event
from gateway.upstream.attempts import Opened

JSON = "application/json"
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Tell nginx-style proxies in front of us not to buffer: each chunk goes out as it comes.
    "X-Accel-Buffering": "no",
}


class ClientGone(Exception):
    """Writing to the client failed: it hung up."""


async def _to_client(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError as exc:
        raise ClientGone() from exc


def answer(opened: Opened, headers: dict[str, str]) -> web.Response:
    return web.Response(body=opened.body, content_type=JSON, headers=headers)


async def relay_stream(request: web.Request, opened: Opened, headers: dict[str, str], record: CallRecord,
                       before_eof: Callable[[CallRecord], None] | None = None) -> web.StreamResponse:
    """Relay the stream; a failure after the first byte ends it with an OpenAI error event.

    `before_eof` sees the record before the stream's last byte, so usage accounting is
    durable before the client holds a complete response.
    """
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    adapter = opened.adapter
    assert adapter is not None and opened.response is not None
    upstream = opened.response.content
    idle = opened.deployment.timeouts.idle
    loop = asyncio.get_running_loop()
    ok = False
    failure: str | None = None
    try:
        try:
            await response.prepare(request)
        except ConnectionError as exc:
            raise ClientGone() from exc
        if opened.body:
            await _to_client(response, opened.body)
        if not adapter.done:
            async with asyncio.timeout(idle) as idle_timer:
                while True:
                    event = await read_event(upstream)
                    if event is None:
                        raise TruncatedStream("upstream closed the stream before its end")
                    out = adapter.feed(*event)
                    if out:
                        await _to_client(response, out)
                    if adapter.done:
                        break
                    idle_timer.reschedule(loop.time() + idle)
        ok = True
    except ClientGone:
        # aiohttp reports a closed client socket as a ClientError too: it must not count against the upstream.
        record.status = 499
        record.error = "client disconnected mid-stream"
        opened.finish(ok=False, blame=False)
        raise ConnectionResetError("client disconnected") from None
    except TimeoutError:
        failure = f"upstream stream stalled: no data for {idle:g}s (or total timeout reached)"
    except (TruncatedStream, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        failure = "upstream closed the stream before its end"
    except orjson.JSONDecodeError:
        failure = "upstream sent a malformed stream chunk"
    except UpstreamStreamError as exc:
        failure = f"upstream error: {exc}"
    except aiohttp.ClientError as exc:
        failure = f"upstream connection failed: {type(exc).__name__}"
    finally:
        # Runs on client disconnect too (write error or handler cancellation): the upstream call is closed.
        opened.finish(ok, blame=failure is not None)
        record.prompt_tokens = adapter.prompt_tokens
        record.completion_tokens = adapter.completion_tokens
    if failure is not None:
        record.error = failure
        record.status = 502
        error = GatewayError(502, failure, "upstream_error", None, "upstream_stream_error")
        try:
            await response.write(error.sse_event(anthropic=getattr(adapter, "anthropic_events", False)))
        except ConnectionError:
            return response
    if before_eof is not None:
        before_eof(record)
    await response.write_eof()
    return response
