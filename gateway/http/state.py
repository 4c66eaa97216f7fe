"""`AppState`: the only shared state of a gateway worker, and what happens after each call (metrics, log, usage)."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config.native import GatewayConfig
from gateway.governance.provider_keys import SecretRef, SecretRefresher, is_unset
from gateway.http.auth import Authenticator, MasterKeyAuth
from gateway.observability.calllog import CallLog
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.usage import CallRecord, UsageHook
from gateway.upstream.attempts import Proxy
from gateway.upstream.discovery import EndpointSliceWatcher
from gateway.upstream.routing import Router


@dataclass
class AppState:
    config: GatewayConfig
    router: Router
    auth: Authenticator
    usage: UsageHook
    metrics: GatewayMetrics
    log: CallLog
    prefix_chars: int
    discovery_api: Any = None
    proxy: Proxy = field(init=False)
    session: aiohttp.ClientSession = field(init=False)
    watchers: list[EndpointSliceWatcher] = field(default_factory=list)
    gate: Any = None  # governance's admission step (gateway.governance.gate.Governance), None when not configured
    governance: Any = None
    quotas: Any = None  # deployments' rpm/tpm (gateway.upstream.quotas.DeploymentQuotas), None when none has one
    secrets: SecretRefresher | None = None
    in_flight: int = 0
    draining: bool = False  # shutting down: not ready for new calls, finishing those in flight
    grace_ends: float = 0.0  # time.monotonic() at which the shutdown grace ends; 0 until SIGTERM
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _id_prefix: str = field(default_factory=lambda: os.urandom(4).hex())

    def next_request_id(self) -> str:
        # A per-process random prefix and a counter: unique, and far cheaper than uuid4 per call.
        return f"req-{self._id_prefix}-{next(self._ids):x}"

    def finish(self, record: CallRecord) -> None:
        """After each call: metrics, the log line, then usage accounting (which must not block)."""
        try:
            self._observe(record)
        finally:  # whatever the record holds, the call is accounted and its limiter slot given back
            self.usage.record(record)
            if record.quota_tickets:
                self.quotas.settle(record)

    def _observe(self, record: CallRecord) -> None:
        m = self.metrics
        # Client-chosen names must not become label values: one series per configured name (alias or model_aliases
        # name, as the client called it), a wildcard match under its pattern, anything else "unknown".
        alias = self.router.groups.label(record.alias)
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

    def flush_within(self) -> float:
        """Seconds the ledger's final flush may take: what is left of the shutdown grace (a second kept for the rest
        of the stop), and never less than 5 s (a stop with no grace: tests, a failed start)."""
        left = self.grace_ends - time.monotonic() - 1.0 if self.grace_ends else 0.0
        return max(5.0, left)

    def readiness(self) -> dict[str, Any]:
        deployments = {p.name: {"healthy": p.healthy(), "replicas": len(p.replicas), "api_key_set": p.api_key_set}
                       for p in self.router.pools}
        ready = any(d["healthy"] for d in deployments.values()) and not self.draining
        return {"ready": ready, "draining": self.draining, "deployments": deployments}

    def on_secret(self, ref: SecretRef, value: str) -> None:
        """A rotated secret: the next call uses it (the value is never logged). A secret that holds no
        value yet locks what needs it: its deployment is skipped, or (the master key) calls are refused."""
        key = None if is_unset(value) else value
        if ref.deployment is None:
            if self.governance is not None:
                self.governance.auth.set_master_key(key or "")
            else:
                self.auth = MasterKeyAuth(key or "")
            return
        for pool in self.router.pools:
            if pool.name == ref.deployment:
                pool.set_api_key(key)

    def on_circuit(self, deployment: str, replica: str, state: str) -> None:
        self.metrics.set_circuit(deployment, replica, state)
        self.log.event("circuit", deployment=deployment, replica=replica, state=state)


STATE = web.AppKey("state", AppState)
