"""The alert rules every region's Prometheus evaluates: one PrometheusRule object, computed from the stack config.

Each expression names only metrics that really exist (tests/infra/test_monitoring.py parses every expression with
promql-parser and checks each metric against its source):
- the gateway's own (gateway/observability/metrics.py; prometheus_client adds `_total` to counters);
- kube-state-metrics' `kube_statefulset_status_replicas_ready` (kubernetes/kube-state-metrics
  docs/metrics/workload/statefulset-metrics.md; the gateway is a StatefulSet, charts/gateway);
- Karpenter's `karpenter_nodepools_usage` / `karpenter_nodepools_limit` (gauges labelled `nodepool` and
  `resource_type`: kubernetes-sigs/karpenter pkg/controllers/metrics/nodepool/controller.go @ 6e7eab7a0f48, the
  core module aws/karpenter-provider-aws v1.14.1's go.mod pins) and
  `karpenter_interruption_received_messages_total{message_type="spot_interrupted"}`
  (aws/karpenter-provider-aws pkg/controllers/interruption/metrics.go and messages/types.go @ v1.14.1);
- vLLM's `vllm:num_requests_waiting` (vllm/v1/metrics/loggers.py);
- DCGM exporter's `DCGM_FI_DEV_XID_ERRORS` (etc/default-counters.csv @ 4.5.3-4.8.2: "Value of the last XID error
  encountered").
"""
from __future__ import annotations

from typing import Any

from infra.chart_values import GATEWAY_NAMESPACE, GATEWAY_RELEASE

# How long a GPU's new XID keeps GpuXidError firing.
XID_WINDOW = "10m"

# A month as Prometheus projects it: 30 days of the recent rate.
MONTH_SECONDS = 30 * 24 * 3600
# The GPU resource Karpenter reports usage and limits for (the device plugin's extended resource).
GPU = "nvidia.com/gpu"
# Queue depth per replica above which a model is backing up: KEDA scales vLLM out well before this (its target is
# a few waiting requests per replica); waiting this long at this depth means scale-out is not keeping up.
VLLM_QUEUE_ALERT = 20
# Spot interruptions per region in an hour above which batch capacity is churning: AWS gives two minutes' notice
# per instance, and a batch replica reloads its weights each time.
SPOT_INTERRUPTIONS_PER_HOUR = 4
# A GPU NodePool at this share of its limit cannot absorb a region loss or a burst.
POOL_LIMIT_SHARE = 0.9


def alert_rules(region: str, monthly_budget_usd: float, regions: int) -> list[dict[str, Any]]:
    """Prometheus rule groups for `region`. The budget burn compares this region's projected month of gateway
    spend with its share of the stack's monthly budget (each region's Prometheus sees its own gateway only)."""
    share = monthly_budget_usd / max(1, regions)
    labels = {"region": region}
    gateway = f'namespace="{GATEWAY_NAMESPACE}",statefulset="{GATEWAY_RELEASE}"'

    def rule(alert: str, expr: str, for_: str, severity: str, summary: str) -> dict[str, Any]:
        return {"alert": alert, "expr": expr, "for": for_, "labels": {**labels, "severity": severity},
                "annotations": {"summary": summary}}

    return [
        {"name": "llm-platform.gateway", "rules": [
            rule("GatewayDown",
                 f"(sum(kube_statefulset_status_replicas_ready{{{gateway}}}) or vector(0)) < 1",
                 "3m", "critical",
                 f"No ready gateway pod in {region}: Route 53's health check takes the region out of DNS."),
            rule("GatewayNoSuccessfulCalls",
                 'sum(rate(llmp_gateway_requests_total{status="200"}[10m])) == 0 '
                 "and sum(rate(llmp_gateway_requests_total[10m])) > 0",
                 "10m", "critical", f"The gateway in {region} answers calls but none succeeds."),
        ]},
        {"name": "llm-platform.capacity", "rules": [
            rule("GpuNodePoolAtLimit",
                 f'karpenter_nodepools_usage{{resource_type="{GPU}"}} '
                 f'/ on(nodepool, resource_type) karpenter_nodepools_limit{{resource_type="{GPU}"}} '
                 f">= {POOL_LIMIT_SHARE}",
                 "15m", "warning",
                 "A GPU NodePool is at {{ $value | humanizePercentage }} of its GPU limit: Karpenter cannot add "
                 "nodes past it."),
            rule("SpotInterruptionsHigh",
                 'sum(increase(karpenter_interruption_received_messages_total{message_type="spot_interrupted"}[1h])) '
                 f"> {SPOT_INTERRUPTIONS_PER_HOUR}",
                 "0m", "warning",
                 f"More than {SPOT_INTERRUPTIONS_PER_HOUR} spot interruptions in the last hour in {region}."),
        ]},
        {"name": "llm-platform.serving", "rules": [
            rule("VllmQueueBackingUp",
                 f"max by (model_name) (vllm:num_requests_waiting) > {VLLM_QUEUE_ALERT}",
                 "10m", "warning",
                 "{{ $labels.model_name }} has more than " + str(VLLM_QUEUE_ALERT) +
                 " requests waiting on one replica for 10 minutes."),
            # DCGM_FI_DEV_XID_ERRORS is a gauge of the LAST XID a GPU reported ("Value of the last XID error
            # encountered", dcgm-exporter etc/default-counters.csv; DCGM dcgm_fields.h DCGM_FI_DEV_XID_ERRORS): it
            # keeps that value until the driver reloads, so `> 0` alone would fire forever after one XID. The alert
            # fires when a GPU reports a new XID (the gauge changed) and resolves 10 minutes after the last one;
            # `and` keeps the left side's value, so $value is still the XID number. (An XID equal to the previous
            # one leaves the gauge unchanged and is not seen: the first of a burst is what pages.)
            rule("GpuXidError",
                 f"max by (Hostname, gpu) (DCGM_FI_DEV_XID_ERRORS) > 0 and max by (Hostname, gpu) "
                 f"(changes(DCGM_FI_DEV_XID_ERRORS[{XID_WINDOW}])) > 0",
                 "0m", "critical",
                 "GPU {{ $labels.gpu }} on {{ $labels.Hostname }} reported XID {{ $value }} "
                 "(NVIDIA's XID catalogue says which need a node drain)."),
        ]},
        {"name": "llm-platform.spend", "rules": [
            rule("BudgetBurn",
                 f"sum(rate(llmp_gateway_spend_usd_total[6h])) * {MONTH_SECONDS} > {share:.2f}",
                 "30m", "warning",
                 f"Gateway spend in {region} projects over {share:,.0f} USD this month, its share of the "
                 f"stack's {monthly_budget_usd:,.0f} USD budget."),
        ]},
    ]
