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
    tags: dict[str, str]  # stamped on the instances, their volumes and interfaces


def node_labels(pool: Pool) -> dict[str, str]:
    # nvidia.com/gpu.present is what the NVIDIA device plugin chart's default affinity selects.
    return {POOL_LABEL: pool.name, CAPACITY_LABEL: pool.capacity, "nvidia.com/gpu.present": "true"}


class NodePool(pulumi.ComponentResource):
    def __init__(self, name: str, args: NodePoolArgs, provider: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:compute:NodePool", name, None, opts)
        pool = args.pool
        # Managed node groups don't pass their tags on to the instances they start, and the budget
        # filters on the stack tag: without this template the GPU spend would be invisible to it.
        template = aws.ec2.LaunchTemplate(
            name,
            description=f"llm-platform GPU pool {pool.name}",
            block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name="/dev/xvda",
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_size=pool.disk_gib, volume_type="gp3", encrypted="true", delete_on_termination="true"))],
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(  # IMDSv2 only
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=2),
            tag_specifications=[aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=args.tags)
                                for kind in ("instance", "volume", "network-interface")],
            opts=child_opts(self, provider))
        self.node_group = aws.eks.NodeGroup(
            name,
            cluster_name=args.cluster_name,
            node_role_arn=args.node_role_arn,
            subnet_ids=args.subnet_ids,
            ami_type=GPU_AMI,
            capacity_type="SPOT" if pool.spot else "ON_DEMAND",
            instance_types=pool.instance_types,
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)),
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
