"""LoadBalancerController: the AWS Load Balancer Controller of one region (Helm release and IRSA role), which makes
the gateway Service's NLB, and the NLB's hostname read back from that Service."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.components.cluster import SYSTEM_POOL
from infra.components.gateway import irsa_trust_policy
from infra.components.releases import helm_release
from infra.scheduling import POOL_LABEL

# The newest stable release when pinned: chart 3.5.0 (app v3.5.0) in https://aws.github.io/eks-charts, from
# aws/eks-charts stable/aws-load-balancer-controller at 5239609 ("aws-load-balancer-controller: v3.5.0").
CONTROLLER_CHART = ("aws-load-balancer-controller", "3.5.0", "https://aws.github.io/eks-charts")
CONTROLLER_NAMESPACE = "kube-system"
CONTROLLER_SERVICE_ACCOUNT = "aws-load-balancer-controller"
# The controller's own IAM policy at the tag the chart runs (kubernetes-sigs/aws-load-balancer-controller
# docs/install/iam_policy.json@v3.5.0), vendored verbatim: a new chart version comes with its policy.
IAM_POLICY_FILE = Path(__file__).resolve().parent / "vendor" / "aws-load-balancer-controller-v3.5.0" / "iam_policy.json"
# The class the controller reconciles (docs/guide/service/nlb.md@v3.5.0); the in-tree cloud provider ignores a
# Service that names another class, so the gateway's NLB can only be this controller's.
NLB_CLASS = "service.k8s.aws/nlb"


def controller_service_account_subject() -> str:
    return f"system:serviceaccount:{CONTROLLER_NAMESPACE}:{CONTROLLER_SERVICE_ACCOUNT}"


@cache
def upstream_policy() -> dict[str, Any]:
    """The controller's IAM policy exactly as upstream publishes it for the pinned version, scoped as upstream
    scopes it (creation and mutation conditioned on the elbv2.k8s.aws/cluster tag the controller stamps)."""
    policy: dict[str, Any] = json.loads(IAM_POLICY_FILE.read_text())
    return policy


def region_fence(region: str) -> dict[str, Any]:
    """The controller of `region` acts in `region` only: everything but IAM (a global service, whose requests
    name us-east-1) is denied elsewhere. Upstream's policy names every region (`arn:aws:...:*:*:...`)."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "StayInRegion", "Effect": "Deny", "NotAction": ["iam:*"], "Resource": "*",
            "Condition": {"StringNotEquals": {"aws:RequestedRegion": region}},
        }],
    }


def controller_values(*, cluster_name: pulumi.Input[str], region: str, vpc_id: pulumi.Input[str],
                      role_arn: pulumi.Input[str]) -> dict[str, Any]:
    """Values for the controller's release (chart keys from its values.yaml at 3.5.0)."""
    return {
        "clusterName": cluster_name,
        # Given, not discovered: the controller would otherwise ask the instance metadata service, which the
        # system nodes' hop limit of 2 allows but which is one more thing to fail at start.
        "region": region,
        "vpcId": vpc_id,
        "replicaCount": 2,  # leader-elected: the second takes over, and serves the webhooks meanwhile
        "serviceAccount": {"create": True, "name": CONTROLLER_SERVICE_ACCOUNT,
                           "annotations": {"eks.amazonaws.com/role-arn": role_arn}},
        "nodeSelector": {POOL_LABEL: SYSTEM_POOL},
        # No Ingress anywhere: no `alb` IngressClass and no IngressClassParams (a custom resource) either.
        "createIngressClassResource": False,
        # Off: the Service webhook `mservice.elbv2.k8s.aws` only sets loadBalancerClass on LoadBalancer Services
        # that name none, but it sees every Service created in the cluster with failurePolicy Fail
        # (templates/webhook.yaml), so while no controller pod answers no Service could be created anywhere
        # (the model releases' included). The gateway's Service names the class itself; no other may be a
        # LoadBalancer (cluster-hardening). Upstream documents turning it off (annotations.md@v3.5.0,
        # "Legacy Cloud Provider").
        "enableServiceMutatorWebhook": False,
        "podDisruptionBudget": {"maxUnavailable": 1},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }


