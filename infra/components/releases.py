"""Helm releases of the third-party charts the clusters run (add-ons, autoscaling, monitoring, Karpenter, the load
balancer controller): one way to pin and install a chart."""
from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

# (chart, version, repository URL): a chart pinned to one version. An OCI chart carries its registry in the chart
# reference (`oci://...`) and has no repository ("").
Chart = tuple[str, str, str]


def helm_release(name: str, chart: Chart, namespace: str, values: pulumi.Input[dict[str, Any]],
                 opts: pulumi.ResourceOptions, *, release_name: str | None = None, create_namespace: bool = True,
                 **extra: Any) -> k8s.helm.v3.Release:
    """The chart installed as Helm release `release_name` (default: the chart's own name), atomically: a failed
    install or upgrade is rolled back and the update fails, instead of leaving a half-applied release (Pulumi's
    Release `atomic`, helm's --atomic). `extra` passes further Release arguments (timeout, skip_crds)."""
    chart_name, version, repo = chart
    return k8s.helm.v3.Release(
        name, name=release_name or chart_name.rsplit("/", 1)[-1], chart=chart_name, version=version,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=repo) if repo else None,
        namespace=namespace, create_namespace=True if create_namespace else None, atomic=True, values=values,
        opts=opts, **extra)
