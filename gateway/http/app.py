"""The gateway application: its state object (the only shared state) and the aiohttp app built from config."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import aiohttp
import orjson
from aiohttp import web

from gateway.http.auth import Authenticator, MasterKeyAuth, check_master_key
from gateway.observability.calllog import CallLog
from gateway.config.native import GatewayConfig
from gateway.upstream.discovery import EndpointSliceWatcher, default_discovery_api
from gateway.http.handlers import Endpoints
from gateway.observability.metrics import GatewayMetrics
from gateway.governance.provider_keys import SecretRef, SecretRefresher, resolve_secrets
from gateway.upstream.attempts import Proxy
from gateway.upstream.quotas import DeploymentQuotas
from gateway.upstream.routing import Router
from gateway.observability.usage import CallRecord, NoUsageAccounting, UsageHook

MAX_BODY = 32 * 1024 * 1024  # long contexts and base64 images are large
STATE = web.AppKey("state", "AppState")


@dataclass
class AppState:
    config: GatewayConfig
    router: Router
    auth: Authenticator
    usage: UsageHook
    metrics: GatewayMetrics
    log: CallLog
    prefix_chars: int
    models_payload: bytes
    discovery_api: Any = None
    proxy: Proxy = field(init=False)
    session: aiohttp.ClientSession = field(init=False)
    watchers: list[EndpointSliceWatcher] = field(default_factory=list)
    gate: Any = None  # governance's admission step (gateway.governance.Governance), None when not configured
    governance: Any = None
    quotas: Any = None  # deployments' rpm/tpm (gateway.quotas.DeploymentQuotas), None when none has one
    secrets: SecretRefresher | None = None
    in_flight: int = 0
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _id_prefix: str = field(default_factory=lambda: os.urandom(4).hex())

    def next_request_id(self) -> str:
        # A per-process random prefix and a counter: unique, and far cheaper than uuid4 per call.
        return f"req-{self._id_prefix}-{next(self._ids):x}"

    def finish(self, record: CallRecord) -> None:
        """After each call: metrics, the log line, then usage accounting (which must not block)."""
        m = self.metrics
        # Client-chosen names must not become label values: one series per configured alias only.
        alias = record.alias if record.alias in self.router.routes else "unknown"
        m.call(alias, record.deployment, record.status).inc()
        if record.status == 200:
            series = m.model(alias)
            series.latency.observe(record.latency_ms / 1000)
            m.overhead.observe(record.overhead_ms / 1000)
            if record.ttft_ms is not None:
                series.ttft.observe(record.ttft_ms / 1000)
            if record.prompt_tokens:
                series.prompt_tokens.inc(record.prompt_tokens)
            if record.completion_tokens:
                series.completion_tokens.inc(record.completion_tokens)
        self.log.write(record)
        self.usage.record(record)
        if record.quota_tickets:
            self.quotas.settle(record)

    def readiness(self) -> dict[str, Any]:
        deployments = {p.name: {"healthy": p.healthy(), "replicas": len(p.replicas)} for p in self.router.pools}
        ready = any(d["healthy"] for d in deployments.values())
        return {"ready": ready, "deployments": deployments}

    def on_secret(self, ref: SecretRef, value: str) -> None:
        """A rotated secret: the next call uses it (the value is never logged)."""
        if ref.deployment is None:
            if self.governance is not None:
                self.governance.auth.set_master_key(value)
            else:
                self.auth = MasterKeyAuth(value)
            return
        for pool in self.router.pools:
            if pool.name == ref.deployment:
                pool.headers = pool._headers(pool.config.model_copy(update={"api_key": value}))

    def on_circuit(self, deployment: str, replica: str, state: str) -> None:
        self.metrics.set_circuit(deployment, replica, state)
        self.log.event("circuit", deployment=deployment, replica=replica, state=state)


def new_session() -> aiohttp.ClientSession:
    """The one upstream client of a worker; aiohttp chosen by measurement (see gateway/README.md)."""
    connector = aiohttp.TCPConnector(
        limit=0,  # concurrency is bounded by upstream capacity, not by a client-side pool
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=60,
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
    """The gateway app; raises ConfigError for a master key that must not be used, or a secret it cannot read."""
    config, secrets = resolve_secrets(config)
    check_master_key(config.gateway.master_key, dev)
    metrics = GatewayMetrics()
    log = CallLog(log_out)
    models = {"object": "list", "data": [
        {"id": m.alias, "object": "model", "created": 0, "owned_by": "llm-platform"} for m in config.models
    ]}
    state = AppState(
        config=config,
        router=None,  # type: ignore[arg-type]  # set below: the router reports circuit changes to the state
        auth=MasterKeyAuth(config.gateway.master_key or ""),
        usage=usage or NoUsageAccounting(),
        metrics=metrics,
        log=log,
        prefix_chars=config.gateway.affinity.prefix_chars,
        models_payload=orjson.dumps(models),
        discovery_api=discovery_api,
    )
    state.router = Router(config, state.on_circuit)
    state.secrets = secrets
    if config.ledger is not None:
        from gateway.http.admin import AdminApi
        from gateway.governance.gate import build_governance

        state.governance = state.gate = build_governance(config, log.event)
        state.auth = state.governance.auth
        state.usage = state.governance
        app_routes = AdminApi(state.governance).routes()
    else:
        app_routes = []
    state.quotas = DeploymentQuotas.for_config(config, state.governance.limiter if state.governance else None)
    metrics.in_flight.set_function(lambda: state.in_flight)
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE] = state
    app.add_routes(Endpoints(state).routes())
    app.add_routes(app_routes)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


async def _start(app: web.Application) -> None:
    state = app[STATE]
    state.session = new_session()
    state.proxy = Proxy(state.session, state.router, state.config.gateway.retries, state.metrics,
                        quotas=state.quotas)
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
        state.secrets.on_change(state.on_secret)
        state.secrets.start(state.log.event)
    if state.governance is not None:
        await state.governance.start()
    state.log.event("started", models=[m.alias for m in state.config.models], region=state.config.gateway.region,
                    residency=state.config.gateway.residency, deployments=[p.name for p in state.router.pools])


async def _stop(app: web.Application) -> None:
    state = app[STATE]
    if state.governance is not None:
        await state.governance.stop()  # after aiohttp drained in-flight calls: their records are in the spool
    if state.secrets is not None:
        await state.secrets.stop()
    for watcher in state.watchers:
        await watcher.stop()
    await state.session.close()
    state.proxy.client.close([r.connections for p in state.router.pools for r in p.replicas])
    await state.log.stop()
