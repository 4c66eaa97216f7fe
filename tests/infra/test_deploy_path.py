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


def _store_groups(plan: Plan) -> set[str]:
    """The gateway state stores' security groups (infra/components/gateway_stores.py)."""
    return {f"{r.name}-gateway-{store}-sg" for r in plan.config.regions for store in ("redis", "ledger")}


def test_the_runner_sits_in_the_hub_private_subnets_and_only_sends_https(stack_plan: Plan) -> None:
    hub = stack_plan.config.deploy_hub.name
    (project,) = stack_plan.of_type("aws:codebuild/project:Project")
    assert project.region == hub and project.inputs["name"] == runner_project_name(stack_plan.config.stack)
    private = {s.outputs["id"] for s in stack_plan.of_type("aws:ec2/subnet:Subnet")
               if s.region == hub and "-private-" in s.name}
    assert set(project.inputs["vpcConfig"]["subnets"]) == private
    (group,) = [g for g in stack_plan.of_type("aws:ec2/securityGroup:SecurityGroup") if g.name not in _store_groups(
        stack_plan)]
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
    stores = {g.outputs["id"] for g in stack_plan.of_type("aws:ec2/securityGroup:SecurityGroup")
              if g.name in _store_groups(stack_plan)}  # tests/infra/test_gateway_stores.py judges theirs
    rules = [r for r in stack_plan.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
             if r.inputs["securityGroupId"] not in stores]
    assert sorted((r.region, r.inputs["securityGroupId"]) for r in rules) == sorted(clusters.items())
    assert all((r.inputs["cidrIpv4"], r.inputs["fromPort"], r.inputs["toPort"]) == (hub_block, 443, 443)
               for r in rules)


def test_the_deploy_role_may_open_the_eks_made_security_group_because_the_program_tags_it(stack_plan: Plan) -> None:
    """EKS creates the cluster security group without the stack tag, and the deploy role changes only EC2
    resources that carry it: the program tags the group (allowed with that tag only) before adding the rule."""
    from infra.ci_access import deploy_policy
    from infra.components.providers import TAG_STACK

    tags = {(t.inputs["resourceId"], t.inputs["key"], t.inputs["value"]) for t in stack_plan.of_type("aws:ec2/tag:Tag")}
    for cluster in stack_plan.of_type("aws:eks/cluster:Cluster"):
        group = cluster.outputs["vpcConfig"]["clusterSecurityGroupId"]
        assert (group, TAG_STACK, stack_plan.stack) in tags, cluster.region
    statements = {s["Sid"]: s for s in deploy_policy("123456789012", stack_plan.stack, [], [])["Statement"]}
    assert "ec2:CreateTags" in statements["CreateOnlyWithTheStackTag"]["Action"]
    assert "ec2:*" in statements["ChangeOnlyTheStacksResources"]["Action"]
    assert statements["ChangeOnlyTheStacksResources"]["Condition"] == {
        "StringLike": {f"aws:ResourceTag/{TAG_STACK}": stack_plan.stack}}


def test_the_runner_reaches_github_through_the_stacks_own_connection(stack_plan: Plan) -> None:
    """CodeBuild's project role must be allowed to use its connection, or no build ever registers a runner."""
    (connection,) = stack_plan.of_type("aws:codeconnections/connection:Connection")
    assert connection.inputs["providerType"] == "GitHub"
    (project,) = stack_plan.of_type("aws:codebuild/project:Project")
    assert project.inputs["source"]["auth"] == {"type": "CODECONNECTIONS", "resource": connection.outputs["arn"]}
    role_name = next(r for r in stack_plan.of_type("aws:iam/role:Role")
                     if r.outputs["arn"] == project.inputs["serviceRole"]).outputs["name"]
    (policy,) = [p for p in stack_plan.of_type("aws:iam/rolePolicy:RolePolicy") if p.inputs["role"] == role_name]
    grants = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    assert grants["UseTheGitHubConnection"] == {
        "Sid": "UseTheGitHubConnection", "Effect": "Allow", "Resource": connection.outputs["arn"],
        "Action": ["codeconnections:GetConnectionToken", "codeconnections:GetConnection"]}


def test_the_deploy_role_may_accept_the_hubs_peerings_whose_accepter_copy_carries_no_tags() -> None:
    """The accepter-side copy of an inter-region peering has none of the requester's tags: accepting is allowed
    on any peering id, and on a VPC only when it carries the stack tag (both are authorised)."""
    from infra.ci_access import deploy_policy
    from infra.components.providers import TAG_STACK

    statements = {s["Sid"]: s for s in deploy_policy("123456789012", "prod", [], [])["Statement"]}
    accept = statements["AcceptPeeringsIntoTheStacksVpcs"]
    assert accept["Action"] == "ec2:AcceptVpcPeeringConnection" and "Condition" not in accept
    assert accept["Resource"] == "arn:aws:ec2:*:123456789012:vpc-peering-connection/*"
    change = statements["ChangeOnlyTheStacksResources"]  # the accepter VPC side
    assert "ec2:*" in change["Action"] and change["Condition"] == {
        "StringLike": {f"aws:ResourceTag/{TAG_STACK}": "prod"}}
    # The stack's GitHub connection is created, and later passed to CodeBuild, under the stack tag too.
    assert "codeconnections:Create*" in statements["CreateOnlyWithTheStackTag"]["Action"]
    assert "codeconnections:*" in change["Action"]
