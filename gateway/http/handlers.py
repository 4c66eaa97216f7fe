"""HTTP endpoints: the /v1 API, our own health probes and metrics (LiteLLM's are in health.py, models in models.py)."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.cache.response_cache import lookup
from gateway.config.other_zones import zone_serving
from gateway.governance.store_health import StoreHealth
from gateway.http import passthrough
from gateway.http.body import read_json
from gateway.http.errors import GatewayError, bad_request, misdirected, model_not_found, unauthorized
from gateway.http.litellm_headers import CALL_ID, LiteLLMHeaders
from gateway.http.responses import answer, relay_stream
from gateway.http.state import AppState
from gateway.observability.usage import CallRecord
from gateway.protocols.anthropic_upstream import BadShape
from gateway.protocols.request import Request, check_shape
from gateway.routing.ladder import Ladders
from gateway.upstream.routing import HOP_HEADER, REPLICA_HEADER

JSON = "application/json"
perf = time.perf_counter


class Endpoints:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.litellm = LiteLLMHeaders(state.governance.prices if state.governance is not None else None)
        self.stores = StoreHealth(state)
        self.ladders = Ladders(state.config.ladders, state.metrics, state.finish, state.usage.record,
                               state.config.gateway.upstream_limits.body_bytes, state.config.models)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.chat),
            web.post("/v1/completions", self.completions),
            web.post("/v1/embeddings", self.embeddings),
            web.post("/v1/messages", self.messages),  # Anthropic's Messages API
            web.post("/v1/images/generations", self.images),  # passthrough.py
            web.post("/v1/moderations", self.moderations),
            web.post("/images/generations", self.images),
            web.post("/moderations", self.moderations),
            web.post("/chat/completions", self.chat),  # OpenAI clients configured without /v1
            web.post("/completions", self.completions),
            web.post("/embeddings", self.embeddings),
            web.get("/health/live", self.live),
            web.get("/health/ready", self.ready),
            web.get("/metrics", self.metrics),
        ]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "completions")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "embeddings")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "messages")

    async def images(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "images")

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "moderations")

    async def _call(self, http: web.Request, endpoint: str) -> web.StreamResponse:
        started = perf()
        state = self.state
        record = CallRecord(self._request_id(http), endpoint=endpoint)
        headers = {"x-request-id": record.request_id, CALL_ID: record.request_id}
        state.in_flight += 1
        try:
            principal = state.auth.authenticate(authorization(http))
            record.key_id = principal.key_id
            if getattr(principal, "key", None) is not None:
                headers.update(self.litellm.key_headers(principal))
            _check_session_id(http)
            request = await _parse(http, endpoint, state)
            record.alias = request.alias
            record.stream = request.stream
            ladder = self.ladders.get(request.alias)
            if ladder is not None:  # rung by rung, each through _serve (routing/ladder.py)
                return await self.ladders.serve(ladder, self._serve, http, principal, request, record, headers,
                                                started)
            return await self._serve(http, principal, request, record, headers, started)
        except BadShape as exc:  # a request that cannot be converted for its upstream: the client's mistake
            error = bad_request(str(exc), exc.param)
            record.status = error.status
            record.error = error.message
            return error.anthropic_response(headers) if endpoint == "messages" else error.response(headers)
        except GatewayError as exc:
            record.status = exc.status
            record.error = exc.detail or exc.message
            return exc.anthropic_response(headers) if endpoint == "messages" else exc.response(headers)
        except web.HTTPException as exc:  # aiohttp's own refusals, e.g. a body over the size limit
            record.status = exc.status
            record.error = exc.reason
            return GatewayError(exc.status, f"{exc.reason}: {exc.text or ''}".strip(": ")).response(headers)
        except ConnectionError as exc:  # the client went away while we wrote to it
            record.status = 499
            record.error = f"client disconnected ({type(exc).__name__})"
            raise
        except Exception as exc:  # noqa: BLE001 - a bug of ours: a clean 500 for the client, the details in the log
            record.status = 500
            record.error = f"internal error: {type(exc).__name__}: {exc}"
            error = GatewayError(500, f"Internal gateway error (request {record.request_id}).", "server_error")
            return error.response(headers)
        except BaseException as exc:
            record.status = 499  # client closed the connection (nginx's convention)
            record.error = f"client disconnected ({type(exc).__name__})"
            raise
        finally:
            record.latency_ms = (perf() - started) * 1000
            state.in_flight -= 1
            state.finish(record)

    async def _serve(self, http: web.Request, principal: Any, request: Request, record: CallRecord,
                     headers: dict[str, str], started: float, into: web.StreamResponse | None = None
                     ) -> web.StreamResponse:
        """One alias's call, from routing to the response; a ladder calls it per rung, a stream it must check
        written `into` a buffer (routing/ladder.py). Raises GatewayError when the call is refused or failed."""
        state = self.state
        route = state.router.route(request.alias)
        if route is None:
            elsewhere = zone_serving(state.config.other_zones, request.alias)
            raise misdirected(request.alias, elsewhere[0], elsewhere[1].url) if elsewhere \
                else model_not_found(request.alias[:200], http.path.removeprefix("/v1"))
        if route.refuse_over_cap:
            _refuse_over_model_cap(request, route)
        if state.gate is not None:
            route = await state.gate.admit(principal, request, route, record)
        record.prompt_hash = _prompt_hash(request.body)
        cached = await lookup(state.cache, http, request, route.alias, record, headers)  # gateway/cache/
        if cached is not None and cached.answer is not None:
            return await cached.replay(http, started, state.usage.record if into is None else None, into)
        opened = None
        try:
            waited_from = perf()
            opened = await state.proxy.open(request, route, record, _session_key(http, request, state.prefix_chars))
            upstream_wait = perf() - waited_from
            record.deployment = opened.deployment.name
            record.replica = opened.replica.base_url
            headers[REPLICA_HEADER] = opened.replica.name
            record.region = opened.deployment.region
            record.status = 200
            overhead = perf() - started - upstream_wait
            headers["x-gateway-overhead-ms"] = overhead_ms = f"{overhead * 1000:.3f}"
            if request.stream:
                record.ttft_ms = (perf() - started) * 1000
                self.litellm.on_answer(headers, record, opened.deployment, overhead_ms, opened.ratelimit, False)
                # A buffered rung is accounted by the ladder (routing/ladder.py); its stream is still kept in the cache.
                account: Callable[[CallRecord], None] | None = state.usage.record if into is None else None
                if cached is not None:
                    account = cached.tap(opened, account or _accounted_later)
                response = await relay_stream(http, opened, headers, record, account, into)
            else:
                record.prompt_tokens = opened.prompt_tokens
                record.completion_tokens = opened.completion_tokens
                record.images = opened.images
                self.litellm.on_answer(headers, record, opened.deployment, overhead_ms, opened.ratelimit, True)
                if cached is not None:
                    await cached.keep_body(opened.body)
                response = answer(opened, headers)
            record.overhead_ms = overhead * 1000
            return response
        except BaseException:
            if opened is not None:  # the client went away, or a bug of ours: the upstream call is closed
                opened.finish(ok=False, blame=False)
            raise

    def _request_id(self, http: web.Request) -> str:
        """The client's x-request-id when it is a plain bounded id; else one of ours (and a log line saying so):
        it is echoed in a header and written to the log and the ledger, where odd bytes must never reach."""
        given = http.headers.get("x-request-id")
        if given is None:
            return self.state.next_request_id()
        if _REQUEST_ID(given):
            return given
        replaced = self.state.next_request_id()
        self.state.log.event("request_id_replaced", request_id=replaced, given=ascii(given[:64]),
                             rule="x-request-id must match [A-Za-z0-9._:-]{1,128}")
        return replaced

    @staticmethod
    async def no_such_endpoint(http: web.Request) -> web.Response:
        """Last route: a path or method nothing else serves gets OpenAI's error JSON too, not aiohttp's text."""
        return GatewayError(404, f"No endpoint {http.method} {http.path[:200]} on this gateway (see /v1/models).",
                            "invalid_request_error", None, "unknown_url").response()

    async def live(self, http: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=JSON)

    async def ready(self, http: web.Request) -> web.Response:
        # 503 from the moment shutdown starts (state.draining), while calls in flight finish.
        report = self.state.readiness()
        status = 200 if report["ready"] else 503
        stores = self.stores.report()  # the last known state: never a store call on this path (store_health.py)
        if stores is not None:  # reported, never a reason to be unready (store_health.py says why)
            report["stores"] = stores
        return web.Response(status=status, body=orjson.dumps(report), content_type=JSON)

    async def metrics(self, http: web.Request) -> web.Response:
        return web.Response(body=self.state.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}").fullmatch


def authorization(http: web.Request) -> str | None:
    """The Bearer header, or Anthropic clients' x-api-key, as one Authorization value.

    aiohttp decodes header bytes that are not UTF-8 to lone surrogates; a key is printable ASCII, so such a
    value is a wrong key (401), never something to encode and compare (which would raise)."""
    value = http.headers.get("Authorization")
    if value is None:
        key = http.headers.get("x-api-key")
        if key:
            value = "Bearer " + key
    if value is not None and not value.isascii():
        raise unauthorized("Incorrect API key provided: an API key is printable ASCII.")
    return value


def _check_session_id(http: web.Request) -> None:
    session = http.headers.get("x-session-id")
    if session is not None and not session.isascii():
        try:
            session.encode()
        except UnicodeEncodeError:
            raise bad_request("The `x-session-id` header is not valid UTF-8.", "x-session-id") from None


async def _parse(http: web.Request, endpoint: str, state: AppState) -> Request:
    raw, body = await read_json(http, state.config.gateway.front_door)
    alias = body.get("model")
    if not isinstance(alias, str) or not alias:
        raise bad_request("`model` is required and must be a string.", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("`stream` must be true or false.", "stream")
    if endpoint == "embeddings":
        stream = False
        if "input" not in body:
            raise bad_request("`input` is required.", "input")
    elif endpoint in passthrough.REQUIRED:
        passthrough.check_body(endpoint, body)
        stream = False
    elif endpoint in ("chat", "messages"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("`messages` is required and must be a non-empty list.", "messages")
    elif "prompt" not in body:
        raise bad_request("`prompt` is required.", "prompt")
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise bad_request(f"`{key}` must be a positive integer.", key)
    if endpoint == "messages" and not isinstance(body.get("max_tokens"), int):
        raise bad_request("`max_tokens` is required by the Messages API.", "max_tokens")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("`stream_options` must be an object.", "stream_options")
    try:
        check_shape(endpoint, body)
    except BadShape as exc:
        raise bad_request(str(exc), exc.param) from None
    wants_usage = bool(options and options.get("include_usage"))
    return Request(endpoint, raw, body, alias, stream, wants_usage, HOP_HEADER in http.headers)


def _accounted_later(record: CallRecord) -> None:
    return None


def _refuse_over_model_cap(request: Request, route: Any) -> None:
    field = "max_completion_tokens" if "max_completion_tokens" in request.body else "max_tokens"
    asked = request.body.get(field)
    if route.max_tokens is not None and isinstance(asked, int) and asked > route.max_tokens:
        raise bad_request(f"`{field}` is {asked}, over the model cap: models[{route.alias}].max_tokens is "
                          f"{route.max_tokens}.", field)


def _prompt_text(body: dict[str, Any]) -> Any:
    return body.get("messages") or body.get("prompt") or body.get("input")


def _prompt_hash(body: dict[str, Any]) -> str:
    # Correlates identical prompts across log lines without ever logging their text.
    return hashlib.blake2b(orjson.dumps(_prompt_text(body)), digest_size=8).hexdigest()


def _session_key(http: web.Request, request: Request, prefix_chars: int) -> Any:
    """Affinity key, computed only if a pool with several replicas asks for it."""

    def key() -> bytes:
        session = http.headers.get("x-session-id")
        if session:
            return b"s:" + session.encode("utf-8", "surrogateescape")  # checked in _call; never raise here
        user = request.body.get("user")
        if isinstance(user, str) and user:
            return b"u:" + user.encode()  # from JSON: always valid UTF-8
        prompt = _prompt_text(request.body)
        if isinstance(prompt, list):
            parts = []
            size = 0
            for item in prompt:
                text = item.get("content") if isinstance(item, dict) else item
                piece = text if isinstance(text, str) else orjson.dumps(text).decode()
                parts.append(piece)
                size += len(piece)
                if size >= prefix_chars:
                    break
            prompt = "\x1f".join(parts)
        return b"p:" + str(prompt)[:prefix_chars].encode("utf-8", "surrogateescape")

    return key
