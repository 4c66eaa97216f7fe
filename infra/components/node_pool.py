"""NodePool: one EKS managed node group of GPU instances, labelled and tainted so only its models land there."""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.providers import child_opts
from infra.config import Pool
from infra.scheduling import CAPACITY_LABEL, POOL_LABEL, pool_taints

# EKS spells taint effects differently from Kubernetes.
EKS_EFFECT = {"NoSchedule": "NO_SCHEDULE", "NoExecute": "NO_EXECUTE", "PreferNoSchedule": "PREFER_NO_SCHEDULE"}
GPU_AMI = "AL2023_x86_64_NVIDIA"


@dataclass(frozen=True)
class NodePoolArgs:
    pool: Pool
    cluster_name: pulumi.Input[str]
    node_role_arn: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]


def node_labels(pool: Pool) -> dict[str, str]:
    # nvidia.com/gpu.present is what the NVIDIA device plugin chart's default affinity selects.
    return {POOL_LABEL: pool.name, CAPACITY_LABEL: pool.capacity, "nvidia.com/gpu.present": "true"}


class NodePool(pulumi.ComponentResource):
    def __init__(self, name: str, args: NodePoolArgs, provider: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:compute:NodePool", name, None, opts)
        pool = args.pool
        self.node_group = aws.eks.NodeGroup(
            name,
            cluster_name=args.cluster_name,
            node_role_arn=args.node_role_arn,
            subnet_ids=args.subnet_ids,
            ami_type=GPU_AMI,
            capacity_type="SPOT" if pool.spot else "ON_DEMAND",
            instance_types=pool.instance_types,
            disk_size=pool.disk_gib,
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=pool.min_nodes, max_size=pool.max_nodes, desired_size=pool.min_nodes),
            labels=node_labels(pool),
            taints=[aws.eks.NodeGroupTaintArgs(key=t["key"], value=t["value"], effect=EKS_EFFECT[t["effect"]])
                    for t in pool_taints(pool.spot)],
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            # The cluster autoscaler owns the desired size once the pool exists.
            opts=child_opts(self, provider, ignore_changes=["scalingConfig.desiredSize"]),
        )
        self.register_outputs({"node_group": self.node_group.node_group_name})
