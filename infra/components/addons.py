"""ClusterAddons: the NVIDIA device plugin, ingress-nginx and the Secrets Store CSI driver with its AWS provider, as
Helm releases."""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.scheduling import GPU_TAINT_KEY, SPOT_TAINT_KEY

DEVICE_PLUGIN = ("nvidia-device-plugin", "0.17.1", "https://nvidia.github.io/k8s-device-plugin")
INGRESS_NGINX = ("ingress-nginx", "4.12.1", "https://kubernetes.github.io/ingress-nginx")
# The AWS provider (ASCP); its chart installs the Secrets Store CSI driver as a dependency (1.6.0 in the
# chart's Chart.lock) with the `tokenRequests` audience sts.amazonaws.com that IRSA needs. Version 3.1.1
# is in https://aws.github.io/secrets-store-csi-driver-provider-aws/index.yaml.
SECRETS_STORE_AWS = ("secrets-store-csi-driver-provider-aws", "3.1.1",
                     "https://aws.github.io/secrets-store-csi-driver-provider-aws")
SECRETS_STORE_NAMESPACE = "kube-system"
INGRESS_NAMESPACE = "ingress-nginx"
INGRESS_SERVICE = "ingress-nginx-controller"  # from fullnameOverride below
# No AWS Load Balancer Controller runs here: this Service's NLB is made by the legacy AWS cloud provider
# (kubernetes/cloud-provider-aws, pkg/providers/v1/aws_loadbalancer.go: ensureLoadBalancerv2 reads this
# annotation's comma-separated key=value pairs into the NLB's tags when it creates it).
ADDITIONAL_TAGS = "service.beta.kubernetes.io/aws-load-balancer-additional-resource-tags"


def load_balancer_tags(tags: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(tags.items()))


@dataclass(frozen=True)
class ClusterAddonsArgs:
    region: str
    certificate_arn: pulumi.Input[str]
    tags: dict[str, str]  # stamped on the NLB, so the budget's tag filter sees its hours and traffic
    secrets_store: bool = False  # the model pods mount a secret from Secrets Manager


def _release(name: str, chart: tuple[str, str, str], namespace: str, values: dict,
             opts: pulumi.ResourceOptions) -> k8s.helm.v3.Release:
    chart_name, version, repo = chart
    return k8s.helm.v3.Release(
        name, name=chart_name, chart=chart_name, version=version,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=repo),
        namespace=namespace, create_namespace=True, atomic=True, values=values, opts=opts)


class ClusterAddons(pulumi.ComponentResource):
    """Cluster services the model servers and the gateway rely on."""

    def __init__(self, name: str, args: ClusterAddonsArgs, kubernetes: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:cluster:ClusterAddons", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=kubernetes)
        gpu_nodes = [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
                     {"key": SPOT_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
        self.device_plugin = _release(f"{name}-nvidia-device-plugin", DEVICE_PLUGIN, "nvidia-device-plugin", {
            # The plugin must run on every GPU node, spot ones included, whatever their taints.
            "tolerations": gpu_nodes,
        }, child)
        self.secrets_store = _release(f"{name}-secrets-store", SECRETS_STORE_AWS, SECRETS_STORE_NAMESPACE, {
            # The mount happens on the model pod's node: the provider must run on the tainted GPU nodes too
            # (the driver's DaemonSet tolerates every taint by default; the provider's tolerates none).
            "tolerations": gpu_nodes,
            "secrets-store-csi-driver": {"install": True},
        }, child) if args.secrets_store else None
        self.ingress = _release(f"{name}-ingress-nginx", INGRESS_NGINX, INGRESS_NAMESPACE, {
            "fullnameOverride": "ingress-nginx",
            "controller": {
                "replicaCount": 2,
                "service": {
                    "targetPorts": {"https": "http"},  # TLS ends at the NLB with the ACM certificate
                    "enableHttp": False,  # no plaintext listener: bearer keys never cross the internet in clear
                    "annotations": {
                        "service.beta.kubernetes.io/aws-load-balancer-ssl-negotiation-policy":
                            "ELBSecurityPolicy-TLS13-1-2-2021-06",
                        "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
                        "service.beta.kubernetes.io/aws-load-balancer-ssl-cert": args.certificate_arn,
                        "service.beta.kubernetes.io/aws-load-balancer-ssl-ports": "https",
                        "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled": "true",
                        ADDITIONAL_TAGS: load_balancer_tags(args.tags),
                    },
                },
                # Streams must flow token by token; long generations need long reads.
                # No use-forwarded-headers: the NLB adds none, so a client could forge X-Forwarded-For.
                "config": {"proxy-buffering": "off", "proxy-read-timeout": "600", "proxy-send-timeout": "600"},
                "metrics": {"enabled": True},
            },
        }, child)
        # The NLB's hostname, known once ingress-nginx's Service has its load balancer.
        service = k8s.core.v1.Service.get(
            f"{name}-ingress-lb", f"{INGRESS_NAMESPACE}/{INGRESS_SERVICE}",
            opts=pulumi.ResourceOptions(parent=self, provider=kubernetes, depends_on=[self.ingress]))
        self.load_balancer_hostname = service.status.apply(_ingress_hostname)
        self.register_outputs({"load_balancer_hostname": self.load_balancer_hostname})


def _ingress_hostname(status: k8s.core.v1.outputs.ServiceStatus | None) -> str:
    """The hostname of the Service's first load balancer ingress (read once the release has made it)."""
    lb = status.load_balancer if status else None
    hostname = lb.ingress[0].hostname if lb is not None and lb.ingress else None
    assert hostname, "ingress-nginx's Service has no load balancer hostname"
    return hostname
