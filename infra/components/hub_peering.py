"""Hub peering: an inter-region VPC peering from the deploy hub's VPC to one region's VPC, accepted there, routed both
ways.

Inter-region peering cannot be auto-accepted by the requester: the accepter side accepts it with its
own region's provider (https://docs.aws.amazon.com/vpc/latest/peering/create-vpc-peering-connection.html,
pulumi.com/registry/packages/aws/api-docs/ec2/vpcpeeringconnectionaccepter). The blocks must not overlap
(config validation checks it). A private-only EKS endpoint's name resolves, from anywhere, to the
endpoint's private addresses, so a peered VPC reaches it without DNS options on the peering
(https://repost.aws/knowledge-center/eks-private-cluster-endpoint-vpc).
"""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.network import Network


@dataclass(frozen=True)
class HubPeeringArgs:
    hub_region: str
    region: str
    hub: Network
    spoke: Network


class HubPeering(pulumi.ComponentResource):
    """`routes` are what a cluster API call from the hub needs in place before it can succeed."""

    def __init__(self, name: str, args: HubPeeringArgs, hub_provider: aws.Provider, provider: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:deploy:HubPeering", name, None, opts)
        self.connection = aws.ec2.VpcPeeringConnection(
            name, vpc_id=args.hub.vpc_id, peer_vpc_id=args.spoke.vpc_id, peer_region=args.region,
            tags={"Name": f"deploy-hub-{args.hub_region}-to-{args.region}"},
            opts=pulumi.ResourceOptions(parent=self, provider=hub_provider))
        self.accepter = aws.ec2.VpcPeeringConnectionAccepter(
            name, vpc_peering_connection_id=self.connection.id, auto_accept=True,
            tags={"Name": f"deploy-hub-{args.hub_region}-to-{args.region}"},
            opts=pulumi.ResourceOptions(parent=self, provider=provider))
        # Routes only once accepted: a route to a pending peering is a blackhole.
        after = [self.accepter]
        self.routes = [
            *(aws.ec2.Route(f"{name}-to-{args.region}-{i}", route_table_id=table,
                            destination_cidr_block=args.spoke.cidr, vpc_peering_connection_id=self.accepter.id,
                            opts=pulumi.ResourceOptions(parent=self, provider=hub_provider, depends_on=after))
              for i, table in enumerate(args.hub.private_route_table_ids)),
            *(aws.ec2.Route(f"{name}-to-hub-{i}", route_table_id=table,
                            destination_cidr_block=args.hub.cidr, vpc_peering_connection_id=self.accepter.id,
                            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=after))
              for i, table in enumerate(args.spoke.private_route_table_ids)),
        ]
        self.register_outputs({"connection_id": self.connection.id})
