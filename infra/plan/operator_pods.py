"""The StatefulSets the Prometheus Operator makes from rendered Prometheus and Alertmanager objects, as the scheduler
sees them: capacity-fit places them like any rendered workload.

The operator (v0.93.1, kube-prometheus-stack 88.5.3) gives each pod the main container with `spec.resources`, the
`config-reloader` sidecar and its `init-config-reloader` init container with the resources of its
`--config-reloader-*` flags (prometheus-operator pkg/prometheus/server/statefulset.go and
pkg/alertmanager/statefulset.go; the flags' defaults are 10m CPU and 50Mi memory, Documentation/platform/operator.md),
`spec.replicas` pods (default 1), and the pod's `nodeSelector`, `tolerations` and `affinity` from the spec.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

OPERATOR_KINDS = ("Prometheus", "Alertmanager")
RELOADER_DEFAULTS = {"cpu": "10m", "memory": "50Mi"}


def reloader_requests(objects: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The config reloader's requests from the rendered operator Deployment's flags (its defaults without them)."""
    found = dict(RELOADER_DEFAULTS)
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        for c in ((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
            for arg in c.get("args") or []:
                for resource in ("cpu", "memory"):
                    prefix = f"--config-reloader-{resource}-request="
                    if str(arg).startswith(prefix):
                        found[resource] = str(arg)[len(prefix):]
    return {k: v for k, v in found.items() if v != "0"}


def operator_statefulsets(objects: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A StatefulSet per Prometheus or Alertmanager object among `objects`, named as the operator names it."""
    objects = list(objects)
    reloader = {"requests": reloader_requests(objects)}
    out = []
    for obj in objects:
        if obj.get("kind") not in OPERATOR_KINDS:
            continue
        spec, meta = obj.get("spec") or {}, obj.get("metadata") or {}
        main = "prometheus" if obj["kind"] == "Prometheus" else "alertmanager"
        pod = {
            "containers": [{"name": main, "resources": spec.get("resources") or {}},
                           {"name": "config-reloader", "resources": reloader}],
            "initContainers": [{"name": "init-config-reloader", "resources": reloader}],
            "nodeSelector": spec.get("nodeSelector") or {},
            "tolerations": spec.get("tolerations") or [],
            "affinity": spec.get("affinity") or {},
        }
        out.append({"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "metadata": {"name": f"{main}-{meta.get('name')}", "namespace": meta.get("namespace")},
                    "spec": {"replicas": int(spec.get("replicas") or 1), "template": {"spec": pod}}})
    return out
