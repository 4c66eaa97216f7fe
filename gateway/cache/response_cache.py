"""The response cache on the request path: after admission, a lookup that answers a hit from the store (JSON or
SSE) or marks the call a miss (its answer stored once whole) or a bypass; what a hit costs and saves.

Every call the `cache:` section covers gets `x-llmp-cache: hit | miss | bypass`, a `cache` field in its log line,
and counts in `llmp_cache_requests_total{model, result}`; a hit's savings go to `llmp_cache_saved_usd_total{model}`
and to its spend row (`cache_hit`, `saved`, governance/gate.py). Calls it does not cover get none of these.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.cache.answers import Assembler, keepable, read_entry, sse_chunks, usage_of
from gateway.cache.request_key import ENDPOINTS, entry_id, opt_out, samples, scope_of
from gateway.cache.stores import AnswerStore, InProcessStore, RedisStore, StoreDown
from gateway.config.cache import CacheSettings
from gateway.config.native import GatewayConfig
from gateway.governance.ledger.prices import Prices
from gateway.observability.usage import CallRecord
from gateway.protocols.request import Request
from gateway.upstream.fallbacks import MayCall, fallback_names
from gateway.upstream.routing import ModelRoute

HEADER = "x-llmp-cache"
LITELLM_KEY_HEADER = "x-litellm-cache-key"
JSON = "application/json"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
perf = time.perf_counter
# Stores in flight at once (`ResponseCache.keep`): with answers of max_entry_bytes (1 MiB by default), 256 MiB held.
MAX_PENDING = 256


class ResponseCache:
    """The `cache:` section at work: which calls it covers, the store, and the numbers it reports."""

    def __init__(self, settings: CacheSettings, store: AnswerStore, prices: Prices, metrics: Any,
                 label: Callable[[str], str], on_event: Callable[..., None],
                 served_by: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.served_by = served_by or {}  # model alias: what answers it (`served_by` below)
        self.store = store
        self.prices = prices
        self.metrics = metrics  # GatewayMetrics: cache_requests, cache_saved
        self.label = label  # a client-sent name as a bounded metric label (config/model_names.py)
        self._event = on_event
        self._pending: set[asyncio.Task[None]] = set()
        self.max_pending = MAX_PENDING

    async def lookup(self, http: web.Request, request: Request, route: ModelRoute, record: CallRecord,
                     headers: dict[str, str], may_call: MayCall | None = None) -> CacheCall | None:
        """None when the call is not covered; else its `CacheCall` (`answer` set on a hit)."""
        s = self.settings
        group = route.alias
        # A call another region's gateway passed on arrives with the zone's master key, whoever made it: its scope
        # is not known here, so only the gateway that took it from the client (and knows its team) caches it.
        if request.hopped or request.endpoint not in ENDPOINTS or \
                not s.covers(request.alias, group, record.team_id, record.key_alias):
            return None
        read, write = opt_out(http.headers, request.body)
        call = CacheCall(self, request, record, headers, "")
        if (not read and not write) or (samples(request.body) and not s.temperature_above_zero):
            return call.result("bypass")
        call.entry = entry_id(scope_of(s.scope, record.key_token, record.team_id), request.endpoint,
                              f"{group}@{self.served_by.get(group, '')}", request.body)
        call.write = write
        if not read:
            return call.result("bypass")
        if "fallbacks" in request.body:
            # The gate admitted the alias; the aliases the body names as fallbacks are checked by the proxy
            # (upstream/fallbacks.py: a key may not name one it may not call, 403). A hit never reaches the proxy, and
            # a teammate's key with fewer models would be answered what it must be refused: checked here first.
            fallback_names(request, route, record, may_call)
        try:
            found = await self.store.get(call.entry)
        except StoreDown:
            call.write = False
            return call.result("bypass")
        call.answer = read_entry(found) if found is not None else None
        if found is None or call.answer is None:
            return call.result("miss")
        call.raw = found
        return call.result("hit")

    def failed(self, event: str, exc: Exception) -> None:
        self._event(event, error=f"{type(exc).__name__}: {exc}"[:300])

    def count(self, alias: str, result: str) -> None:
        self.metrics.cache_requests.labels(self.label(alias), result).inc()

    def saved(self, alias: str, usd: float) -> None:
        if usd > 0:
            self.metrics.cache_saved.labels(self.label(alias)).inc(usd)

    def keep(self, entry: str, answer: bytes) -> None:
        """Store in the background: the answer is sent meanwhile. A store slower than the calls coming in (each
        store waits up to redis.timeout_ms) would hold every answer waiting for it: past `max_pending` stores in
        flight, an answer is not stored."""
        if len(self._pending) >= self.max_pending:
            return
        task = asyncio.get_running_loop().create_task(self.put(entry, answer))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def put(self, entry: str, answer: bytes) -> None:
        if len(answer) > self.settings.max_entry_bytes:
            return
        try:
            await self.store.put(entry, answer)
        except StoreDown:
            pass  # said once by the store; the next call stores again

    async def settle(self) -> None:
        """Wait for stores under way (shutdown, tests)."""
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        await self.settle()
        await self.store.close()


class CacheCall:
    """One covered call: its entry, what the lookup found, and how its answer is replayed or kept."""

    def __init__(self, cache: ResponseCache, request: Request, record: CallRecord, headers: dict[str, str],
                 entry: str) -> None:
        self.cache = cache
        self.request = request
        self.record = record
        self.headers = headers
        self.entry = entry
        self.write = False
        self.answer: dict[str, Any] | None = None
        self.raw = b""
        self._assembler: Assembler | None = None

    def _hold(self, out: bytes) -> None:
        # What the client was sent, merged into the answer as it goes: an answer past max_entry_bytes would not be
        # stored, so past that it is dropped (what a stream holds stays about max_entry_bytes, whatever its length).
        assembler = self._assembler
        if assembler is None:
            return
        try:
            assembler.feed(out)
        except Exception as exc:  # noqa: BLE001 - never the relay's failure: the stream goes on, unkept
            assembler.broken = True
            self.cache.failed("cache_keep_failed", exc)
        if assembler.broken or assembler.size > self.cache.settings.max_entry_bytes:
            self.write = False
            self._assembler = None

    def _own_answer(self) -> bool:
        """A 200 from the alias the call named. An answer from one of its fallbacks (configured, the body's, or after
        a context-window error: upstream/fallbacks.py) is another model's: kept under this alias it would be served
        for `ttl_seconds` after the alias is back, and a hit priced at this alias's rates. LiteLLM's router likewise
        makes a fallback's call under the fallback's own model name, and caches it there (litellm/router.py,
        async_function_with_fallbacks)."""
        return self.record.status == 200 and not self.record.fallbacks

    def result(self, result: str) -> CacheCall:
        self.record.cache = result
        self.headers[HEADER] = result
        self.cache.count(self.request.alias, result)
        return self

    # ---- a hit ------------------------------------------------------------------------------------------------

    async def replay(self, http: web.Request, started: float, before_eof: Callable[[CallRecord], None] | None,
                     into: web.StreamResponse | None = None) -> web.StreamResponse:
        """The stored answer to the client (or, for a stream a ladder checks, `into` its buffer, accounted by the
        ladder: `before_eof` None); the record says what it would have cost and what it costs."""
        answer, record, cache = self.answer, self.record, self.cache
        assert answer is not None
        prompt, completion = usage_of(answer) or (0, 0)
        record.deployment = "cache"
        record.status = 200
        record.prompt_tokens, record.completion_tokens = prompt, completion
        fraction = cache.settings.hit_cost_fraction
        record.cache_charge = fraction
        full = cache.prices.cost(record.alias, "cache", prompt, completion)
        cache.saved(record.alias, full - full * fraction)
        if not self.request.stream:  # what the call is charged, as a miss's answer says it (http/litellm_headers.py)
            self.headers["x-litellm-response-cost"] = repr(float(full * fraction))
        record.overhead_ms = (perf() - started) * 1000
        self.headers["x-gateway-overhead-ms"] = f"{record.overhead_ms:.3f}"
        # LiteLLM's proxy sends its cache key on hits only, and LiteLLM clients tell a hit by this header's presence
        # (docs.litellm.ai/docs/proxy/caching, "Viewing Cache Keys from responses"). Ours is a hash: no key, no prompt.
        self.headers[LITELLM_KEY_HEADER] = self.entry
        if not self.request.stream:
            return web.Response(body=self.raw, content_type=JSON, headers=self.headers)
        response = into if into is not None else web.StreamResponse(headers={**SSE_HEADERS, **self.headers})
        await response.prepare(http)
        record.ttft_ms = (perf() - started) * 1000
        await response.write(b"".join(sse_chunks(self.request.endpoint, answer, self.request.wants_usage)))
        if before_eof is not None:
            before_eof(record)
        await response.write_eof()
        return response

    # ---- a miss: the answer kept once whole ----------------------------------------------------------------------

    async def keep_body(self, body: bytes) -> None:
        """A non-streamed answer, stored in the background: the client never waits for the store (a Redis round trip
        and the eviction script, up to redis.timeout_ms on a slow Redis). A repeat of the call is still a hit on this
        replica: the store's task runs at the event loop's next turn, before any later request has been read, and
        its command goes out on the store's one ordered connection (RedisPipe) ahead of any later lookup; on
        another replica, once the store has reached Redis (well under the client's own round trip)."""
        if not self.write or not self._own_answer() or len(body) > self.cache.settings.max_entry_bytes:
            return
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if keepable(answer):
            self.cache.keep(self.entry, body)

    def tap(self, opened: Any, account: Callable[[CallRecord], None] | None
            ) -> Callable[[CallRecord], None] | None:
        """Watch the stream relayed for this call (the adapter's output is what the client gets); the relay's
        `before_eof` step to use: `account`, then the stream kept, before the client has the stream's last byte.
        `account` None: a ladder's rung buffered to be checked (the ladder accounts it): its stream is kept all the
        same, as a non-streamed rung's answer is, so a repeat of the call is a hit on that rung."""
        if not self.write or opened.adapter is None:
            return account
        self._assembler = Assembler(self.request.endpoint)
        if opened.body:
            self._hold(opened.body)
        adapter = opened.adapter = _Tap(opened.adapter, self._hold)

        def before_eof(record: CallRecord) -> None:
            if account is not None:
                account(record)
            try:
                self.keep_stream(adapter)
            except Exception as exc:  # noqa: BLE001 - a stream the cache cannot read is not kept; the call goes on
                self.cache.failed("cache_keep_failed", exc)

        return before_eof

    def keep_stream(self, adapter: Any) -> None:
        """At the relay's end: a stream that ended whole and unharmed is kept as the answer it amounts to (stored in
        the background; the store is under way before the stream's last byte is sent)."""
        assembler, self._assembler = self._assembler, None
        if not self.write or not self._own_answer() or self.record.error or assembler is None:
            return
        tokens = (getattr(adapter, "prompt_tokens", 0), getattr(adapter, "completion_tokens", 0))
        answer = assembler.answer(tokens)
        if answer is not None and keepable(answer) and tokens[0] + tokens[1] > 0:
            self.cache.keep(self.entry, orjson.dumps(answer))


class _Tap:
    """A stream adapter that also hands each output to `sink`; everything else is the adapter's."""

    def __init__(self, inner: Any, sink: Callable[[bytes], None]) -> None:
        self._inner = inner
        self._sink = sink

    def feed(self, raw: bytes, data: bytes) -> bytes:
        out: bytes = self._inner.feed(raw, data)
        if out:
            self._sink(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def build_cache(config: GatewayConfig, metrics: Any, label: Callable[[str], str],
                on_event: Callable[..., None]) -> ResponseCache | None:
    """The cache of the `cache:` section (None when absent), in `redis` when configured."""
    s = config.cache
    if s is None:
        return None
    store: AnswerStore
    if config.redis is not None:
        r = config.redis
        store = RedisStore(r.url, s.ttl_seconds, s.max_bytes, r.timeout_ms, r.retry_after_ms, on_event)
    else:
        store = InProcessStore(s.ttl_seconds, s.max_bytes)
    return ResponseCache(s, store, Prices(config), metrics, label, on_event, served_by(config))


def served_by(config: GatewayConfig) -> dict[str, str]:
    """Per model alias, a hash of the upstream models that answer it (each deployment's provider, model and request
    defaults). It is part of every entry's key: an alias moved to another model (a new version, a fine-tune) is a new
    set of answers at once, never the old model's for `ttl_seconds` (the store outlives a rollout in Redis)."""
    out = {}
    for model in config.models:
        parts = sorted(orjson.dumps([d.provider, d.model, d.defaults], option=orjson.OPT_SORT_KEYS)
                       for d in model.deployments)
        out[model.alias] = hashlib.blake2b(b"\x00".join(parts), digest_size=8).hexdigest()
    return out


def strip_controls(request: Request) -> None:
    """LiteLLM's per-call `cache` field is the gateway's to read, never the upstream's."""
    body: Mapping[str, Any] = request.body
    if "cache" in body:
        request.body = {k: v for k, v in body.items() if k != "cache"}
        request.raw = orjson.dumps(request.body)


async def lookup(cache: ResponseCache | None, http: web.Request, request: Request, route: ModelRoute,
                 record: CallRecord, headers: dict[str, str], may_call: MayCall | None) -> CacheCall | None:
    """The hook in the request path (http/handlers.py): after admission, before the upstream is called. `may_call`:
    the proxy's check of the fallbacks a request body names (governance's `may_call`)."""
    call = await cache.lookup(http, request, route, record, headers, may_call) if cache is not None else None
    strip_controls(request)
    return call
