"""Network: a VPC over three availability zones with public and private subnets and NAT egress."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.providers import child_opts

AZ_COUNT = 3


def subnet_blocks(cidr: str) -> list[str]:
    """/16 -> eight /19s: three private (big: pods get VPC IPs), three public, two spare."""
    return [str(b) for b in ipaddress.ip_network(cidr).subnets(new_prefix=19)]


def private_subnet_cidrs(cidr: str) -> list[str]:
    """The private subnets' blocks: where the nodes, the pods and the gateway's state stores live."""
    return subnet_blocks(cidr)[:AZ_COUNT]


def public_subnet_cidrs(cidr: str) -> list[str]:
    """The public subnets' blocks: where the internet-facing NLB sits, and so where its traffic comes from."""
    return subnet_blocks(cidr)[AZ_COUNT:2 * AZ_COUNT]


@dataclass(frozen=True)
class NetworkArgs:
    region: str
    cidr: str
    cluster_name: str
    nat_per_az: bool
    # Zone IDs to place the subnets in (infra.placement.network_zones); empty: the region's first zones by name.
    zone_ids: tuple[str, ...] = ()


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    cidr: str
    private_subnet_ids: list[pulumi.Output[str]]
    public_subnet_ids: list[pulumi.Output[str]]
    # Peering routes to the deploy hub go in these: the runner and the API endpoints' ENIs sit in private subnets.
    private_route_table_ids: list[pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, provider: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:network:Network", name, None, opts)
        child = child_opts(self, provider)
        zones = aws.get_availability_zones_output(
            state="available", opts=pulumi.InvokeOutputOptions(provider=provider, parent=self))
        blocks = subnet_blocks(args.cidr)
        cluster_tag = f"kubernetes.io/cluster/{args.cluster_name}"

        vpc = aws.ec2.Vpc(name, cidr_block=args.cidr, enable_dns_hostnames=True, enable_dns_support=True,
                          tags={"Name": name}, opts=child)
        igw = aws.ec2.InternetGateway(name, vpc_id=vpc.id, tags={"Name": name}, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public", vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags={"Name": f"{name}-public"}, opts=child)

        # Zone IDs name the same zone in every account, so the catalog's per-zone offerings apply to them.
        zone_ids: list[str | None] = list(args.zone_ids) or [None] * AZ_COUNT
        zone_names = [None if args.zone_ids else zones.names[i] for i in range(AZ_COUNT)]
        self.public_subnet_ids, self.private_subnet_ids, self.private_route_table_ids = [], [], []
        nat_ids: list[pulumi.Output[str]] = []
        for i in range(AZ_COUNT):
            public = aws.ec2.Subnet(
                f"{name}-public-{i}", vpc_id=vpc.id, cidr_block=str(blocks[AZ_COUNT + i]),
                availability_zone_id=zone_ids[i], availability_zone=zone_names[i],
                map_public_ip_on_launch=False,
                # The AWS Load Balancer Controller places internet-facing NLBs in subnets tagged
                # kubernetes.io/role/elb (its docs/deploy/subnet_discovery.md@v3.5.0, "Subnet Role Tag").
                tags={"Name": f"{name}-public-{i}", "kubernetes.io/role/elb": "1", cluster_tag: "shared"},
                opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-public-{i}", subnet_id=public.id, route_table_id=public_rt.id,
                                          opts=child)
            self.public_subnet_ids.append(public.id)
            if args.nat_per_az or i == 0:
                eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc", tags={"Name": f"{name}-nat-{i}"}, opts=child)
                nat = aws.ec2.NatGateway(f"{name}-{i}", allocation_id=eip.id, subnet_id=public.id,
                                         tags={"Name": f"{name}-{i}"}, opts=child)
                nat_ids.append(nat.id)

        for i in range(AZ_COUNT):
            private = aws.ec2.Subnet(
                f"{name}-private-{i}", vpc_id=vpc.id, cidr_block=str(blocks[i]),
                availability_zone_id=zone_ids[i], availability_zone=zone_names[i],
                tags={"Name": f"{name}-private-{i}", "kubernetes.io/role/internal-elb": "1", cluster_tag: "shared"},
                opts=child)
            # Routes as separate resources: peering adds its own to these tables, and a table's inline
            # routes may not be mixed with aws.ec2.Route resources ("Doing so will cause a conflict of
            # rule settings and will overwrite rules": pulumi.com/registry/packages/aws/api-docs/ec2/route).
            rt = aws.ec2.RouteTable(f"{name}-private-{i}", vpc_id=vpc.id, tags={"Name": f"{name}-private-{i}"},
                                    opts=child)
            aws.ec2.Route(f"{name}-private-{i}-egress", route_table_id=rt.id, destination_cidr_block="0.0.0.0/0",
                          nat_gateway_id=nat_ids[i if args.nat_per_az else 0], opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-private-{i}", subnet_id=private.id, route_table_id=rt.id,
                                          opts=child)
            self.private_subnet_ids.append(private.id)
            self.private_route_table_ids.append(rt.id)

        self.private_subnet_by_zone = dict(zip(args.zone_ids, self.private_subnet_ids))
        self.vpc_id = vpc.id
        self.cidr = args.cidr
        self.nat_gateways = len(nat_ids)
        self.register_outputs({"vpc_id": vpc.id, "private_subnet_ids": self.private_subnet_ids})
