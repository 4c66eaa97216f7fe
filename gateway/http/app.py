"""The gateway application: the aiohttp app built from config, its start and stop, the upstream session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, BinaryIO

import aiohttp
import orjson
from aiohttp import web

from gateway.batch.service import BATCH, BatchService
from gateway.cache.response_cache import build_cache
from gateway.config.native import GatewayConfig
from gateway.governance.build import build_governance
from gateway.governance.provider_keys import resolve_secrets
from gateway.http.admin import AdminApi
from gateway.http.admin_off import governance_off_routes
from gateway.http.auth import MasterKeyAuth, check_master_key
from gateway.http.cors import Cors, CorsPolicy
from gateway.http.handlers import Endpoints
from gateway.http.health import Health
from gateway.http.models import ModelList
from gateway.http.passthrough import audio_routes
from gateway.http.peer import PeerApi
from gateway.http.state import STATE, AppState
from gateway.observability.calllog import CallLog
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.usage import NoUsageAccounting, UsageHook
from gateway.upstream.attempts import Proxy
from gateway.upstream.discovery import EndpointSliceWatcher, default_discovery_api
from gateway.upstream.quotas import DeploymentQuotas
from gateway.upstream.routing import Router


def new_session() -> aiohttp.ClientSession:
    """The one upstream client of a worker; aiohttp chosen by measurement (see gateway/README.md)."""
    connector = aiohttp.TCPConnector(
        limit=0,  # concurrency is bounded by upstream capacity, not by a client-side pool
        limit_per_host=0,
        ttl_dns_cache=300,
        # Below vLLM's own keep-alive (uvicorn's 5 s, VLLM_HTTP_TIMEOUT_KEEP_ALIVE): a connection the server may
        # already have closed is never reused for a stream.
        keepalive_timeout=4,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        read_bufsize=2**18,  # room for large stream events (tool-call arguments)
        skip_auto_headers=("User-Agent",),
        # Upstream cookies must never be kept and replayed across callers; also spares a jar lookup per call.
        cookie_jar=aiohttp.DummyCookieJar(),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        trust_env=False,
    )


def build_app(
    config: GatewayConfig,
    *,
    dev: bool = False,
    usage: UsageHook | None = None,
    log_out: BinaryIO | None = None,
    discovery_api: Any = None,
) -> web.Application:
    """The gateway app; raises ConfigError for a master key that must not be used, or a secret it needs to start
    and cannot read. Secrets that hold no value yet lock what needs them instead (see provider_keys)."""
    config, secrets = resolve_secrets(config)
    if secrets is None or not secrets.master_key_unset():
        check_master_key(config.gateway.master_key, dev)
    metrics = GatewayMetrics()
    log = CallLog(log_out)
    state = AppState(
        config=config,
        router=None,  # type: ignore[arg-type]  # set below: the router reports circuit changes to the state
        auth=MasterKeyAuth(config.gateway.master_key or ""),
        usage=usage or NoUsageAccounting(),
        metrics=metrics,
        log=log,
        prefix_chars=config.gateway.affinity.prefix_chars,
        discovery_api=discovery_api,
    )
    state.router = Router(config, state.on_circuit)
    state.cache = build_cache(config, metrics, state.router.groups.label, log.event)
    state.secrets = secrets
    if config.ledger is not None:
        state.governance = state.gate = build_governance(config, log.event, metrics.registry, metrics.charge)
        state.auth = state.governance.auth
        state.usage = state.governance
        app_routes = AdminApi(state.governance).routes()
        peers = state.governance.peers
        if peers is not None:  # answered to the stack's other regions, by the peer key alone (http/peer.py)
            app_routes += PeerApi(peers.settings.key, state.governance.store, peers.budgets, peers.overlap,
                                  config.ledger.flush_interval if config.ledger else 0.0).routes()
    else:
        app_routes = governance_off_routes()  # the admin paths answer how to turn governance on
    state.quotas = DeploymentQuotas.for_config(config, state.governance.limiter if state.governance else None)
    for ref in secrets.unset_refs() if secrets is not None else []:
        state.on_secret(ref, "")
    metrics.in_flight.set_function(lambda: state.in_flight)
    # Bodies are bounded before they are held: Content-Length over the limit is refused unread (http/body.py),
    # a chunked body is cut at it. Models' and keys' max_request_bytes apply on top.
    app = web.Application(client_max_size=config.gateway.front_door.body_bytes)
    app[STATE] = state
    endpoints = Endpoints(state)
    app.add_routes(endpoints.routes())
    app.add_routes(Health(state).routes())
    app.add_routes(ModelList(state).routes())
    app.add_routes(audio_routes())
    app.add_routes(app_routes)
    if config.batch is not None and state.governance is not None:  # /v1/files, /v1/batches (gateway/batch/)
        app[BATCH] = BatchService(state, state.governance)
        app.add_routes(app[BATCH].routes())
    Cors(CorsPolicy.from_env()).install(app)  # LITELLM_CORS_ORIGINS, as LiteLLM reads it (http/cors.py)
    app.router.add_route("*", "/{tail:.*}", Endpoints.no_such_endpoint)  # after every other route
    app.cleanup_ctx.append(_lifetime)
    app.cleanup_ctx.append(_probing(endpoints.stores))  # after _lifetime: its probe needs the started stores
    return app


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    # A cleanup context, not on_startup/on_cleanup: aiohttp freezes on_cleanup only after every on_startup handler
    # returned, so a failed start never reaches an on_cleanup handler, while a context that fails on entry still
    # runs its own `finally` (aiohttp 3.14 web_app.py, CleanupContext and Application.cleanup). _stop stops only what
    # _start got to.
    try:
        await _start(app)
        yield
    finally:
        await _stop(app)


def _probing(stores: Any) -> Callable[[web.Application], AsyncIterator[None]]:
    """The stores' readiness probe, run in the background while the app serves (gateway/governance/store_health.py)."""
    async def probe(app: web.Application) -> AsyncIterator[None]:
        await stores.start(app)
        try:
            yield
        finally:
            await stores.stop(app)
    return probe


