"""Karpenter: the node autoscaler of a cluster's GPU pools: its controller role (IRSA), its nodes' role and access
entry, the interruption queue and the EventBridge rules that feed it, and its two Helm releases (CRDs, controller)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.components.cluster import NODE_POLICIES, assume_role_policy
from infra.components.gateway import irsa_trust_policy
from infra.components.providers import child_opts
from infra.components.releases import helm_release
from infra.scheduling import POOL_LABEL

# The newest stable release (github.com/aws/karpenter-provider-aws tag v1.14.1, 2026-08-20; charts/karpenter and
# charts/karpenter-crd Chart.yaml 1.14.1 at 1d927085dd81a9df9301e613f371dac5b4d16bfe), published as OCI charts.
VERSION = "1.14.1"
CHART = "oci://public.ecr.aws/karpenter/karpenter"
CRD_CHART = "oci://public.ecr.aws/karpenter/karpenter-crd"
# Where the getting-started guide installs it (KARPENTER_NAMESPACE=kube-system): the chart's
# priorityClassName system-cluster-critical is admitted there by the default ResourceQuota scoping.
NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "karpenter"  # the chart's fullname, and so its ServiceAccount's
SYSTEM_POOL = "system"
REPLICAS = 2
# The getting-started guide's controller sizing (`--set controller.resources.requests.cpu=1 ... memory=1Gi`,
# limits equal): one core and 1 GiB, a guaranteed pod that capacity-fit places on the system nodes.
CONTROLLER_RESOURCES = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
# The interruption events Karpenter acts on, each an EventBridge rule into the queue, as the getting-started
# CloudFormation template (website/content/en/docs/getting-started/getting-started-with-karpenter/
# cloudformation.yaml @ v1.14.1) makes them: Karpenter cordons and drains a node ahead of the event.
INTERRUPTION_EVENTS: dict[str, tuple[str, str]] = {
    "scheduled-change": ("aws.health", "AWS Health Event"),
    "spot-interruption": ("aws.ec2", "EC2 Spot Instance Interruption Warning"),
    "rebalance": ("aws.ec2", "EC2 Instance Rebalance Recommendation"),
    "instance-state-change": ("aws.ec2", "EC2 Instance State-change Notification"),
    "capacity-reservation-interruption": ("aws.ec2", "EC2 Capacity Reservation Instance Interruption Warning"),
}
# The template's queue keeps a message 300 s: an interruption older than that has happened already.
QUEUE_RETENTION_SECONDS = 300


@dataclass(frozen=True)
class KarpenterArgs:
    region: str
    cluster_name: str
    iam_path: str
    tags: dict[str, str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]  # without https://
    system_nodes: int  # the system node group's size: the chart keeps its replicas on distinct nodes


def controller_policy(cluster: str, region: str, account: str, node_role_arn: str, queue_arn: str) -> dict[str, Any]:
    """Karpenter's controller policy as the getting-started CloudFormation template @ v1.14.1 writes it (its
    NodeLifecycle, IAMIntegration, EKSIntegration, Interruption and ResourceDiscovery policies, in one
    document), scoped as upstream scopes it: EC2 writes to resources tagged (or being tagged)
    kubernetes.io/cluster/<cluster>=owned with a karpenter.sh/nodepool tag, instance profiles tagged for this
    cluster and region, PassRole on this cluster's node role only, reads in this region only. The zonal
    shift policy is left out: settings.enableZonalShift stays off."""
    arn = f"arn:aws:ec2:{region}"
    owned = {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned"}
    request_owned = {f"aws:RequestTag/kubernetes.io/cluster/{cluster}": "owned",
                     "aws:RequestTag/eks:eks-cluster-name": cluster}
    nodepool = {"aws:ResourceTag/karpenter.sh/nodepool": "*"}
    launched = [f"{arn}:*:{kind}/*" for kind in ("fleet", "instance", "volume", "network-interface",
                                                  "launch-template", "spot-instances-request")]
    profile = f"arn:aws:iam::{account}:instance-profile/*"
    region_tag = {"aws:ResourceTag/topology.kubernetes.io/region": region}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "AllowScopedEC2InstanceAccessActions", "Effect": "Allow",
         "Resource": [f"{arn}::image/*", f"{arn}::snapshot/*", f"{arn}:*:security-group/*", f"{arn}:*:subnet/*",
                      f"{arn}:*:capacity-reservation/*", f"{arn}:*:placement-group/*"],
         "Action": ["ec2:RunInstances", "ec2:CreateFleet"]},
        {"Sid": "AllowScopedEC2LaunchTemplateAccessActions", "Effect": "Allow",
         "Resource": f"{arn}:*:launch-template/*", "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Condition": {"StringEquals": owned, "StringLike": nodepool}},
        {"Sid": "AllowScopedEC2InstanceActionsWithTags", "Effect": "Allow", "Resource": launched,
         "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"],
         "Condition": {"StringEquals": request_owned,
                       "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "AllowScopedResourceCreationTagging", "Effect": "Allow", "Resource": launched,
         "Action": "ec2:CreateTags",
         "Condition": {"StringEquals": {**request_owned,
                                        "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"]},
                       "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "AllowScopedResourceTagging", "Effect": "Allow", "Resource": f"{arn}:*:instance/*",
         "Action": "ec2:CreateTags",
         "Condition": {"StringEquals": owned, "StringLike": nodepool,
                       "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": cluster},
                       "ForAllValues:StringEquals": {
                           "aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name"]}}},
        {"Sid": "AllowScopedDeletion", "Effect": "Allow",
         "Resource": [f"{arn}:*:instance/*", f"{arn}:*:launch-template/*"],
         "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
         "Condition": {"StringEquals": owned, "StringLike": nodepool}},
        {"Sid": "AllowPassingInstanceRole", "Effect": "Allow", "Resource": node_role_arn, "Action": "iam:PassRole",
         "Condition": {"StringEquals": {"iam:PassedToService": ["ec2.amazonaws.com", "ec2.amazonaws.com.cn"]}}},
        {"Sid": "AllowScopedInstanceProfileCreationActions", "Effect": "Allow", "Resource": profile,
         "Action": ["iam:CreateInstanceProfile"],
         "Condition": {"StringEquals": {**request_owned, "aws:RequestTag/topology.kubernetes.io/region": region},
                       "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"}}},
        {"Sid": "AllowScopedInstanceProfileTagActions", "Effect": "Allow", "Resource": profile,
         "Action": ["iam:TagInstanceProfile"],
         "Condition": {"StringEquals": {**owned, **region_tag, **request_owned,
                                        "aws:RequestTag/topology.kubernetes.io/region": region},
                       "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*",
                                      "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"}}},
        {"Sid": "AllowScopedInstanceProfileActions", "Effect": "Allow", "Resource": profile,
         "Action": ["iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile",
                    "iam:DeleteInstanceProfile"],
         "Condition": {"StringEquals": {**owned, **region_tag},
                       "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*"}}},
        {"Sid": "AllowAPIServerEndpointDiscovery", "Effect": "Allow",
         "Resource": f"arn:aws:eks:{region}:{account}:cluster/{cluster}", "Action": "eks:DescribeCluster"},
        {"Sid": "AllowInterruptionQueueActions", "Effect": "Allow", "Resource": queue_arn,
         "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"]},
        {"Sid": "AllowRegionalReadActions", "Effect": "Allow", "Resource": "*",
         "Action": ["ec2:DescribeCapacityReservations", "ec2:DescribeImages", "ec2:DescribeInstances",
                    "ec2:DescribeInstanceStatus", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes",
                    "ec2:DescribeLaunchTemplates", "ec2:DescribePlacementGroups", "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets"],
         "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
        {"Sid": "AllowSSMReadActions", "Effect": "Allow",
         "Resource": f"arn:aws:ssm:{region}::parameter/aws/service/*", "Action": "ssm:GetParameter"},
        {"Sid": "AllowPricingReadActions", "Effect": "Allow", "Resource": "*", "Action": "pricing:GetProducts"},
        {"Sid": "AllowUnscopedInstanceProfileListAction", "Effect": "Allow", "Resource": "*",
         "Action": "iam:ListInstanceProfiles"},
        {"Sid": "AllowInstanceProfileReadActions", "Effect": "Allow", "Resource": profile,
         "Action": "iam:GetInstanceProfile"},
    ]}


def queue_policy(queue_arn: str) -> dict[str, Any]:
    """The template's KarpenterInterruptionQueuePolicy: EventBridge (and SQS) may send; nothing over plain HTTP."""
    return {"Version": "2012-10-17", "Id": "EC2InterruptionPolicy", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
         "Action": "sqs:SendMessage", "Resource": queue_arn},
        {"Sid": "DenyHTTP", "Effect": "Deny", "Action": "sqs:*", "Resource": queue_arn, "Principal": "*",
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ]}


