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
# A reserved pool's one instance type, on its nodes and readable from the node group (a Capacity Block pool
# names its type in the launch template only).
INSTANCE_TYPE_LABEL = "llm-platform/instance-type"
CAPACITY_TYPE = {"spot": "SPOT", "on-demand": "ON_DEMAND", "odcr": "ON_DEMAND", "capacity-block": "CAPACITY_BLOCK"}


@dataclass(frozen=True)
class NodePoolArgs:
    pool: Pool
    cluster_name: pulumi.Input[str]
    node_role_arn: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]  # only the zones that offer the pool's types (infra.placement.pool_zones)
    tags: dict[str, str]  # stamped on the instances, their volumes and interfaces
    kubernetes_version: str  # pinned like the control plane's, so an upgrade is a reviewed change


def node_labels(pool: Pool) -> dict[str, str]:
    # nvidia.com/gpu.present is what the NVIDIA device plugin chart's default affinity selects.
    labels = {POOL_LABEL: pool.name, CAPACITY_LABEL: pool.capacity, "nvidia.com/gpu.present": "true"}
    if pool.reserved:
        labels[INSTANCE_TYPE_LABEL] = pool.instance_types[0]
    return labels


def update_config(pool: Pool) -> aws.eks.NodeGroupUpdateConfigArgs:
    """How a version bump or template change replaces nodes. By default EKS launches new nodes before
    draining old ones, "up to two instances per Availability Zone"
    (https://docs.aws.amazon.com/eks/latest/userguide/managed-node-update-behavior.html); a reservation
    sized to its pool has no spare instance for that, so a reserved pool replaces one node at a time in
    place (MINIMAL: terminate, then launch). A Capacity Block pool must also be scaled to 0 before a
    version upgrade (README: Running it for real)."""
    strategy = "MINIMAL" if pool.reserved else "DEFAULT"
    return aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1, update_strategy=strategy)


def capacity_type(pool: Pool) -> str:
    return CAPACITY_TYPE[pool.reservation.kind if pool.reservation else pool.capacity]


def reservation_template_args(pool: Pool) -> dict:
    """Launch template arguments that send a reserved pool's instances into its reservation.

    Capacity Block (https://docs.aws.amazon.com/eks/latest/userguide/capacity-blocks-mng.html): the template
    sets InstanceMarketOptions.MarketType "capacity-block", targets the block's id and names the instance type;
    the node group's capacityType is CAPACITY_BLOCK and lists no instance types (EKS refuses a type in both).
    ODCR (https://docs.aws.amazon.com/eks/latest/userguide/ml-node-groups.html, "On-Demand Capacity
    Reservations"): the template targets the reservation; the node group stays ON_DEMAND with its type.
    """
    res = pool.reservation
    if res is None:
        return {}
    args: dict = {"capacity_reservation_specification": aws.ec2.LaunchTemplateCapacityReservationSpecificationArgs(
        capacity_reservation_target=aws.ec2.LaunchTemplateCapacityReservationSpecificationCapacityReservationTargetArgs(
            capacity_reservation_id=res.id))}
    if res.kind == "capacity-block":
        args["instance_market_options"] = aws.ec2.LaunchTemplateInstanceMarketOptionsArgs(market_type="capacity-block")
        args["instance_type"] = pool.instance_types[0]
    return args


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
            **reservation_template_args(pool),
            opts=child_opts(self, provider))
        block = pool.reservation is not None and pool.reservation.kind == "capacity-block"
        self.node_group = aws.eks.NodeGroup(
            name,
            cluster_name=args.cluster_name,
            node_role_arn=args.node_role_arn,
            subnet_ids=args.subnet_ids,
            ami_type=GPU_AMI,
            version=args.kubernetes_version,
            capacity_type=capacity_type(pool),
            instance_types=None if block else pool.instance_types,
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=pool.min_nodes, max_size=pool.max_nodes, desired_size=pool.min_nodes),
            labels=node_labels(pool),
            taints=[aws.eks.NodeGroupTaintArgs(key=t["key"], value=t["value"], effect=EKS_EFFECT[t["effect"]])
                    for t in pool_taints(pool.spot)],
            update_config=update_config(pool),
            # The cluster autoscaler owns the desired size once the pool exists.
            opts=child_opts(self, provider, ignore_changes=["scalingConfig.desiredSize"]),
        )
        self.register_outputs({"node_group": self.node_group.node_group_name})
