"""Sending an answer to the client: a JSON body, or a stream relayed event by event as it arrives."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from aiohttp import web

from gateway.http.errors import GatewayError
from gateway.observability.usage import CallRecord
from gateway.protocols.answers import StreamAdapter
from gateway.protocols.sse import EventTooLarge, TruncatedStream, UpstreamStreamError
from gateway.protocols.tokens import MAX_TOKENS
from gateway.upstream.attempts import SHAPE_ERRORS, Opened
from gateway.upstream.refusals import redact_for

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
                       before_eof: Callable[[CallRecord], None] | None = None,
                       response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Relay the stream; a failure after the first byte ends it with an OpenAI error event.

    `before_eof` sees the record before the stream's last byte, so usage accounting is
    durable before the client holds a complete response. Whatever way the stream ends (done,
    upstream failure, client gone), the record holds its tokens: see `_account`. `response`: where to write
    instead of a new response to the client (a ladder's buffer, routing/replay.py).
    """
    response = response if response is not None else web.StreamResponse(headers={**SSE_HEADERS, **headers})
    adapter = opened.adapter
    events = opened.events
    assert adapter is not None and events is not None
    idle = opened.deployment.timeouts.idle
    loop = asyncio.get_running_loop()
    ok = False
    failure: str | None = None
    relayed = 1 if opened.body else 0
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
                    event = await events.next()
                    if event is None:
                        raise TruncatedStream("upstream closed the stream before its end")
                    out = adapter.feed(*event)
                    if out:
                        relayed += 1
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
    except EventTooLarge as exc:
        failure = str(exc)
    except UpstreamStreamError as exc:
        failure = f"upstream error: {redact_for(opened.deployment, str(exc))}"
    except SHAPE_ERRORS:  # orjson.JSONDecodeError is a ValueError
        failure = "upstream sent a malformed stream chunk"
    except aiohttp.ClientError as exc:
        failure = f"upstream connection failed: {type(exc).__name__}"
    finally:
        # Runs on client disconnect too (write error or handler cancellation): the upstream call is closed.
        opened.finish(ok, blame=failure is not None)
        _account(record, adapter, opened.prompt_estimate, relayed)
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


def _account(record: CallRecord, adapter: StreamAdapter, prompt_estimate: int, relayed: int) -> None:
    """The call's tokens: the upstream's usage where it came and is sound; else what was streamed.

    Usage arrives at the stream's end: a client that hangs up before it, an upstream that fails
    mid-stream or sends unreadable usage, would otherwise make the call free, and a key with budget for
    one call could stream twenty. A count the upstream did not give is replaced by an estimate: the
    prompt's by the request's size (bytes / 4, the limiter's reservation rule), the completion's by the
    text streamed (characters / 4, at least one token per chunk of text; one per relayed event for
    adapters that do not count text).
    """
    prompt, completion = adapter.prompt_tokens, adapter.completion_tokens
    sound = 0 <= prompt < MAX_TOKENS and 0 <= completion < MAX_TOKENS
    streamed = getattr(adapter, "streamed_tokens", None)
    record.prompt_tokens = prompt if sound and prompt else prompt_estimate
    record.completion_tokens = completion if sound and completion else (
        streamed if isinstance(streamed, int) else relayed)
    problem = getattr(adapter, "usage_problem", None)
    if problem and record.error is None:
        record.error = f"{problem}; charged the estimate"
