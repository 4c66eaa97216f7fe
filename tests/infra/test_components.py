"""Each component, as Pulumi's mock engine sees the program create it for the shipped stacks."""
from __future__ import annotations

import json

import pytest

from infra.chart_values import GATEWAY_CHART, VLLM_CHART
from infra.components.providers import TAG_PROJECT, TAG_REGION, TAG_RESIDENCY, TAG_STACK
from infra.plan.mocks import GLOBAL
from infra.plan.run import Plan
from infra.scheduling import CAPACITY_LABEL, GPU_RESOURCE, POOL_LABEL

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
RELEASE = "kubernetes:helm.sh/v3:Release"
PROD_REGIONS = {"us-east-1": "us", "us-west-2": "us", "eu-west-1": "eu", "eu-central-1": "eu"}


def by_region(plan: Plan, typ: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in plan.of_type(typ):
        out.setdefault(r.region, []).append(r)
    return out


def gpu_node_groups(plan: Plan) -> list:
    return [r for r in plan.of_type(NODE_GROUP) if r.inputs["amiType"].endswith("NVIDIA")]


# -- providers and tags ---------------------------------------------------------------------------

def test_one_aws_provider_per_region_plus_one_for_global_services(prod_plan: Plan) -> None:
    providers = sorted(r.region for r in prod_plan.of_type("pulumi:providers:aws"))
    assert providers == sorted([*PROD_REGIONS, GLOBAL])


def test_every_aws_resource_is_tagged_with_project_stack_region_and_zone(prod_plan: Plan) -> None:
    # Provider default tags reach every resource type that takes tags.
    for r in (r for r in prod_plan.resources if r.type.startswith("aws:")):
        assert r.tags.get(TAG_PROJECT) == "llm-platform", r.name
        assert r.tags.get(TAG_STACK) == "prod", r.name
        if r.region != GLOBAL:
            assert r.tags.get(TAG_REGION) == r.region, r.name
            assert r.tags.get(TAG_RESIDENCY) == PROD_REGIONS[r.region], r.name


# -- network --------------------------------------------------------------------------------------

def test_network_spans_three_zones_with_public_and_private_subnets(prod_plan: Plan) -> None:
    for region, subnets in by_region(prod_plan, "aws:ec2/subnet:Subnet").items():
        private = [s for s in subnets if s.tags.get("kubernetes.io/role/internal-elb") == "1"]
        public = [s for s in subnets if s.tags.get("kubernetes.io/role/elb") == "1"]
        assert len(private) == len(public) == 3, region
        assert {s.inputs["availabilityZone"] for s in private} == {f"{region}{z}" for z in "abc"}
        assert all(s.tags.get(f"kubernetes.io/cluster/llmp-prod-{region}") == "shared" for s in subnets)
        assert not any(s.inputs.get("mapPublicIpOnLaunch") for s in subnets)


def test_prod_has_a_nat_gateway_per_zone_and_preview_one(prod_plan: Plan, preview_plan: Plan) -> None:
    assert {k: len(v) for k, v in by_region(prod_plan, "aws:ec2/natGateway:NatGateway").items()} == \
        dict.fromkeys(PROD_REGIONS, 3)
    assert len(preview_plan.of_type("aws:ec2/natGateway:NatGateway")) == 1


# -- cluster --------------------------------------------------------------------------------------

def test_clusters_have_private_endpoints_encrypted_secrets_and_full_logging(prod_plan: Plan) -> None:
    clusters = prod_plan.of_type("aws:eks/cluster:Cluster")
    assert sorted(c.region for c in clusters) == sorted(PROD_REGIONS)
    for c in clusters:
        vpc = c.inputs["vpcConfig"]
        assert vpc["endpointPrivateAccess"] is True
        assert vpc["publicAccessCidrs"] == ["203.0.113.0/24"]
        assert len(vpc["subnetIds"]) == 3
        enc = c.inputs["encryptionConfig"]
        assert enc["resources"] == ["secrets"] and enc["provider"]["keyArn"].startswith(f"arn:aws:kms:{c.region}:")
        assert set(c.inputs["enabledClusterLogTypes"]) == {"api", "audit", "authenticator", "controllerManager",
                                                           "scheduler"}


def test_each_cluster_enforces_network_policies(prod_plan: Plan) -> None:
    addons = [a for a in prod_plan.of_type("aws:eks/addon:Addon") if a.inputs["addonName"] == "vpc-cni"]
    assert sorted(a.region for a in addons) == sorted(PROD_REGIONS)
    assert all(json.loads(a.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"} for a in addons)


def test_each_cluster_has_an_oidc_provider_for_irsa(prod_plan: Plan) -> None:
    issuers = {r.inputs["url"] for r in prod_plan.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider")}
    assert {u.split(".")[2] for u in issuers} == set(PROD_REGIONS)
    assert all(r.inputs["clientIdLists"] == ["sts.amazonaws.com"]
               for r in prod_plan.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider"))


def test_each_cluster_has_a_cpu_system_node_group(prod_plan: Plan) -> None:
    system = [r for r in prod_plan.of_type(NODE_GROUP) if r.inputs["labels"][POOL_LABEL] == "system"]
    assert sorted(r.region for r in system) == sorted(PROD_REGIONS)
    assert all(r.inputs["amiType"] == "AL2023_x86_64_STANDARD" and not r.inputs.get("taints") for r in system)


# -- node pools -----------------------------------------------------------------------------------

def test_prod_gpu_node_groups_have_the_configured_types_and_capacity(prod_plan: Plan) -> None:
    seen = {(r.region, r.inputs["labels"][POOL_LABEL]): r for r in gpu_node_groups(prod_plan)}
    assert len(seen) == 12
    for region in PROD_REGIONS:
        assert seen[(region, "h100")].inputs["instanceTypes"] == ["p5.48xlarge"]
        assert seen[(region, "h100")].inputs["capacityType"] == "ON_DEMAND"
        assert seen[(region, "l40s")].inputs["instanceTypes"] == ["g6e.12xlarge"]
        assert seen[(region, "batch")].inputs["capacityType"] == "SPOT"
        assert seen[(region, "batch")].inputs["instanceTypes"] == ["g6e.xlarge", "g6.xlarge", "g6.2xlarge"]


def test_gpu_pools_are_labelled_and_tainted_spot_pools_twice(prod_plan: Plan) -> None:
    for r in gpu_node_groups(prod_plan):
        spot = r.inputs["capacityType"] == "SPOT"
        assert r.inputs["labels"][CAPACITY_LABEL] == ("spot" if spot else "on-demand")
        taints = {(t["key"], t["value"], t["effect"]) for t in r.inputs["taints"]}
        expected = {("nvidia.com/gpu", "present", "NO_SCHEDULE")}
        if spot:
            expected.add(("llm-platform/capacity", "spot", "NO_SCHEDULE"))
        assert taints == expected, r.name


def test_pool_scaling_comes_from_config(prod_plan: Plan) -> None:
    cfg = prod_plan.config
    for r in gpu_node_groups(prod_plan):
        pool = cfg.region(r.region).pool(r.inputs["labels"][POOL_LABEL])
        scaling = r.inputs["scalingConfig"]
        assert (scaling["minSize"], scaling["maxSize"], scaling["desiredSize"]) == \
            (pool.min_nodes, pool.max_nodes, pool.min_nodes)


# -- add-ons, model serving, gateway --------------------------------------------------------------

def test_each_cluster_gets_the_device_plugin_and_ingress_nginx(prod_plan: Plan) -> None:
    for region, releases in by_region(prod_plan, RELEASE).items():
        charts = {r.inputs["chart"] for r in releases}
        assert {"nvidia-device-plugin", "ingress-nginx"} <= charts, region


def test_one_vllm_release_per_model_and_region_with_config_values(prod_plan: Plan) -> None:
    cfg = prod_plan.config
    releases = [r for r in prod_plan.of_type(RELEASE) if r.inputs["chart"] == str(VLLM_CHART)]
    placed = {(r.region, r.inputs["name"]) for r in releases}
    assert placed == {(region, f"vllm-{m.name}") for m in cfg.models for region in m.regions}
    for r in releases:
        model = next(m for m in cfg.models if f"vllm-{m.name}" == r.inputs["name"])
        pool = cfg.region(r.region).pool(model.pool)
        values = r.inputs["values"]
        assert values["gpus"] == model.gpus
        assert values["model"].get("quantization") == model.quantization
        assert values["model"]["maxModelLen"] == model.max_model_len
        assert values["nodeSelector"] == {POOL_LABEL: model.pool}
        tolerated = {t["key"] for t in values["tolerations"]}
        assert (GPU_RESOURCE in tolerated) and (("llm-platform/capacity" in tolerated) == pool.spot)


def test_each_region_has_a_gateway_release_bound_to_its_own_irsa_role(prod_plan: Plan) -> None:
    gateways = [r for r in prod_plan.of_type(RELEASE) if r.inputs["chart"] == str(GATEWAY_CHART)]
    assert sorted(r.region for r in gateways) == sorted(PROD_REGIONS)
    roles = {r.outputs["arn"]: r for r in prod_plan.of_type("aws:iam/role:Role")}
    for g in gateways:
        role = roles[g.inputs["values"]["serviceAccount"]["roleArn"]]
        trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
        assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
        assert f"oidc.eks.{g.region}.amazonaws.com" in trust["Principal"]["Federated"]
        assert "system:serviceaccount:llm-gateway:llm-gateway" in json.dumps(trust["Condition"])
        assert g.inputs["values"]["config"]["gateway"]["region"] == g.region


def test_gateway_config_never_routes_outside_the_zone(prod_plan: Plan) -> None:
    for g in (r for r in prod_plan.of_type(RELEASE) if r.inputs["chart"] == str(GATEWAY_CHART)):
        config = g.inputs["values"]["config"]
        zone = config["gateway"]["residency"]
        for model in config["models"]:
            assert {d["residency"] for d in model["deployments"]} == {zone}
            assert {d["region"] for d in model["deployments"]} <= {r for r, z in PROD_REGIONS.items() if z == zone}
        if zone == "us":
            assert "mistral-small-24b" not in {m["alias"] for m in config["models"]}


# -- secrets, budget, DNS -------------------------------------------------------------------------

def test_secrets_live_under_the_stack_path_and_replicate_only_inside_their_zone(prod_plan: Plan) -> None:
    secrets = prod_plan.of_type("aws:secretsmanager/secret:Secret")
    assert secrets and all(s.inputs["name"].startswith("llm-platform/prod/") for s in secrets)
    for s in secrets:
        zone = PROD_REGIONS[s.region]
        replicas = [r["region"] for r in s.inputs.get("replicas", [])]
        assert replicas and all(PROD_REGIONS[r] == zone for r in replicas), s.name
        assert s.inputs["kmsKeyId"].startswith(f"arn:aws:kms:{s.region}:")


def test_gateway_roles_read_only_their_regions_copies(prod_plan: Plan) -> None:
    for policy in prod_plan.of_type("aws:iam/rolePolicy:RolePolicy"):
        doc = json.loads(policy.inputs["policy"])
        read = next(s for s in doc["Statement"] if s["Sid"] == "ReadStackSecrets")
        regions = {arn.split(":")[3] for arn in read["Resource"]}
        assert len(regions) == 1 and all(":secret:llm-platform/prod/" in a for a in read["Resource"])


def test_budget_filters_on_the_stack_tag_and_alerts_at_each_threshold(prod_plan: Plan) -> None:
    (budget,) = prod_plan.of_type("aws:budgets/budget:Budget")
    assert budget.region == GLOBAL
    assert float(budget.inputs["limitAmount"]) == prod_plan.config.budget.monthly_usd
    assert budget.inputs["costFilters"] == [{"name": "TagKeyValue", "values": ["user:llm-platform:stack$prod"]}]
    actual = sorted(n["threshold"] for n in budget.inputs["notifications"] if n["notificationType"] == "ACTUAL")
    assert actual == sorted(prod_plan.config.budget.alert_thresholds_pct)


def test_every_regional_gateway_has_a_health_check_and_latency_record(prod_plan: Plan) -> None:
    checks = prod_plan.of_type("aws:route53/healthCheck:HealthCheck")
    assert sorted(c.inputs["fqdn"] for c in checks) == sorted(f"{r}.api.llm.example.com" for r in PROD_REGIONS)
    ids = {c.outputs["id"] for c in checks}
    latency = [r for r in prod_plan.of_type("aws:route53/record:Record") if r.inputs.get("setIdentifier")]
    assert sorted(r.inputs["setIdentifier"] for r in latency) == sorted(PROD_REGIONS)
    for record in latency:
        assert record.inputs["name"] == "api.llm.example.com"
        assert record.inputs["latencyRoutingPolicies"] == [{"region": record.inputs["setIdentifier"]}]
        assert record.inputs["healthCheckId"] in ids
        assert record.inputs["records"][0].endswith(f".elb.{record.inputs['setIdentifier']}.amazonaws.com")


@pytest.mark.parametrize("typ", ["aws:iam/role:Role", "aws:route53/healthCheck:HealthCheck",
                                 "aws:budgets/budget:Budget"])
def test_global_services_use_the_global_provider(prod_plan: Plan, typ: str) -> None:
    assert {r.region for r in prod_plan.of_type(typ)} == {GLOBAL}


def test_iam_roles_live_under_the_stack_path(prod_plan: Plan, preview_plan: Plan) -> None:
    for plan in (prod_plan, preview_plan):
        roles = plan.of_type("aws:iam/role:Role")
        assert roles and {r.inputs["path"] for r in roles} == {f"/llm-platform/{plan.stack}/"}


def test_rendered_gateway_configs_load_in_the_gateway(prod_plan: Plan, preview_plan: Plan, tmp_path) -> None:
    """The config each region's gateway release carries is one the gateway itself accepts."""
    import yaml

    from gateway.config.loading import load_config

    for plan in (prod_plan, preview_plan):
        for g in (r for r in plan.of_type(RELEASE) if r.inputs["chart"] == str(GATEWAY_CHART)):
            path = tmp_path / f"{plan.stack}-{g.region}.yaml"
            path.write_text(yaml.safe_dump(g.inputs["values"]["config"]))
            config = load_config(path)
            assert config.gateway.region == g.region
            assert config.secrets.source == "aws-secretsmanager" and config.secrets.stack == plan.stack
            assert {m.alias for m in config.models} == {m.name for m in plan.config.models
                                                        if plan.config.zone_of(g.region) in
                                                        {plan.config.zone_of(r) for r in m.regions}}


def test_gpu_instances_carry_the_stack_tags_the_budget_filters_on(prod_plan: Plan) -> None:
    """Node groups don't tag their instances; their launch templates do, or the budget could not see GPU spend."""
    templates = {r.outputs["id"]: r for r in prod_plan.of_type("aws:ec2/launchTemplate:LaunchTemplate")}
    for group in gpu_node_groups(prod_plan):
        template = templates[group.inputs["launchTemplate"]["id"]]
        kinds = {spec["resourceType"]: spec["tags"] for spec in template.inputs["tagSpecifications"]}
        assert set(kinds) == {"instance", "volume", "network-interface"}
        for tags in kinds.values():
            assert tags[TAG_STACK] == "prod" and tags[TAG_REGION] == group.region
        assert template.inputs["metadataOptions"]["httpTokens"] == "required"
        assert "diskSize" not in group.inputs  # the size lives in the template: EKS refuses both


def test_each_validation_record_has_one_owner(prod_plan: Plan) -> None:
    """The shared domain's ACM record is one resource, however many regions' certificates need it."""
    names = [r.inputs["name"] for r in prod_plan.of_type("aws:route53/record:Record") if r.inputs["type"] == "CNAME"
             and r.inputs["name"].startswith("_")]
    assert len(names) == len(set(names)) == 1 + len(PROD_REGIONS)
    validations = prod_plan.of_type("aws:acm/certificateValidation:CertificateValidation")
    assert all(len(v.inputs["validationRecordFqdns"]) == 2 for v in validations)
