"""Control `deployability`: the deploy runner can reach every cluster's Kubernetes API, and the stack's VPC blocks do
not overlap."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from infra.config import DOCUMENTATION_RANGES
from infra.policy.rules.base import EKS_CLUSTER, Findings, PolicyConfig, Resource, Resources, as_int, as_list

VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
ROUTE = "aws:ec2/route:Route"
ROUTE_TABLE_ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
PEERING = "aws:ec2/vpcPeeringConnection:VpcPeeringConnection"
PEERING_ACCEPTER = "aws:ec2/vpcPeeringConnectionAccepter:VpcPeeringConnectionAccepter"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
NAT_GATEWAY = "aws:ec2/natGateway:NatGateway"
EIP = "aws:ec2/eip:Eip"
RUNNER = "aws:codebuild/project:Project"
API_PORT = 443

DESCRIPTION = (
    "The identity that runs `pulumi up` (a GitHub Actions job on the deploy runner, a CodeBuild project in the "
    "stack's first region's private subnets) can open a connection to every EKS cluster's Kubernetes API, so "
    "the program's Helm releases can be applied. Judged from the recorded network resources, never from "
    "config: a cluster is reachable over its private endpoint when private access is on, the runner's security "
    f"group allows HTTPS ({API_PORT}) out, the cluster's security group admits {API_PORT} from the runner's VPC "
    "block, and, for a cluster outside the runner's VPC, a peering between the two VPCs is accepted and routed "
    "both ways (the runner's subnets route the cluster's block to it, the cluster's subnets route the runner's "
    "block back). Otherwise it is reachable over its public endpoint only when the runner's egress addresses (the "
    "public IPs of the NAT gateways in the runner's VPC) fall inside its allow-list; documentation ranges (RFC "
    "5737: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) never count, since no runner has such an address. No "
    "two VPCs of the stack have overlapping blocks (AWS cannot peer them, and one runner could not route to both).")


def _net(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return None


def _covers(block: Any, net: Any) -> bool:
    outer, inner = _net(block), _net(net)
    if isinstance(outer, ipaddress.IPv4Network) and isinstance(inner, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(outer, ipaddress.IPv6Network) and isinstance(inner, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _opens_port(rule: Resource, port: int) -> bool:
    if str(rule.inputs.get("ipProtocol")) == "-1":
        return True
    return str(rule.inputs.get("ipProtocol")) in ("tcp", "6") and \
        as_int(rule.inputs.get("fromPort"), -1) <= port <= as_int(rule.inputs.get("toPort"), -1)


@dataclass
class Network:
    """The recorded VPCs, subnets and route tables, by id."""
    vpc_cidr: dict[str, str]
    subnet_vpc: dict[str, str]
    subnet_table: dict[str, str]
    routes: list[Resource]

    @classmethod
    def of(cls, resources: Resources) -> Network:
        return cls(
            vpc_cidr={str(v.outputs.get("id")): str(v.inputs.get("cidrBlock")) for v in resources.of_type(VPC)},
            subnet_vpc={str(s.outputs.get("id")): str(s.inputs.get("vpcId")) for s in resources.of_type(SUBNET)},
            subnet_table={str(a.inputs.get("subnetId")): str(a.inputs.get("routeTableId"))
                          for a in resources.of_type(ROUTE_TABLE_ASSOCIATION)},
            routes=resources.of_type(ROUTE))

    def vpc_of(self, subnet_ids: list[Any]) -> str | None:
        vpcs = {self.subnet_vpc.get(str(s)) for s in subnet_ids}
        return vpcs.pop() if len(vpcs) == 1 else None

    def unrouted(self, subnet_ids: list[Any], destination: str, peering_id: str) -> list[str]:
        """The subnets whose route table sends no route for `destination` through the peering."""
        missing = []
        for subnet in subnet_ids:
            table = self.subnet_table.get(str(subnet))
            if not any(str(r.inputs.get("routeTableId")) == table and
                       str(r.inputs.get("vpcPeeringConnectionId")) == peering_id and
                       _covers(r.inputs.get("destinationCidrBlock"), destination) for r in self.routes):
                missing.append(str(subnet))
        return missing


def _accepted_peering(resources: Resources, a: str, b: str) -> tuple[str | None, str]:
    """The id of an accepted peering between VPCs a and b, or None and why not."""
    pairs = [p for p in resources.of_type(PEERING)
             if {str(p.inputs.get("vpcId")), str(p.inputs.get("peerVpcId"))} == {a, b}]
    if not pairs:
        return None, "no VPC peering connects it with the runner's VPC"
    for p in pairs:
        pid = str(p.outputs.get("id"))
        if p.inputs.get("autoAccept") or any(
                str(acc.inputs.get("vpcPeeringConnectionId")) == pid and acc.inputs.get("autoAccept")
                for acc in resources.of_type(PEERING_ACCEPTER)):
            return pid, ""
    return None, "its peering with the runner's VPC is never accepted"


def _private_path(resources: Resources, net: Network, runner: Resource, runner_vpc: str, cluster: Resource,
                  cluster_vpc: str | None) -> tuple[list[str], dict[str, Any]]:
    vpc = cluster.inputs.get("vpcConfig") or {}
    runner_cidr = net.vpc_cidr.get(runner_vpc, "")
    problems: list[str] = []
    seen: dict[str, Any] = {}
    if not vpc.get("endpointPrivateAccess"):
        return ["its private endpoint is off"], seen
    group = str((cluster.outputs.get("vpcConfig") or {}).get("clusterSecurityGroupId") or "")
    admitted = [r for r in resources.of_type(INGRESS_RULE)
                if str(r.inputs.get("securityGroupId")) == group and _opens_port(r, API_PORT)
                and _covers(r.inputs.get("cidrIpv4"), runner_cidr)]
    seen["ingress_from_runner"] = [r.name for r in admitted]
    if not admitted:
        problems.append(f"its security group admits no {API_PORT} from the runner's VPC block {runner_cidr}")
    if cluster_vpc is None:
        return [*problems, "its subnets are not in one recorded VPC"], seen
    if cluster_vpc == runner_vpc:
        seen["path"] = "same VPC as the runner"
        return problems, seen
    peering, why = _accepted_peering(resources, runner_vpc, cluster_vpc)
    if peering is None:
        return [*problems, why], seen
    seen["path"] = f"peering {peering}"
    runner_subnets = as_list((runner.inputs.get("vpcConfig") or {}).get("subnets"))
    there = net.unrouted(runner_subnets, net.vpc_cidr.get(cluster_vpc, ""), peering)
    if there:
        problems.append(f"the runner's subnets {', '.join(there)} have no route to it through {peering}")
    back = net.unrouted(as_list(vpc.get("subnetIds")), runner_cidr, peering)
    if back:
        problems.append(f"its subnets {', '.join(back)} have no route back to the runner's VPC through {peering}")
    return problems, seen


def _runner_addresses(resources: Resources, net: Network, runner_vpc: str) -> list[str]:
    """Public IPs the runner's traffic leaves through: the NAT gateways' addresses in its VPC."""
    eips = {str(e.outputs.get("id")): e for e in resources.of_type(EIP)}
    out = []
    for nat in resources.of_type(NAT_GATEWAY):
        eip = eips.get(str(nat.inputs.get("allocationId")))
        if net.subnet_vpc.get(str(nat.inputs.get("subnetId"))) == runner_vpc and eip and eip.outputs.get("publicIp"):
            out.append(str(eip.outputs["publicIp"]))
    return out


def _public_path(cluster: Resource, addresses: list[str]) -> list[str]:
    vpc = cluster.inputs.get("vpcConfig") or {}
    if not vpc.get("endpointPublicAccess", True):
        return ["its public endpoint is off"]
    allowed = [str(c) for c in as_list(vpc.get("publicAccessCidrs"))] or ["0.0.0.0/0"]
    counted = [c for c in allowed if _net(c) and not any(_covers(d, c) for d in DOCUMENTATION_RANGES)]
    problems = [f"its allow-list entry {c} is a documentation range (RFC 5737) no runner has"
                for c in allowed if c not in counted]
    if not addresses:
        return [*problems, "the runner's VPC records no NAT address to allow-list"]
    outside = [a for a in addresses if not any(_covers(c, a) for c in counted)]
    if outside:
        problems.append(f"its allow-list ({', '.join(allowed)}) leaves out the runner's addresses "
                        f"{', '.join(outside)}")
    return problems


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    net = Network.of(resources)
    blocks = sorted(net.vpc_cidr.items(), key=lambda kv: kv[1])
    for i, (vpc_a, a) in enumerate(blocks):
        for vpc_b, b in blocks[i + 1:]:
            na, nb = _net(a), _net(b)
            if na and nb and na.overlaps(nb):
                found.fail(f"VPC blocks {a} ({vpc_a}) and {b} ({vpc_b}) overlap: they cannot be peered, and one "
                           f"runner cannot route to both")
    runners = [r for r in resources.of_type(RUNNER) if (r.inputs.get("vpcConfig") or {}).get("vpcId")]
    if not runners:
        found.fail("the stack records no deploy runner in a VPC (a CodeBuild project with a vpcConfig): nothing "
                   "is known to reach the private cluster APIs")
        return found
    runner = runners[0]
    runner_vpc = str(runner.inputs["vpcConfig"]["vpcId"])
    groups = {str(g) for g in as_list(runner.inputs["vpcConfig"].get("securityGroupIds"))}
    out = [r for r in resources.of_type(EGRESS_RULE)
           if str(r.inputs.get("securityGroupId")) in groups and _opens_port(r, API_PORT)]
    addresses = _runner_addresses(resources, net, runner_vpc)
    for cluster in resources.of_type(EKS_CLUSTER):
        cluster_vpc = net.vpc_of(as_list((cluster.inputs.get("vpcConfig") or {}).get("subnetIds")))
        private, seen = _private_path(resources, net, runner, runner_vpc, cluster, cluster_vpc)
        if not out:
            private = [f"the runner's security group allows no {API_PORT} out", *private]
        public = _public_path(cluster, addresses) if private else []
        reachable = not private or not public
        found.judged(cluster, runner=runner.name, runner_vpc_block=net.vpc_cidr.get(runner_vpc),
                     cluster_vpc_block=net.vpc_cidr.get(str(cluster_vpc)), reachable=reachable,
                     over="private endpoint" if not private else ("public endpoint" if reachable else None),
                     **seen)
        if not reachable:
            found.fail(f"EKS cluster {cluster.name} in {cluster.region} is out of the deploy runner's reach: "
                       f"privately, {'; '.join(private)}; publicly, {'; '.join(public)}")
    return found