@dataclass(frozen=True)
class LoadBalancerControllerArgs:
    region: str
    cluster_name: pulumi.Input[str]
    vpc_id: pulumi.Input[str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    iam_path: str
    tags: dict[str, str]


class LoadBalancerController(pulumi.ComponentResource):
    """Reconciles Services of class service.k8s.aws/nlb into NLBs; the gateway's release depends on it.

    Order matters both ways. On create, the gateway's Service must come after the controller: its atomic
    release waits for the Service's load balancer (helm pkg/kube/ready.go), which only a running controller
    with its role makes; the Service names the class service.k8s.aws/nlb, so the in-tree cloud provider never
    makes a CLB or NLB of its own for it whatever the order (annotations.md@v3.5.0, "Legacy Cloud Provider";
    the chart's Service webhook, which would set the class on Services naming none, is off). On destroy,
    the controller must outlive the Service: it put the finalizer `service.k8s.aws/resources` on it
    (controllers/service/service_controller.go@v3.5.0) and deletes the NLB before lifting it; uninstalled
    first, the finalizer stays and the NLB leaks. Pulumi deletes dependents first, and an atomic release's
    delete waits for its objects to be gone (pulumi-kubernetes provider/pkg/provider/helm_release.go,
    Delete: `if release.Atomic || !release.SkipAwait { uninstall.Wait = true }`)."""

    def __init__(self, name: str, args: LoadBalancerControllerArgs, kubernetes: k8s.Provider, iam: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:cluster:LoadBalancerController", name, None, opts)
        on_iam = pulumi.ResourceOptions(parent=self, provider=iam)
        self.role = aws.iam.Role(
            f"{name}-lb-controller", path=args.iam_path,
            description=f"llm-platform AWS Load Balancer Controller in {args.region}",
            assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer).apply(
                lambda a: json.dumps(irsa_trust_policy(a[0], a[1], [controller_service_account_subject()]))),
            tags=args.tags, opts=on_iam)
        grants = aws.iam.RolePolicy(f"{name}-lb-controller", role=self.role.name,
                                    policy=json.dumps(upstream_policy()), opts=on_iam)
        fence = aws.iam.RolePolicy(f"{name}-lb-controller-region", role=self.role.name,
                                   policy=json.dumps(region_fence(args.region)), opts=on_iam)
        self.release = helm_release(
            f"{name}-{CONTROLLER_CHART[0]}", CONTROLLER_CHART, CONTROLLER_NAMESPACE,
            controller_values(cluster_name=args.cluster_name, region=args.region, vpc_id=args.vpc_id,
                              role_arn=self.role.arn),
            # The pods start with the role; its permissions must be there by the first reconcile.
            pulumi.ResourceOptions(parent=self, provider=kubernetes, depends_on=[grants, fence]),
            create_namespace=False)
        self.register_outputs({"role_arn": self.role.arn})


def load_balancer_hostname(name: str, service: str, release: k8s.helm.v3.Release,
                           kubernetes: k8s.Provider, parent: pulumi.Resource) -> pulumi.Output[str]:
    """The NLB's hostname from the Service's status, read once the release that made the Service is done (an
    atomic release waits for a LoadBalancer Service to have its ingress: helm pkg/kube/ready.go
    serviceReady)."""
    # The read's id comes from the release's own output, not a literal with depends_on: `depends_on` does not defer
    # a `.get` at preview (pulumi/pulumi#16395, pulumi/pulumi-kubernetes#2789 "Preview failed: resource ... does not
    # exist"), so a stack whose cluster exists but whose Service does not yet would fail its preview. While the
    # release is created or changed its status is unknown at preview, so is the id, and the engine skips the read
    # and leaves its outputs unknown (pulumi/pulumi#1124 "Skip reading unknown IDs"; pkg/resource/deploy/step.go
    # ReadStep). At `up` the id resolves once the release is done, so the read also waits for it.
    service_id = release.status.apply(lambda status: f"{status.namespace}/{service}")
    read = k8s.core.v1.Service.get(
        name, service_id, opts=pulumi.ResourceOptions(parent=parent, provider=kubernetes, depends_on=[release]))
    return read.status.apply(lambda status: service_id.apply(lambda sid: _hostname(status, sid)))


def _hostname(status: k8s.core.v1.outputs.ServiceStatus | None, service: str) -> str:
    lb = status.load_balancer if status else None
    hostname = lb.ingress[0].hostname if lb is not None and lb.ingress else None
    if not hostname:
        raise ValueError(f"Service {service} has no load balancer hostname: is the AWS Load Balancer Controller "
                         f"running, and its NLB provisioned?")
    return hostname