def controller_values(cluster: str, queue_name: pulumi.Input[str], role_arn: pulumi.Input[str],
                      system_nodes: int) -> dict[str, Any]:
    return {
        "settings": {"clusterName": cluster, "interruptionQueue": queue_name,
                     # Reserved pools launch into their ODCR or Capacity Block through the `reserved` capacity
                     # type (beta, on by default since v1.6: website docs/reference/settings.md).
                     "featureGates": {"reservedCapacity": True}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": role_arn}},
        # Two for a leader and a warm standby, never more than the system nodes: the chart's podAntiAffinity
        # (requiredDuringScheduling, topologyKey kubernetes.io/hostname) would leave a second replica on a
        # one-node system group Pending for good.
        "replicas": min(REPLICAS, system_nodes),
        # On the system node group: Karpenter must never run on nodes it manages (the chart's affinity also
        # requires karpenter.sh/nodepool DoesNotExist), and the GPU pools are tainted.
        "nodeSelector": {"kubernetes.io/os": "linux", POOL_LABEL: SYSTEM_POOL},
        "controller": {"resources": CONTROLLER_RESOURCES},
    }


class Karpenter(pulumi.ComponentResource):
    """Everything Karpenter needs in one cluster. `release` is the controller's Helm release: NodePools depend on
    it, so a destroy deletes them (and Karpenter terminates their nodes) while the controller still runs."""

    def __init__(self, name: str, args: KarpenterArgs, provider: aws.Provider, iam: aws.Provider,
                 kubernetes: k8s.Provider, after: list[pulumi.Resource], opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:compute:Karpenter", name, None, opts)
        child, iam_child = child_opts(self, provider), child_opts(self, iam)
        cluster, region = args.cluster_name, args.region

        # Its own node role, not the system node group's: EKS maps a managed node group's role itself and unmaps
        # it when the last group using it goes ("If you delete a managed node group that uses a node IAM role
        # that isn't used by any other managed node group ... the role is removed", EKS user guide
        # delete-managed-node-group.adoc), and refuses a second access entry for a principal that has one.
        self.node_role = aws.iam.Role(f"{name}-karpenter-nodes", path=args.iam_path,
                                      description=f"llm-platform GPU nodes Karpenter launches in {cluster}",
                                      assume_role_policy=assume_role_policy("ec2.amazonaws.com"), opts=iam_child)
        # The NodePools depend on these (infra/components/node_pool.py): a node launches with its ECR, CNI and EKS
        # worker permissions in place, and a destroy drains and terminates the pools' nodes before they go.
        self.node_policies = [
            aws.iam.RolePolicyAttachment(f"{name}-karpenter-nodes-{short}", role=self.node_role.name,
                                         policy_arn=arn, opts=iam_child)
            for short, arn in NODE_POLICIES.items()]
        # Authentication mode API: nodes Karpenter launches join only through an EC2_LINUX access entry
        # (EKS user guide grant-k8s-access.adoc, access entry types; Karpenter getting-started "Create the
        # EKS cluster" maps KarpenterNodeRole the same way).
        self.access_entry = aws.eks.AccessEntry(f"{name}-karpenter-nodes", cluster_name=cluster,
                                                principal_arn=self.node_role.arn, type="EC2_LINUX",
                                                opts=child_opts(self, provider, depends_on=after))

        self.queue = aws.sqs.Queue(f"{name}-karpenter-interruption", name=f"{cluster}-karpenter",
                                   message_retention_seconds=QUEUE_RETENTION_SECONDS, sqs_managed_sse_enabled=True,
                                   opts=child)
        aws.sqs.QueuePolicy(f"{name}-karpenter-interruption", queue_url=self.queue.url,
                            policy=self.queue.arn.apply(lambda arn: json.dumps(queue_policy(arn))), opts=child)
        self.rules = []
        for short, (source, detail) in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(
                f"{name}-karpenter-{short}", description=f"{detail} -> Karpenter's interruption queue of {cluster}",
                event_pattern=json.dumps({"source": [source], "detail-type": [detail]}), opts=child)
            aws.cloudwatch.EventTarget(f"{name}-karpenter-{short}", rule=rule.name, arn=self.queue.arn,
                                       target_id="KarpenterInterruptionQueueTarget", opts=child)
            self.rules.append(rule)

        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(provider=iam, parent=self)).account_id
        self.role = aws.iam.Role(
            f"{name}-karpenter", path=args.iam_path, description=f"Karpenter controller of {cluster}",
            assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer).apply(
                lambda a: json.dumps(irsa_trust_policy(a[0], a[1], [f"system:serviceaccount:{NAMESPACE}:"
                                                                    f"{SERVICE_ACCOUNT}"]))),
            tags=args.tags, opts=iam_child)
        self.policy = aws.iam.RolePolicy(
            f"{name}-karpenter", role=self.role.name,
            policy=pulumi.Output.all(account, self.node_role.arn, self.queue.arn).apply(
                lambda a: json.dumps(controller_policy(cluster, region, a[0], a[1], a[2]), separators=(",", ":"))),
            opts=iam_child)

        k8s_child = pulumi.ResourceOptions(parent=self, provider=kubernetes)
        # CRDs through their own chart, so an upgrade updates them (Helm never upgrades a chart's crds/
        # directory: Karpenter upgrade guide, "CRD Upgrades").
        self.crds = helm_release(
            f"{name}-karpenter-crd", (CRD_CHART, VERSION, ""), NAMESPACE, {"additionalAnnotations": {}},
            pulumi.ResourceOptions.merge(k8s_child, pulumi.ResourceOptions(depends_on=after)), create_namespace=False)
        self.release = helm_release(
            f"{name}-karpenter", (CHART, VERSION, ""), NAMESPACE,
            controller_values(cluster, self.queue.name, self.role.arn, args.system_nodes),
            pulumi.ResourceOptions.merge(k8s_child, pulumi.ResourceOptions(
                depends_on=[self.crds, self.policy, self.access_entry, *after])),
            create_namespace=False, skip_crds=True)
        self.register_outputs({"queue": self.queue.name, "role": self.role.arn, "node_role": self.node_role.arn})