async def _start(app: web.Application) -> None:
    state = app[STATE]
    state.session = new_session()
    state.proxy = Proxy(state.session, state.router, state.config.gateway.retries, state.metrics,
                        quotas=state.quotas)
    if state.governance is not None:  # a virtual key's body fallbacks: only models its lists allow
        state.proxy.may_call = state.governance.may_call
    await state.proxy.cloud.prepare(state.router.pools)
    state.log.start()
    for pool in state.router.pools:
        replicas = pool.config.replicas
        if replicas is not None and replicas.endpoint_slices is not None:
            if state.discovery_api is None:
                try:
                    state.discovery_api = default_discovery_api()
                except Exception as exc:  # noqa: BLE001 - no cluster credentials: not ready, and say why
                    state.log.event("discovery_unavailable", deployment=pool.name,
                                    error=f"no Kubernetes credentials (in-cluster or ~/.kube/config): {exc}")
                    continue
            watcher = EndpointSliceWatcher(pool, replicas.endpoint_slices, state.discovery_api, state.log.event)
            try:
                await watcher.refresh()  # start with replicas known when the API answers; else keep polling
            except Exception as exc:  # noqa: BLE001 - reported, and the poll loop keeps trying
                state.log.event("discovery_failed", deployment=pool.name, error=f"{type(exc).__name__}: {exc}")
            watcher.start()
            state.watchers.append(watcher)
    if state.secrets is not None:
        for ref in state.secrets.unset_refs():  # names and reasons only, never a value
            state.log.event("secret_not_set", field=ref.field, reason=state.secrets.unset_at_start[ref.name],
                            effect="calls refused until it is set" if ref.deployment is None
                            else f"deployment {ref.deployment} skipped until it is set")
        state.secrets.on_change(state.on_secret)
        state.secrets.start(state.log.event)
    if state.governance is not None:
        await state.governance.start()
    if BATCH in app:
        await app[BATCH].start()
    state.log.event("started", models=[m.alias for m in state.config.models], region=state.config.gateway.region,
                    residency=state.config.gateway.residency, deployments=[p.name for p in state.router.pools])


async def _stop(app: web.Application) -> None:
    # Also runs after a failed _start: stop only what exists, and let one part's failure not leave the others running.
    state = app[STATE]
    parts: list[tuple[str, Callable[[], Awaitable[object]]]] = []
    if BATCH in app:  # first: its lines in flight use governance and the upstream session
        parts.append(("batch", app[BATCH].stop))
    if state.governance is not None:  # after aiohttp drained in-flight calls: their records are in the spool
        parts.append(("governance", lambda: state.governance.stop(state.flush_within())))
    if state.secrets is not None:
        parts.append(("secrets", state.secrets.stop))
    parts += [("discovery", watcher.stop) for watcher in state.watchers]
    if state.cache is not None:
        parts.append(("cache", state.cache.close))
    session = getattr(state, "session", None)  # unset when _start failed before making it
    if session is not None:
        parts.append(("upstream_session", session.close))
    for part, stop in parts:
        try:
            await stop()
        except Exception as exc:  # noqa: BLE001 - reported; the other parts still stop
            state.log.event("stop_failed", part=part, error=f"{type(exc).__name__}: {exc}"[:300])
    proxy = getattr(state, "proxy", None)
    if proxy is not None:
        proxy.client.close([r.connections for p in state.router.pools for r in p.replicas])
    await state.log.stop()
