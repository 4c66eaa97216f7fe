"""Control deployability: the deploy runner in the first region's VPC can reach every cluster's Kubernetes API."""
from __future__ import annotations

import ipaddress

from tests.policy.helpers import assert_passes, assert_rejected, find, mutated, result, result_of_resources

CLUSTER = "aws:eks/cluster:Cluster"
VPC = "aws:ec2/vpc:Vpc"
ROUTE = "aws:ec2/route:Route"
ACCEPTER = "aws:ec2/vpcPeeringConnectionAccepter:VpcPeeringConnectionAccepter"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
RUNNER = "aws:codebuild/project:Project"


def hub_and_last(plan) -> tuple[str, str]:
    """The deploy hub's region and the farthest other region, from the stack (prod's regions may change)."""
    return plan.config.deploy_hub.name, plan.config.regions[-1].name


def test_the_deploy_runner_reaches_every_cluster_api(stack_plan):
    res = result(stack_plan, "deployability")
    assert_passes(res)
    assert sorted(e["region"] for e in res.evidence) == sorted(r.name for r in stack_plan.config.regions)
    hub = stack_plan.config.deploy_hub.name
    for e in res.evidence:
        assert e["reachable"] and e["over"] == "private endpoint", e
        assert e["runner_vpc_block"] == stack_plan.config.vpc_cidr(hub)
        assert e["ingress_from_runner"], e


def test_clusters_outside_the_hub_are_reached_over_accepted_routed_peering(prod_plan):
    res = result(prod_plan, "deployability")
    hub = prod_plan.config.deploy_hub.name
    others = [e for e in res.evidence if e["region"] != hub]
    assert len(others) == len(prod_plan.config.regions) - 1 >= 1
    assert all(e["path"].startswith("peering pcx-") for e in others)
    assert next(e for e in res.evidence if e["region"] == hub)["path"] == "same VPC as the runner"
    # The runner sits in the hub's private subnets, and the peering routes sit in exactly those tables.
    runner = find(prod_plan.resources, RUNNER)
    assert runner.region == hub and len(runner.inputs["vpcConfig"]["subnets"]) == 3


def test_vpc_blocks_are_distinct(prod_plan):
    blocks = [ipaddress.ip_network(v.inputs["cidrBlock"]) for v in prod_plan.of_type(VPC)]
    assert len(blocks) == len(prod_plan.config.regions)
    assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1:])


def _close_private_path(rs, region: str) -> None:
    rs[:] = [r for r in rs if not (r.type == INGRESS and r.region == region)]


def test_public_endpoint_allow_listing_the_hubs_nat_is_reachable(prod_plan):
    """The other way in: the cluster's private path is closed, but its public allow-list holds the hub's NAT
    addresses."""
    hub, last = hub_and_last(prod_plan)
    nat_ips = [e.outputs["publicIp"] for e in prod_plan.of_type("aws:ec2/eip:Eip") if e.region == hub]

    def change(rs):
        _close_private_path(rs, last)
        find(rs, CLUSTER, region=last).inputs["vpcConfig"].update(
            endpointPublicAccess=True, publicAccessCidrs=[f"{ip}/32" for ip in nat_ips])

    res = result_of_resources(prod_plan, mutated(prod_plan, change), "deployability")
    assert_passes(res)
    assert next(e for e in res.evidence if e["region"] == last)["over"] == "public endpoint"


def test_missing_route_back_to_the_hub_is_rejected(prod_plan):
    """Program bug (simulated): the last region's private route tables lose their route to the hub's VPC."""
    hub, last = hub_and_last(prod_plan)
    hub_block = prod_plan.config.vpc_cidr(hub)
    resources = mutated(prod_plan, lambda rs: rs.__setitem__(slice(None), [
        r for r in rs if not (r.type == ROUTE and r.region == last and r.inputs["destinationCidrBlock"] == hub_block)]))
    assert_rejected(result_of_resources(prod_plan, resources, "deployability"),
                    f"in {last} is out of the deploy runner's reach",
                    "have no route back to the runner's VPC through pcx-")


def test_unaccepted_peering_is_rejected(prod_plan):
    """Program bug (simulated): the accepter side never accepts the inter-region peering."""
    _, last = hub_and_last(prod_plan)
    resources = mutated(prod_plan, lambda rs: find(rs, ACCEPTER, region=last).inputs.update(autoAccept=False))
    assert_rejected(result_of_resources(prod_plan, resources, "deployability"),
                    f"in {last} is out of the deploy runner's reach",
                    "its peering with the runner's VPC is never accepted")


def test_cluster_security_group_closed_to_the_hub_is_rejected(preview_plan):
    """Program bug (simulated): even in the runner's own VPC, the cluster's security group admits nothing from it."""
    hub = preview_plan.config.deploy_hub.name
    resources = mutated(preview_plan, lambda rs: _close_private_path(rs, hub))
    assert_rejected(result_of_resources(preview_plan, resources, "deployability"),
                    f"its security group admits no 443 from the runner's VPC block {preview_plan.config.vpc_cidr(hub)}",
                    "its public endpoint is off")


def test_documentation_range_allow_list_is_rejected(prod_plan):
    """The review's finding: a public endpoint allow-listing 203.0.113.0/24 (TEST-NET-3) admits no real runner."""
    _, last = hub_and_last(prod_plan)

    def change(rs):
        _close_private_path(rs, last)
        find(rs, CLUSTER, region=last).inputs["vpcConfig"].update(
            endpointPublicAccess=True, publicAccessCidrs=["203.0.113.0/24"])

    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, change), "deployability"),
                    "its allow-list entry 203.0.113.0/24 is a documentation range (RFC 5737) no runner has",
                    "leaves out the runner's addresses")


def test_overlapping_vpc_blocks_are_rejected(prod_plan):
    """The review's finding: every region's VPC on the same block (config validation refuses it; a program bug must
    not slip by)."""
    hub, last = hub_and_last(prod_plan)
    block = prod_plan.config.vpc_cidr(hub)
    resources = mutated(prod_plan, lambda rs: find(rs, VPC, region=last).inputs.update(cidrBlock=block))
    assert_rejected(result_of_resources(prod_plan, resources, "deployability"),
                    f"VPC blocks {block} (", "overlap: they cannot be peered")


def test_stack_without_a_deploy_runner_is_rejected(preview_plan):
    resources = mutated(preview_plan, lambda rs: rs.remove(find(rs, RUNNER)))
    assert_rejected(result_of_resources(preview_plan, resources, "deployability"),
                    "the stack records no deploy runner in a VPC")
