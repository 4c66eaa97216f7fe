"""Prometheus metrics of the gateway, in a registry of its own (no process-global state)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
MAX_SPEND_SERIES = 2_000


@dataclass(frozen=True, slots=True)
class ModelSeries:
    """The labelled children of one model alias, looked up once instead of on every call."""

    latency: Any
    ttft: Any
    prompt_tokens: Any
    completion_tokens: Any


class GatewayMetrics:
    def __init__(self) -> None:
        self._models: dict[str, ModelSeries] = {}
        self._calls: dict[tuple[str, str, int], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("llmp_gateway_requests", "Calls answered, by model alias, deployment and status",
                                ["model", "deployment", "status"], registry=r)
        self.latency = Histogram("llmp_gateway_request_seconds", "Whole-call latency", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llmp_gateway_time_to_first_token_seconds", "Time to the first streamed chunk",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("llmp_gateway_overhead_seconds", "Time spent in the gateway, upstream excluded",
                                  buckets=OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter("llmp_gateway_tokens", "Tokens metered", ["model", "kind"], registry=r)
        self.upstream_errors = Counter("llmp_gateway_upstream_errors", "Failed upstream attempts",
                                       ["deployment", "reason"], registry=r)
        self.retries = Counter("llmp_gateway_retries", "Attempts after the first, by model alias", ["model"],
                               registry=r)
        self.fallbacks = Counter("llmp_gateway_fallbacks", "Calls moved to a fallback alias",
                                 ["model", "fallback"], registry=r)
        self.circuit = Gauge("llmp_gateway_circuit_state", "Replica circuit: 0 closed, 1 half-open, 2 open",
                             ["deployment", "replica"], registry=r)
        self.in_flight = Gauge("llmp_gateway_in_flight", "Calls in progress", registry=r)
        self.spend = Counter("llmp_gateway_spend_usd", "USD charged to the spend ledger, by model alias and team",
                             ["model", "team"], registry=r)
        self._spend: dict[tuple[str, str], Any] = {}
        # Ladders (routing/ladder.py): labels are config names and a fixed set of reasons, so bounded.
        self.ladder_escalations = Counter("llmp_ladder_escalations", "Ladder rungs moved past, by reason",
                                          ["ladder", "from_rung", "reason"], registry=r)
        self.ladder_answers = Counter("llmp_ladder_answers", "Ladder calls answered, by the rung that answered",
                                      ["ladder", "rung"], registry=r)
        # The response cache (gateway/cache/): lookups by result (hit | miss | bypass), and USD hits did not pay.
        self.cache_requests = Counter("llmp_cache_requests", "Calls the response cache covers, by model alias and "
                                      "result", ["model", "result"], registry=r)
        self.cache_saved = Counter("llmp_cache_saved_usd", "USD cache hits did not pay, by model alias", ["model"],
                                   registry=r)
        self.batch_lines = Counter("llmp_batch_lines", "Batch lines finished, by model alias and result",
                                   ["model", "result"], registry=r)
        self.batches = Gauge("llmp_batches", "Batches in the ledger store, by status", ["status"], registry=r)

    def batch_line(self, alias: str, result: str) -> None:
        self.batch_lines.labels(alias, result).inc()

    def batch_statuses(self, counts: dict[str, int]) -> None:
        for status in ("validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
                       "cancelled"):
            self.batches.labels(status).set(counts.get(status, 0))

    def model(self, alias: str) -> ModelSeries:
        series = self._models.get(alias)
        if series is None:
            series = self._models[alias] = ModelSeries(
                self.latency.labels(alias), self.ttft.labels(alias),
                self.tokens.labels(alias, "prompt"), self.tokens.labels(alias, "completion"),
            )
        return series

    def call(self, alias: str, deployment: str, status: int) -> Any:
        key = (alias, deployment, status)
        child = self._calls.get(key)
        if child is None:
            if len(self._calls) > 10_000:  # unknown aliases from clients must not grow this forever
                return self.requests.labels(alias, deployment, str(status))
            child = self._calls[key] = self.requests.labels(alias, deployment, str(status))
        return child

    def charge(self, alias: str, team: str | None, usd: float) -> None:
        """Count spend the ledger was charged. Teams are admin-made, but a label per team is still bounded: past
        MAX_SPEND_SERIES pairs the team is folded into `other` (the ledger keeps the exact figures)."""
        if not usd > 0:  # nothing charged, or NaN
            return
        key = (alias, team or "none")
        child = self._spend.get(key)
        if child is None:
            if len(self._spend) >= MAX_SPEND_SERIES:
                key = (alias, "other")
                child = self._spend.get(key) or self.spend.labels(*key)
            else:
                child = self._spend[key] = self.spend.labels(*key)
        child.inc(usd)

    def set_circuit(self, deployment: str, replica: str, state: str) -> None:
        self.circuit.labels(deployment, replica).set(CIRCUIT_STATES[state])

    def render(self) -> bytes:
        return generate_latest(self.registry)
