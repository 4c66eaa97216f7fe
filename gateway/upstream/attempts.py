"""Getting an answer started upstream: attempts in routing order, retries with backoff, fallbacks, or a 503."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson

from gateway.config.native import Retries
from gateway.http.errors import GatewayError
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.usage import CallRecord
from gateway.protocols.answers import MalformedAnswer, StreamAdapter, read_answer, stream_adapter, unmetered_images
from gateway.protocols.bedrock_events import ConverseEventReader
from gateway.protocols.request import Request
from gateway.protocols.sse import EventReader, EventTooLarge, TruncatedStream, UpstreamStreamError
from gateway.protocols.tokens import estimate_tokens
from gateway.upstream.client import (
    UpstreamClient,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamLimitExceeded,
)
from gateway.upstream.cloud_calls import CLOUD_PROVIDERS, CloudAuthFailed, CloudCalls
from gateway.upstream.fallbacks import (
    ContextWindowExceeded,
    MayCall,
    after_context_window,
    fallback_names,
    fallback_routes,
)
from gateway.upstream.outcomes import Failures, final_error, ratelimit_headers
from gateway.upstream.quotas import DeploymentQuotas
from gateway.upstream.redaction import redact
from gateway.upstream.refusals import ERROR_BODY_BYTES, AttemptFailed, refusal, refused, secrets_of
from gateway.upstream.retry import Backoff
from gateway.upstream.routing import DeploymentPool, ModelRoute, Replica, Router

# Failures that say nothing about the replica's health (it is busy, or we are misconfigured for it).
NOT_HEALTH = frozenset({401, 403, 404, 429})
# What an adapter raises on an event whose JSON has another shape than the protocol's (a list for an object...).
SHAPE_ERRORS = (ValueError, TypeError, KeyError, AttributeError)


@dataclass(slots=True)
class Opened:
    """An upstream answer that has begun: the whole body, or a stream and its first output bytes."""

    deployment: DeploymentPool
    replica: Replica
    response: aiohttp.ClientResponse | None
    body: bytes  # non-streaming: the answer; streaming: the first bytes to send
    adapter: StreamAdapter | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    events: EventReader | ConverseEventReader | None = None  # streaming: the upstream's events, each bounded in size
    prompt_estimate: int = 0  # the prompt's tokens by the request's size, charged when usage never comes
    ratelimit: dict[str, str] | None = None  # the upstream's x-ratelimit-* headers, relayed as LiteLLM does
    images: int = 0  # an images answer without usage: how many images it holds, priced per image
    _finished: bool = False

    def finish(self, ok: bool, blame: bool = True) -> None:
        """Release the replica; a stream that broke closes its connection instead of pooling it.

        `blame=False` when the call ended for the client's reasons (it hung up): the
        connection is closed, but the replica's health is not judged.
        """
        if self._finished:
            return
        self._finished = True
        self.replica.in_flight -= 1
        if self.response is not None:
            if ok:
                self.response.release()
            else:
                self.response.close()
        if ok:
            self.replica.breaker.on_success()
        elif blame:
            self.replica.breaker.on_failure()
        else:
            self.replica.breaker.on_abandon()


class Proxy:
    def __init__(self, session: aiohttp.ClientSession, router: Router, retries: Retries,
                 metrics: GatewayMetrics, clock: Callable[[], float] = time.monotonic,
                 client: UpstreamClient | None = None, quotas: DeploymentQuotas | None = None) -> None:
        self.session = session  # streams
        self.client = client or UpstreamClient()  # whole answers
        self.router = router
        self.retries = retries
        self.backoff = Backoff(retries.backoff_base, retries.backoff_max)
        self.metrics = metrics
        self.quotas = quotas
        self.cloud = CloudCalls()  # Azure and Bedrock (upstream/cloud_calls.py)
        self._clock = clock
        # Whether a virtual key may use an alias named in a request's `fallbacks` (the governance layer's
        # answer); unset, a virtual key's body fallbacks are refused (403), never tried unchecked.
        self.may_call: MayCall | None = None

    async def open(self, request: Request, route: ModelRoute, record: CallRecord,
                   session_key: Callable[[], bytes]) -> Opened:
        """Try the alias, then its fallbacks; raise a GatewayError when nothing answered."""
        failures = Failures()
        names = fallback_names(request, route, record, self.may_call)
        routes = [route, *fallback_routes(self.router, names)]
        tried: set[str] = set()
        position = -1
        while position + 1 < len(routes):
            position += 1
            current = routes[position]
            if current.alias in tried:
                continue
            tried.add(current.alias)
            if position:
                self.metrics.fallbacks.labels(route.alias, current.alias).inc()
                record.fallbacks.append(current.alias)
            candidates = self.router.candidates(current, request.endpoint, session_key, request.hopped)
            if not candidates:
                failures.append(_no_candidates(current, request))
                continue
            try:
                opened = await self._try_route(request, current, candidates, record, failures)
            except ContextWindowExceeded:
                after = after_context_window(self.router, current, names if position == 0 else [])
                if not after:
                    raise
                routes[position + 1:] = after  # LiteLLM tries the context-window group instead of the rest
                continue
            if opened is not None:
                return opened
        raise final_error(route.alias, failures)  # the status LiteLLM gives for the last failure

    async def _try_route(self, request: Request, route: ModelRoute, candidates: list[tuple[DeploymentPool, Replica]],
                         record: CallRecord, failures: Failures) -> Opened | None:
        index = 0
        for attempt in range(self.retries.attempts + 1):
            now = self._clock()
            pick = self._pick(candidates, index, now)
            if pick is not None and self.quotas is not None:
                pick = await self._within_quota(candidates, pick, now, request, record, failures)
            if pick is None:
                break
            index = pick + 1
            dep, replica = candidates[pick % len(candidates)]
            # A replica that sent Retry-After is waited for only when nothing else is left (see _pick).
            delay = replica.cooling_until - now
            if attempt:
                self.metrics.retries.labels(route.alias).inc()
                delay = max(delay, self.backoff.delay(attempt))
            if delay > 0:
                await asyncio.sleep(delay)
            record.attempts += 1
            try:
                return await self._attempt(request, route, dep, replica)
            except AttemptFailed as failure:
                self.metrics.upstream_errors.labels(dep.name, failure.reason.split(":", 1)[0]).inc()
                failures.append(f"{dep.name}: {failure.reason}")
                failures.failed(failure.reason, failure.status, failure.headers, f"{dep.name}: {failure.detail}"
                                if failure.detail else None)
                if failure.retry_after is not None:
                    replica.cooling_until = self._clock() + failure.retry_after
        return None

    async def _within_quota(self, candidates: list[tuple[DeploymentPool, Replica]], pick: int, now: float,
                            request: Request, record: CallRecord, failures: list[str]) -> int | None:
        """The first candidate from `pick` whose deployment is within its rpm/tpm quota (the attempt counted)."""
        assert self.quotas is not None
        full: set[str] = set()
        for _ in range(len(candidates)):
            dep = candidates[pick % len(candidates)][0]
            if dep.name not in full:
                if await self.quotas.take(dep.name, request, record):
                    return pick
                full.add(dep.name)
                failures.append(f"{dep.name}: at its rpm/tpm quota")
            found = self._pick(candidates, pick + 1, now)
            if found is None:
                return None
            pick = found
        return None

    def _pick(self, candidates: list[tuple[DeploymentPool, Replica]], start: int, now: float) -> int | None:
        """Index of the next usable candidate from `start`: one not cooling down after a Retry-After first,
        else the one cooling for the shortest time within retry_after_max."""
        waiting: tuple[float, int] | None = None
        for offset in range(len(candidates)):
            position = start + offset
            replica = candidates[position % len(candidates)][1]
            if not replica.usable():
                continue
            wait = replica.cooling_until - now
            if wait <= 0:
                return position
            if wait <= self.retries.retry_after_max and (waiting is None or wait < waiting[0]):
                waiting = (wait, position)
        return None if waiting is None else waiting[1]

    async def _attempt(self, request: Request, route: ModelRoute, dep: DeploymentPool, replica: Replica) -> Opened:
        payload = request.payload_for(dep, route)
        cloud = dep.provider in CLOUD_PROVIDERS
        head = b"" if request.stream or cloud else dep.request_head(replica, request.endpoint)  # config errors raise
        replica.in_flight += 1
        replica.breaker.on_attempt()
        response: aiohttp.ClientResponse | None = None
        health = True
        url = replica.urls[request.endpoint]
        t = dep.timeouts
        prompt_estimate = estimate_tokens(len(request.raw))
        try:
            if request.stream:
                # Headers and the first event within first_byte: failover stays possible until then.
                async with asyncio.timeout(t.first_byte):
                    if cloud:
                        response = await self.cloud.post(self.session, dep, replica, request, payload)
                    else:
                        response = await self.session.post(url, data=payload, headers=dep.headers,
                                                           timeout=dep.client_timeout)
                    if response.status != 200:
                        health = response.status not in NOT_HEALTH
                        if cloud:
                            error = await self.cloud.whole(dep, response, ERROR_BODY_BYTES)
                            refusal(error.status, error.reason, error.headers, error.body, secrets_of(dep))
                        await refused(response, dep)
                    if response.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
                        # We asked for identity: a compressed stream could inflate past every bound before we see it.
                        raise AttemptFailed("malformed_response: compressed stream (we asked for identity)")
                    adapter = stream_adapter(dep, request, restamp=route.alias == request.alias)
                    events = (self.cloud.events(dep, response) if dep.provider == "bedrock"
                              else EventReader(response.content, dep.limits.sse_event_bytes))
                    first = await _first_output(events, adapter)
                    return Opened(dep, replica, response, first, adapter, events=events,
                                  prompt_estimate=prompt_estimate, ratelimit=ratelimit_headers(response.headers))
            # A whole answer, through the lean client (see upstream/client.py for the measurement; Azure and Bedrock
            # through aiohttp's, upstream/cloud_calls.py). Model servers
            # send nothing until a whole answer is generated, so `total` bounds it, `idle` the silence once begun.
            if cloud:
                async with asyncio.timeout(t.total):
                    response = await self.cloud.post(self.session, dep, replica, request, payload)
                    answer = await self.cloud.whole(dep, response)
                response = None
            else:
                answer = await self.client.post(replica.connections, head, payload, t.connect, t.total, t.idle,
                                                dep.limits)
            if answer.status != 200:
                health = answer.status not in NOT_HEALTH
                refusal(answer.status, answer.reason, answer.headers, answer.body[:ERROR_BODY_BYTES], secrets_of(dep))
            body, prompt, completion = read_answer(dep, answer.body, route.alias, request.endpoint, prompt_estimate,
                                                   restamp=route.alias == request.alias)
            opened = Opened(dep, replica, None, body, None, prompt, completion,
                            ratelimit=ratelimit_headers(answer.headers),
                            images=unmetered_images(body) if request.endpoint == "images" else 0)
            opened.finish(ok=True)
            return opened
        except AttemptFailed:
            self._failed(replica, response, health)
            raise
        except GatewayError:
            # The upstream judged the request itself bad: not the replica's fault.
            self._failed(replica, response, health=False)
            raise
        except aiohttp.ClientConnectorError as exc:
            self._failed(replica, response, health)
            raise AttemptFailed("connect_error", detail=f"connect_error: {exc.os_error or exc}") from None
        except UpstreamConnectError as exc:
            self._failed(replica, response, health)
            raise AttemptFailed("connect_error", detail=f"connect_error: {exc}") from None
        except CloudAuthFailed as exc:  # our credentials, not the upstream's health
            self._failed(replica, response, health=False)
            raise AttemptFailed("auth_error", detail=f"auth_error: {exc}") from None
        except UpstreamClosed as exc:
            self._failed(replica, response, health)
            raise AttemptFailed(f"upstream_disconnected: {redact(str(exc), secrets_of(dep))}") from None
        except (UpstreamLimitExceeded, EventTooLarge) as exc:
            self._failed(replica, response, health)
            raise AttemptFailed(f"too_large: {exc}") from None
        except (aiohttp.ConnectionTimeoutError, UpstreamConnectTimeout):
            self._failed(replica, response, health)
            raise AttemptFailed(f"connect_timeout: no connection within {t.connect:g}s") from None
        except TimeoutError as exc:
            self._failed(replica, response, health)
            if request.stream:
                raise AttemptFailed(f"first_byte_timeout: nothing within {t.first_byte:g}s") from None
            raise AttemptFailed(f"timeout: {exc}") from None
        except (MalformedAnswer, orjson.JSONDecodeError) as exc:
            self._failed(replica, response, health)
            raise AttemptFailed(f"malformed_response: {exc}") from None
        except (TruncatedStream, UpstreamStreamError) as exc:
            self._failed(replica, response, health)
            raise AttemptFailed(f"stream_error: {redact(str(exc), secrets_of(dep))}") from None
        except aiohttp.ClientError as exc:
            self._failed(replica, response, health)
            raise AttemptFailed(f"upstream_disconnected: {type(exc).__name__}") from None
        except SHAPE_ERRORS as exc:
            self._failed(replica, response, health)
            raise AttemptFailed(f"malformed_response: unexpected event shape ({type(exc).__name__})") from None
        except BaseException:
            # Client went away (cancellation): close the upstream call, do not blame the replica.
            self._failed(replica, response, health=False)
            raise

    @staticmethod
    def _failed(replica: Replica, response: aiohttp.ClientResponse | None, health: bool) -> None:
        replica.in_flight -= 1
        if response is not None:
            response.close()
        if health:
            replica.breaker.on_failure()
        else:
            replica.breaker.on_abandon()


def _no_candidates(route: ModelRoute, request: Request) -> str:
    if not route.deployments:
        return f"{route.alias}: no deployment in this residency zone"
    if request.hopped:
        return (f"{route.alias}: no usable deployment in this region "
                "(the call was passed on by another region's gateway)")
    if not any(d.serves(request.endpoint) for d in route.deployments):
        return f"{route.alias}: no deployment offers the {request.endpoint} endpoint"
    if not any(d.api_key_set for d in route.deployments):
        return f"{route.alias}: its provider key is not set yet ({', '.join(d.name for d in route.deployments)})"
    return f"{route.alias}: no healthy deployment"


async def _first_output(events: EventReader | ConverseEventReader, adapter: StreamAdapter) -> bytes:
    """Read events until one produces bytes for the client, so failover stays possible until then."""
    while True:
        event = await events.next()
        if event is None:
            raise TruncatedStream("stream ended before its first event")
        out = adapter.feed(*event)
        if out or adapter.done:
            return out
