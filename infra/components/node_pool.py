"""NodePool: one GPU pool as a Karpenter NodePool and its EC2NodeClass, labelled and tainted so only its models land
there, bounded by limits from max_nodes."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.catalog import Catalog
from infra.chart_values import DRAIN_MARGIN_SECONDS, VLLM_DRAIN_SECONDS, VLLM_PRESTOP_SECONDS
from infra.config import Pool
from infra.scheduling import CAPACITY_LABEL, GPU_RESOURCE, POOL_LABEL, pool_taints

NODEPOOL_API = "karpenter.sh/v1"
NODECLASS_API = "karpenter.k8s.aws/v1"
# The EKS-optimized AL2023 AMI release every GPU node boots, pinned: Karpenter resolves the alias to the
# release's NVIDIA variant for GPU instance types (pkg/providers/amifamily/al2023.go @ v1.14.1 reads the
# standard, nvidia and neuron SSM parameters of the version). v20260714 is the newest release in
# awslabs/amazon-eks-ami CHANGELOG.md @ 81fec2e, built for Kubernetes 1.33-1.36. Bumping it is a drift every
# node replaces through the disruption budget below; never `@latest`, which moves under a running pool.
AMI_ALIAS = "al2023@v20260714"
# A reserved pool's one instance type, on its nodes (read by the vLLM chart values' sizing like before).
INSTANCE_TYPE_LABEL = "llm-platform/instance-type"
# Karpenter's well-known labels (website/content/en/docs/concepts/scheduling.md @ v1.14.1): the config names zones
# by ID (the same zone in every account), which Karpenter schedules on directly.
ZONE_ID_LABEL = "topology.k8s.aws/zone-id"
WELL_KNOWN_INSTANCE_TYPE = "node.kubernetes.io/instance-type"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
# What the plan reads back: the nodes the pool keeps for its models' minimum replicas (Karpenter has no minimum
# size: infra/config.py holds min_nodes to exactly that floor).
MIN_NODES_ANNOTATION = "llm-platform/min-nodes"
# Karpenter capacity types (nodepools.md, "capacity type"): `reserved` is an ODCR or a Capacity Block.
CAPACITY_TYPE = {"spot": "spot", "on-demand": "on-demand", "reserved": "reserved"}
# A node's termination waits at most this long for its pods: Karpenter deletes each pod early enough to give it its
# full terminationGracePeriodSeconds before this timeout (NodePool CRD, spec.template.spec.terminationGracePeriod),
# so a vLLM replica always gets its preStop and drain (charts/vllm: preStop + drain + margin), plus a minute for
# the DaemonSets and the kubelet.
TERMINATION_GRACE_SECONDS = VLLM_PRESTOP_SECONDS + VLLM_DRAIN_SECONDS + DRAIN_MARGIN_SECONDS + 60
# Nodes are replaced after 30 days (Karpenter's default expireAfter), so a long-lived node's kernel, driver and
# disk state are renewed even while the AMI pin stands still. A reserved pool's reservation holds exactly its
# nodes: expiry would terminate one before a replacement can start, so those nodes do not expire; they are
# replaced by drift (an AMI bump), one at a time within the budget.
EXPIRE_AFTER = "720h"
# An interactive pool gives back only empty nodes, ten minutes after their last replica went: moving a running
# model means reloading tens of GiB of weights, and KEDA may scale the model out again at the next peak.
INTERACTIVE_CONSOLIDATE_AFTER = "10m"
# A spot batch pool may also repack underused nodes: batch work tolerates a restart, and spot bills by the node.
BATCH_CONSOLIDATE_AFTER = "5m"
DISRUPTION_BUDGET = [{"nodes": "1"}]  # at most one node of a pool is voluntarily disrupted at a time


@dataclass(frozen=True)
class NodePoolArgs:
    pool: Pool
    node_role_name: pulumi.Input[str]  # Karpenter's node role (infra/components/karpenter.py)
    subnet_ids: list[pulumi.Input[str]]  # only the zones that offer the pool's types (infra.placement.pool_zones)
    zone_ids: list[str]
    security_group_id: pulumi.Input[str]  # the cluster security group, as managed node groups use
    tags: dict[str, str]  # stamped on the instances, their volumes and interfaces
    catalog: Catalog
    # Karpenter's controller release: the pool is created after it and, on destroy, deleted before it, while the
    # controller still runs to drain and terminate the pool's nodes (its finalizers wait for that).
    karpenter: pulumi.Resource
    # The node role's policy attachments: created before the pool, so its first node can pull images and set up pod
    # networking (AmazonEC2ContainerRegistryReadOnly, AmazonEKS_CNI_Policy); deleted after it, so nodes being
    # drained on a destroy keep them until Karpenter has terminated them. Pulumi orders only what depends_on names
    # (the role's name alone is known before the attachments exist).
    node_role_policies: Sequence[pulumi.Resource]


def node_labels(pool: Pool) -> dict[str, str]:
    # nvidia.com/gpu.present is what the NVIDIA device plugin chart's default affinity selects.
    labels = {POOL_LABEL: pool.name, CAPACITY_LABEL: pool.capacity, "nvidia.com/gpu.present": "true"}
    if pool.reserved:
        labels[INSTANCE_TYPE_LABEL] = pool.instance_types[0]
    return labels


def limits(pool: Pool, catalog: Catalog) -> dict[str, str]:
    """max_nodes of the pool's largest type, in GPUs and in vCPUs: Karpenter launches nothing that would take the
    pool past either (nodepools.md, "spec.limits")."""
    known = [catalog.instance(t) for t in pool.instance_types if t in catalog.instances]
    return {GPU_RESOURCE: str(pool.max_nodes * max(i.gpus for i in known)),
            "cpu": str(pool.max_nodes * max(i.vcpus for i in known))}


def disruption(pool: Pool) -> dict[str, Any]:
    policy = "WhenEmptyOrUnderutilized" if pool.spot else "WhenEmpty"
    after = BATCH_CONSOLIDATE_AFTER if pool.spot else INTERACTIVE_CONSOLIDATE_AFTER
    return {"consolidationPolicy": policy, "consolidateAfter": after, "budgets": DISRUPTION_BUDGET}


def nodepool_spec(pool: Pool, node_class: str, zone_ids: list[str], catalog: Catalog) -> dict[str, Any]:
    return {
        "template": {
            "metadata": {"labels": node_labels(pool)},
            "spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": node_class},
                "requirements": [
                    {"key": WELL_KNOWN_INSTANCE_TYPE, "operator": "In", "values": list(pool.instance_types)},
                    {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": [CAPACITY_TYPE[pool.capacity]]},
                    {"key": ZONE_ID_LABEL, "operator": "In", "values": list(zone_ids)},
                ],
                "taints": pool_taints(pool.spot),
                "expireAfter": "Never" if pool.reserved else EXPIRE_AFTER,
                "terminationGracePeriod": f"{TERMINATION_GRACE_SECONDS}s",
            },
        },
        "limits": limits(pool, catalog),
        "disruption": disruption(pool),
    }


def nodeclass_spec(pool: Pool, role: str, subnet_ids: list[str], security_group_id: str,
                   tags: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "role": role,
        "amiSelectorTerms": [{"alias": AMI_ALIAS}],
        # By id, not by karpenter.sh/discovery tags (nodeclasses.md "spec.subnetSelectorTerms",
        # "spec.securityGroupSelectorTerms": a term may name an id): only the zones that offer the pool's
        # types, and the cluster security group managed node groups use, with no tag to keep in step.
        "subnetSelectorTerms": [{"id": s} for s in subnet_ids],
        "securityGroupSelectorTerms": [{"id": security_group_id}],
        "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {
            "volumeSize": f"{pool.disk_gib}Gi", "volumeType": "gp3", "encrypted": True,
            "deleteOnTermination": True}}],
        # IMDSv2 only, one hop: every pod here reaches AWS through IRSA, none through the node's role
        # (Karpenter's default; nodeclasses.md "spec.metadataOptions").
        "metadataOptions": {"httpEndpoint": "enabled", "httpProtocolIPv6": "disabled",
                            "httpPutResponseHopLimit": 1, "httpTokens": "required"},
        # Karpenter stamps these on the instances, volumes and interfaces it launches (nodeclasses.md
        # "spec.tags"): the budget's tag filter sees the GPU spend through them.
        "tags": dict(tags),
    }
    if pool.reservation is not None:
        # The reservation by id, ODCR or Capacity Block alike (nodeclasses.md
        # "spec.capacityReservationSelectorTerms"; ReservedCapacity is beta and on since v1.6).
        spec["capacityReservationSelectorTerms"] = [{"id": pool.reservation.id}]
    return spec


class NodePool(pulumi.ComponentResource):
    def __init__(self, name: str, args: NodePoolArgs, kubernetes: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:compute:NodePool", name, None, opts)
        pool = args.pool
        after = [args.karpenter, *args.node_role_policies]
        child = pulumi.ResourceOptions(parent=self, provider=kubernetes, depends_on=after)
        self.node_class = k8s.apiextensions.CustomResource(
            f"{name}-nodeclass", api_version=NODECLASS_API, kind="EC2NodeClass",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=pool.name),
            spec=pulumi.Output.all(args.node_role_name, args.security_group_id, *args.subnet_ids).apply(
                lambda a: nodeclass_spec(pool, a[0], list(a[2:]), a[1], args.tags)),
            opts=child)
        self.node_pool = k8s.apiextensions.CustomResource(
            name, api_version=NODEPOOL_API, kind="NodePool",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=pool.name,
                                                annotations={MIN_NODES_ANNOTATION: str(pool.min_nodes)}),
            spec=nodepool_spec(pool, pool.name, args.zone_ids, args.catalog),
            opts=pulumi.ResourceOptions(parent=self, provider=kubernetes, depends_on=[*after, self.node_class]))
        self.register_outputs({"node_pool": pool.name})
