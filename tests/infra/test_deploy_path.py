"""The deploy path: a distinct VPC block per region, a runner in the hub region's private subnets, peering to
the rest."""
from __future__ import annotations

import json

import pytest

from infra.components.deploy_hub import runner_project_name
from infra.plan.run import Plan


@pytest.fixture(params=["prod", "preview"])
def stack_plan(request, prod_plan: Plan, preview_plan: Plan) -> Plan:
    return {"prod": prod_plan, "preview": preview_plan}[request.param]


def test_each_region_has_its_own_vpc_block(prod_plan: Plan) -> None:
    vpcs = {v.region: v.inputs["cidrBlock"] for v in prod_plan.of_type("aws:ec2/vpc:Vpc")}
    assert vpcs == {r.name: prod_plan.config.vpc_cidr(r.name) for r in prod_plan.config.regions}
    assert len(set(vpcs.values())) == len(vpcs) > 1


def test_private_route_tables_hold_no_inline_routes(prod_plan: Plan) -> None:
    """Peering adds aws.ec2.Route resources to these tables; inline routes would fight them."""
    private = [t for t in prod_plan.of_type("aws:ec2/routeTable:RouteTable") if "-private-" in t.name]
    assert len(private) == 3 * len(prod_plan.config.regions)
    assert not any(t.inputs.get("routes") for t in private)
    egress = [r for r in prod_plan.of_type("aws:ec2/route:Route") if r.inputs["destinationCidrBlock"] == "0.0.0.0/0"]
    assert len(egress) == len(private) and all(r.inputs.get("natGatewayId") for r in egress)


def test_the_runner_sits_in_the_hub_private_subnets_and_only_sends_https(stack_plan: Plan) -> None:
    hub = stack_plan.config.deploy_hub.name
    (project,) = stack_plan.of_type("aws:codebuild/project:Project")
    assert project.region == hub and project.inputs["name"] == runner_project_name(stack_plan.config.stack)
    private = {s.outputs["id"] for s in stack_plan.of_type("aws:ec2/subnet:Subnet")
               if s.region == hub and "-private-" in s.name}
    assert set(project.inputs["vpcConfig"]["subnets"]) == private
    (group,) = stack_plan.of_type("aws:ec2/securityGroup:SecurityGroup")
    assert project.inputs["vpcConfig"]["securityGroupIds"] == [group.outputs["id"]]
    assert not [r for r in stack_plan.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
                if r.inputs["securityGroupId"] == group.outputs["id"]]
    (egress,) = stack_plan.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
    assert (egress.inputs["fromPort"], egress.inputs["toPort"], egress.inputs["ipProtocol"]) == (443, 443, "tcp")
    (webhook,) = stack_plan.of_type("aws:codebuild/webhook:Webhook")
    assert webhook.inputs["filterGroups"] == [{"filters": [{"type": "EVENT", "pattern": "WORKFLOW_JOB_QUEUED"}]}]
    assert project.inputs["source"]["location"] == f"https://github.com/{stack_plan.config.deploy.repository}.git"


def test_the_runner_role_places_builds_in_the_hub_subnets_only(stack_plan: Plan) -> None:
    hub = stack_plan.config.deploy_hub.name
    (policy,) = [p for p in stack_plan.of_type("aws:iam/rolePolicy:RolePolicy") if p.name.endswith("-runner")]
    doc = json.loads(policy.inputs["policy"])
    fence = next(s for s in doc["Statement"] if s["Sid"] == "OnlyInTheHubSubnets")
    assert fence["Condition"]["StringEquals"]["ec2:AuthorizedService"] == "codebuild.amazonaws.com"
    assert len(fence["Condition"]["StringEquals"]["ec2:Subnet"]) == 3
    assert all(f":{hub}:" in arn for arn in fence["Condition"]["StringEquals"]["ec2:Subnet"])
    assert not any("secretsmanager" in a or "sts:" in a for s in doc["Statement"] for a in s["Action"]
                   if isinstance(s["Action"], list))


def test_each_other_region_peers_with_the_hub_and_routes_both_ways(prod_plan: Plan) -> None:
    cfg = prod_plan.config
    hub = cfg.deploy_hub.name
    vpc_id = {v.region: v.outputs["id"] for v in prod_plan.of_type("aws:ec2/vpc:Vpc")}
    peerings = prod_plan.of_type("aws:ec2/vpcPeeringConnection:VpcPeeringConnection")
    accepters = prod_plan.of_type("aws:ec2/vpcPeeringConnectionAccepter:VpcPeeringConnectionAccepter")
    others = [r.name for r in cfg.regions[1:]]
    assert sorted(p.inputs["peerRegion"] for p in peerings) == sorted(others)
    for p in peerings:
        region = p.inputs["peerRegion"]
        assert p.region == hub and p.inputs["vpcId"] == vpc_id[hub] and p.inputs["peerVpcId"] == vpc_id[region]
        assert not p.inputs.get("autoAccept")  # inter-region: only the accepter side can accept
        (acc,) = [a for a in accepters if a.inputs["vpcPeeringConnectionId"] == p.outputs["id"]]
        assert acc.region == region and acc.inputs["autoAccept"] is True
        routes = [r for r in prod_plan.of_type("aws:ec2/route:Route")
                  if r.inputs.get("vpcPeeringConnectionId") == p.outputs["id"]]
        assert sorted((r.region, r.inputs["destinationCidrBlock"]) for r in routes) == sorted(
            [(hub, cfg.vpc_cidr(region))] * 3 + [(region, cfg.vpc_cidr(hub))] * 3)


def test_every_cluster_admits_the_hub_to_its_api(stack_plan: Plan) -> None:
    hub_block = stack_plan.config.vpc_cidr(stack_plan.config.deploy_hub.name)
    clusters = {c.region: c.outputs["vpcConfig"]["clusterSecurityGroupId"]
                for c in stack_plan.of_type("aws:eks/cluster:Cluster")}
    rules = [r for r in stack_plan.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")]
    assert sorted((r.region, r.inputs["securityGroupId"]) for r in rules) == sorted(clusters.items())
    assert all((r.inputs["cidrIpv4"], r.inputs["fromPort"], r.inputs["toPort"]) == (hub_block, 443, 443)
               for r in rules)
