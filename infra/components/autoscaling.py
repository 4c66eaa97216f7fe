"""Autoscaling: KEDA (ScaledObjects on vLLM's and the gateway's own metrics) and metrics-server (CPU), as Helm
releases on the system nodes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components.cluster import SYSTEM_POOL
from infra.components.releases import helm_release
from infra.scheduling import POOL_LABEL

# kedacore/charts tag v2.20.2 (commit cbb9bb8c), the newest release of the chart; the chart's appVersion is KEDA
# 2.20.2. Vendored at infra/plan/vendor/charts/keda-2.20.2.
KEDA = ("keda", "2.20.2", "https://kedacore.github.io/charts")
# kubernetes-sigs/metrics-server tag metrics-server-helm-chart-3.13.1 (commit 842dcc8c), metrics-server 0.8.1.
METRICS_SERVER = ("metrics-server", "3.13.1", "https://kubernetes-sigs.github.io/metrics-server/")
KEDA_NAMESPACE = "keda"
METRICS_SERVER_NAMESPACE = "kube-system"
# The in-cluster Prometheus every ScaledObject queries: kube-prometheus-stack installed as release
# `prometheus-stack` with fullnameOverride `prometheus-stack` in `monitoring` names its Prometheus Service
# `<fullname>-prometheus`, port 9090. It scrapes the charts' ServiceMonitors.
PROMETHEUS_URL = "http://prometheus-stack-prometheus.monitoring.svc:9090"
# KEDA's operator, metrics apiserver and webhooks each run this many replicas. Only one operator is the leader and
# only one metrics apiserver serves the external metrics API at a time: the second replica shortens the time without
# scaling decisions when a system node goes, it adds no throughput (https://keda.sh/docs/2.20/operate/cluster/,
# "High Availability"). The webhooks serve from every replica.
HA_REPLICAS = 2


def _on_system_nodes() -> dict[str, str]:
    return {POOL_LABEL: SYSTEM_POOL}


def keda_values() -> dict[str, Any]:
    """Values for the `keda` release."""
    one_may_go = {"minAvailable": 1}
    return {
        # The chart installs its CRDs from templates/crds (not crds/), so `helm upgrade` upgrades them with the
        # chart (Helm never touches a chart's crds/ directory after the first install:
        # https://helm.sh/docs/chart_best_practices/custom_resource_definitions/). The flip side: a templated CRD
        # is a release resource, and uninstalling the release would delete it and, with it, every ScaledObject
        # in the cluster. `helm.sh/resource-policy: keep` makes Helm leave them in place on uninstall
        # (https://helm.sh/docs/howto/charts_tips_and_tricks/#tell-helm-not-to-uninstall-a-resource).
        "crds": {"install": True, "additionalAnnotations": {"helm.sh/resource-policy": "keep"}},
        "operator": {"replicaCount": HA_REPLICAS},
        "metricsServer": {"replicaCount": HA_REPLICAS},
        # failurePolicy stays the chart's Ignore: a webhook that cannot answer must not block a model's release;
        # the charts' schemas already refuse the bad ScaledObjects the webhook would.
        "webhooks": {"replicaCount": HA_REPLICAS},
        "podDisruptionBudget": {"operator": one_may_go, "metricServer": one_may_go, "webhooks": one_may_go},
        # GPU pools are tainted; the selector keeps KEDA off an untainted pool someone adds later, too.
        "nodeSelector": _on_system_nodes(),
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchExpressions": [
                {"key": "app", "operator": "In",
                 "values": ["keda-operator", "keda-operator-metrics-apiserver", "keda-admission-webhooks"]}]}},
        }]}},
    }


def metrics_server_values() -> dict[str, Any]:
    """Values for the `metrics-server` release (the resource metrics API that CPU triggers read)."""
    return {
        "replicas": HA_REPLICAS,
        "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
        "nodeSelector": _on_system_nodes(),
    }


@dataclass(frozen=True)
class AutoscalingArgs:
    region: str


class Autoscaling(pulumi.ComponentResource):
    """What scales replicas in one cluster: KEDA with its CRDs and admission webhook, and metrics-server.

    The API server reaches KEDA's webhooks (9443), its external metrics APIService (6443) and metrics-server's
    resource metrics APIService (10250) on their pods through the EKS cluster security group, which the system node
    group's launch template leaves on its nodes (https://docs.aws.amazon.com/eks/latest/userguide/sec-group-reqs.html).

    First create: both releases wait (atomic) for their pods, so a release that renders a ScaledObject and
    depends on this component finds KEDA's CRDs and webhook in place. Update: KEDA's CRDs move with the chart.
    Failure: atomic rolls a release back; ScaledObjects already applied keep their HPAs (KEDA owns them, the
    HPA controller keeps acting on the last metrics). Deletion: the CRDs stay (resource-policy keep), so removing
    this component does not delete the model releases' ScaledObjects."""

    def __init__(self, name: str, args: AutoscalingArgs, kubernetes: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:cluster:Autoscaling", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=kubernetes)
        self.keda = helm_release(f"{name}-keda", KEDA, KEDA_NAMESPACE, keda_values(), child)
        self.metrics_server = helm_release(f"{name}-metrics-server", METRICS_SERVER, METRICS_SERVER_NAMESPACE,
                                             metrics_server_values(), child)
        self.register_outputs({"keda": self.keda.status, "metrics_server": self.metrics_server.status,
                               "prometheus_url": PROMETHEUS_URL})
