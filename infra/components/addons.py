"""ClusterAddons: the NVIDIA device plugin and the Secrets Store CSI driver with its AWS provider, as Helm releases.
(The gateway's load balancer is infra/components/load_balancer.py.)"""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.components.releases import helm_release
from infra.scheduling import GPU_TAINT_KEY, SPOT_TAINT_KEY

DEVICE_PLUGIN = ("nvidia-device-plugin", "0.17.1", "https://nvidia.github.io/k8s-device-plugin")
# The AWS provider (ASCP); its chart installs the Secrets Store CSI driver as a dependency (1.6.0 in the
# chart's Chart.lock) with the `tokenRequests` audience sts.amazonaws.com that IRSA needs. Version 3.1.1
# is in https://aws.github.io/secrets-store-csi-driver-provider-aws/index.yaml.
SECRETS_STORE_AWS = ("secrets-store-csi-driver-provider-aws", "3.1.1",
                     "https://aws.github.io/secrets-store-csi-driver-provider-aws")
SECRETS_STORE_NAMESPACE = "kube-system"


@dataclass(frozen=True)
class ClusterAddonsArgs:
    region: str
    secrets_store: bool = False  # the model pods mount a secret from Secrets Manager


class ClusterAddons(pulumi.ComponentResource):
    """Cluster services the model servers and the gateway rely on."""

    def __init__(self, name: str, args: ClusterAddonsArgs, kubernetes: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:cluster:ClusterAddons", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=kubernetes)
        gpu_nodes = [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
                     {"key": SPOT_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
        self.device_plugin = helm_release(f"{name}-nvidia-device-plugin", DEVICE_PLUGIN, "nvidia-device-plugin", {
            # The plugin must run on every GPU node, spot ones included, whatever their taints.
            "tolerations": gpu_nodes,
        }, child)
        self.secrets_store = helm_release(f"{name}-secrets-store", SECRETS_STORE_AWS, SECRETS_STORE_NAMESPACE, {
            # The mount happens on the model pod's node: the provider must run on the tainted GPU nodes too
            # (the driver's DaemonSet tolerates every taint by default; the provider's tolerates none).
            "tolerations": gpu_nodes,
            "secrets-store-csi-driver": {"install": True},
        }, child) if args.secrets_store else None
        self.register_outputs({})

