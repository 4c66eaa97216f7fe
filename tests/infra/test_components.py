"""Each component, as Pulumi's mock engine sees the program create it for the shipped stacks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.catalog import load_catalog
from infra.chart_values import GATEWAY_CHART, VLLM_CHART
from infra.components.providers import TAG_PROJECT, TAG_REGION, TAG_RESIDENCY, TAG_STACK
from infra.components.releases import helm_release
from infra.plan.mocks import GLOBAL
from infra.plan.run import Plan
from infra.scheduling import CAPACITY_LABEL, GPU_RESOURCE, POOL_LABEL

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
RELEASE = "kubernetes:helm.sh/v3:Release"
PROD_REGIONS = {"us-east-1": "us", "us-west-2": "us", "eu-north-1": "eu", "eu-west-2": "eu"}


def by_region(plan: Plan, typ: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in plan.of_type(typ):
        out.setdefault(r.region, []).append(r)
    return out


def gpu_node_pools(plan: Plan) -> list:
    """The GPU pools: Karpenter NodePools (infra/components/node_pool.py)."""
    return plan.of_type("kubernetes:karpenter.sh/v1:NodePool")


def _template(pool) -> dict:
    return pool.inputs["spec"]["template"]


def _requirement(pool, key: str) -> list[str]:
    return next(r["values"] for r in _template(pool)["spec"]["requirements"] if r["key"] == key)


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
        # Placed by zone ID (the same zone in every account), on zones the facts say offer the region's types.
        assert len({s.inputs["availabilityZoneId"] for s in private}) == 3
        assert all(s.inputs["availabilityZoneId"] in load_catalog().regions[region] for s in private)
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
        assert vpc["endpointPublicAccess"] is False and "publicAccessCidrs" not in vpc
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

def test_prod_gpu_pools_have_the_configured_types_and_capacity(prod_plan: Plan) -> None:
    seen = {(r.region, _template(r)["metadata"]["labels"][POOL_LABEL]): r for r in gpu_node_pools(prod_plan)}
    assert len(seen) == 12
    for region in PROD_REGIONS:
        assert _requirement(seen[(region, "h100")], "node.kubernetes.io/instance-type") == ["p5.48xlarge"]
        # The ODCR, through Karpenter's reserved capacity type.
        assert _requirement(seen[(region, "h100")], "karpenter.sh/capacity-type") == ["reserved"]
        mid = ["g6.12xlarge"] if region == "eu-west-2" else ["g6e.12xlarge"]  # eu-west-2 offers no g6e
        assert _requirement(seen[(region, "mid")], "node.kubernetes.io/instance-type") == mid
        assert _requirement(seen[(region, "batch")], "karpenter.sh/capacity-type") == ["spot"]
        batch = ["g6.xlarge", "g6.2xlarge"] if region == "eu-west-2" else ["g6e.xlarge", "g6.xlarge", "g6.2xlarge"]
        assert _requirement(seen[(region, "batch")], "node.kubernetes.io/instance-type") == batch


def test_gpu_pools_are_labelled_and_tainted_spot_pools_twice(prod_plan: Plan) -> None:
    for r in gpu_node_pools(prod_plan):
        capacity = _requirement(r, "karpenter.sh/capacity-type")[0]
        spot = capacity == "spot"
        assert _template(r)["metadata"]["labels"][CAPACITY_LABEL] == capacity
        taints = {(t["key"], t["value"], t["effect"]) for t in _template(r)["spec"]["taints"]}
        expected = {("nvidia.com/gpu", "present", "NoSchedule")}
        if spot:
            expected.add(("llm-platform/capacity", "spot", "NoSchedule"))
        assert taints == expected, r.name


def test_pool_scaling_comes_from_config(prod_plan: Plan) -> None:
    """Karpenter has no minimum size: the floor is recorded for the plan, the ceiling is the pool's limits."""
    cfg = prod_plan.config
    catalog = load_catalog()
    for r in gpu_node_pools(prod_plan):
        pool = cfg.region(r.region).pool(_template(r)["metadata"]["labels"][POOL_LABEL])
        assert r.inputs["metadata"]["annotations"]["llm-platform/min-nodes"] == str(pool.min_nodes)
        gpus = max(catalog.instance(t).gpus for t in pool.instance_types)
        assert r.inputs["spec"]["limits"]["nvidia.com/gpu"] == str(pool.max_nodes * gpus)


# -- add-ons, model serving, gateway --------------------------------------------------------------

def test_each_cluster_gets_the_device_plugin_and_the_load_balancer_controller_and_no_ingress_nginx(
        prod_plan: Plan) -> None:
    for region, releases in by_region(prod_plan, RELEASE).items():
        charts = {r.inputs["chart"] for r in releases}
        assert {"nvidia-device-plugin", "aws-load-balancer-controller"} <= charts, region
        assert "ingress-nginx" not in charts, region


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


# -- the Hugging Face token ------------------------------------------------------------------------

def _vllm_releases(plan: Plan) -> list:
    return [r for r in plan.of_type(RELEASE) if r.inputs["chart"] == str(VLLM_CHART)]


def test_the_model_pods_mount_the_token_from_secrets_manager_through_their_own_role(prod_plan: Plan) -> None:
    """No Kubernetes Secret is needed: each release, as Helm renders its planned values, mounts the stack's
    token secret from its own region through the Secrets Store CSI driver, as the region's model server
    role, which may read exactly that copy and nothing else."""
    from tests.charts.rendering import render
    token = "llm-platform/prod/huggingface/token"
    roles = {r.outputs["arn"]: r for r in prod_plan.of_type("aws:iam/role:Role")}
    policies = {p.inputs["role"]: json.loads(p.inputs["policy"])  # the token's (not the weights') policy
                for p in prod_plan.of_type("aws:iam/rolePolicy:RolePolicy") if "ReadStackSecrets" in p.inputs["policy"]}
    token_copies = {arn.replace(f":{s.region}:", f":{r}:"): r
                    for s in prod_plan.of_type("aws:secretsmanager/secret:Secret") if s.inputs["name"] == token
                    for arn in [s.outputs["arn"]] for r in [s.region, *(x["region"] for x in s.inputs["replicas"])]}
    assert sorted(token_copies.values()) == sorted(PROD_REGIONS)  # one secret per zone, a copy per region
    assert prod_plan.of_type("kubernetes:core/v1:Secret") == []
    gateway_roles = {r.inputs["values"]["serviceAccount"]["roleArn"]
                     for r in prod_plan.of_type(RELEASE) if r.inputs["chart"] == str(GATEWAY_CHART)}
    for release in _vllm_releases(prod_plan):
        region, values = release.region, release.inputs["values"]
        role = roles[values["serviceAccount"]["roleArn"]]
        assert role.outputs["arn"] not in gateway_roles
        trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Condition"]["StringEquals"]
        subjects = next(v for k, v in trust.items() if k.endswith(":sub"))
        models = prod_plan.config.models_in(region)
        assert subjects == [f"system:serviceaccount:llm-serving:vllm-{m.name}" for m in models]
        assert f"system:serviceaccount:llm-serving:{values['serviceAccount']['name']}" in subjects
        read, decrypt = policies[role.outputs["name"]]["Statement"]
        assert sorted(read["Action"]) == ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]
        assert [token_copies.get(arn) for arn in read["Resource"]] == [region]
        assert decrypt["Condition"] == {"StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}}
        rendered = render(VLLM_CHART, values, name=release.inputs["name"], namespace=release.inputs["namespace"])
        params = rendered.one("SecretProviderClass")["spec"]["parameters"]
        assert params["region"] == region and f'objectName: "{token}"' in params["objects"]
        volume = next(v for v in rendered.pod_spec()["volumes"] if v["name"] == "hf-token")
        assert volume["csi"]["driver"] == "secrets-store.csi.k8s.io" and volume["csi"]["readOnly"] is True
        assert not any("secret" in v for v in rendered.pod_spec()["volumes"])


def test_the_csi_driver_and_its_aws_provider_run_on_the_gpu_nodes_the_model_pods_land_on(prod_plan: Plan) -> None:
    from infra.scheduling import pool_taints
    for region, releases in by_region(prod_plan, RELEASE).items():
        store = next(r for r in releases if r.inputs["chart"] == "secrets-store-csi-driver-provider-aws")
        assert store.inputs["version"] and store.inputs["namespace"] == "kube-system"
        assert store.inputs["values"]["secrets-store-csi-driver"]["install"] is True
        tolerations = store.inputs["values"]["tolerations"]
        tolerated = {(t["key"], t["effect"]) for t in tolerations if t["operator"] == "Exists"}
        for pool in prod_plan.config.region(region).pools:
            assert {(t["key"], t["effect"]) for t in pool_taints(pool.spot)} <= tolerated, (region, pool.name)


def test_a_stack_without_a_token_has_no_model_server_role_and_no_csi_driver(preview_plan: Plan) -> None:
    assert not any(r.inputs["chart"] == "secrets-store-csi-driver-provider-aws" for r in preview_plan.of_type(RELEASE))
    for release in _vllm_releases(preview_plan):
        assert "roleArn" not in release.inputs["values"]["serviceAccount"]
        assert "hfToken" not in release.inputs["values"]["model"]
    assert not any(s.inputs["name"].endswith("/huggingface/token")
                   for s in preview_plan.of_type("aws:secretsmanager/secret:Secret"))


# -- secrets, budget, DNS -------------------------------------------------------------------------

def test_secrets_live_under_the_stack_path_and_replicate_only_inside_their_zone(prod_plan: Plan) -> None:
    secrets = prod_plan.of_type("aws:secretsmanager/secret:Secret")
    assert secrets and all(s.inputs["name"].startswith("llm-platform/prod/") for s in secrets)
    for s in secrets:
        zone = PROD_REGIONS[s.region]
        replicas = [r["region"] for r in s.inputs.get("replicas", [])]
        assert s.inputs["kmsKeyId"].startswith(f"arn:aws:kms:{s.region}:")
        if s.inputs["name"] == "llm-platform/prod/gateway/redis-url":
            assert not replicas, "a region's Redis URL stays in its region"
        elif s.inputs["name"] == "llm-platform/prod/gateway/peer-key":  # the gateways' shared key: everywhere
            assert sorted([s.region, *replicas]) == sorted(PROD_REGIONS)
        else:
            assert replicas and all(PROD_REGIONS[r] == zone for r in replicas), s.name


def test_gateway_roles_read_only_their_regions_copies(prod_plan: Plan) -> None:
    docs = [json.loads(p.inputs["policy"]) for p in prod_plan.of_type("aws:iam/rolePolicy:RolePolicy")]
    readers = [d for d in docs if any(s.get("Sid") == "ReadStackSecrets" for s in d["Statement"])]
    # The gateways', the model servers' and the weights stagers' (the Hugging Face token); the deploy runner
    # reads no secret.
    assert len(readers) == 3 * len(PROD_REGIONS)
    for doc in readers:
        read = next(s for s in doc["Statement"] if s.get("Sid") == "ReadStackSecrets")
        regions = {arn.split(":")[3] for arn in read["Resource"]}
        # Under the stack's path, but for RDS's own secret of the region's gateway ledger (its managed password).
        ledger = [a for a in read["Resource"] if ":secret:llm-platform/prod/" not in a]
        assert len(regions) == 1 and all(":secret:rds!db-" in a for a in ledger) and len(ledger) <= 1


def test_budget_filters_on_the_stack_tag_and_alerts_at_each_threshold(prod_plan: Plan) -> None:
    (budget,) = prod_plan.of_type("aws:budgets/budget:Budget")
    assert budget.region == GLOBAL
    assert float(budget.inputs["limitAmount"]) == prod_plan.config.budget.monthly_usd
    assert budget.inputs["costFilters"] == [{"name": "TagKeyValue", "values": ["user:llm-platform:stack$prod"]}]
    actual = sorted(n["threshold"] for n in budget.inputs["notifications"] if n["notificationType"] == "ACTUAL")
    assert actual == sorted(prod_plan.config.budget.alert_thresholds_pct)


def test_every_regional_gateway_has_a_health_check_and_latency_records(prod_plan: Plan) -> None:
    """One latency record per region for the global name, and one for its residency zone's name."""
    checks = prod_plan.of_type("aws:route53/healthCheck:HealthCheck")
    assert sorted(c.inputs["fqdn"] for c in checks) == sorted(f"{r}.api.llm.example.com" for r in PROD_REGIONS)
    ids = {c.outputs["id"] for c in checks}
    latency = [r for r in prod_plan.of_type("aws:route53/record:Record") if r.inputs.get("setIdentifier")]
    assert sorted((r.inputs["name"], r.inputs["setIdentifier"]) for r in latency) == sorted(
        [("api.llm.example.com", region) for region in PROD_REGIONS]
        + [(f"{zone}.api.llm.example.com", region) for region, zone in PROD_REGIONS.items()])
    for record in latency:
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
    """The config each region's gateway release carries is one the gateway itself accepts, governance on (keys,
    limits, budgets and the ledger on the region's stores: tests/infra/test_gateway_stores.py)."""
    import yaml

    from gateway.config.loading import load_config
    from tests.infra.rendered_sections import gateway_parsable

    for plan in (prod_plan, preview_plan):
        for g in (r for r in plan.of_type(RELEASE) if r.inputs["chart"] == str(GATEWAY_CHART)):
            path = tmp_path / f"{plan.stack}-{g.region}.yaml"
            path.write_text(yaml.safe_dump(gateway_parsable(g.inputs["values"]["config"])))
            config = load_config(path)
            assert config.gateway.region == g.region
            assert config.redis is not None and config.ledger is not None
            assert config.ledger.store.startswith("postgresql://") and config.ledger.store_password_secret
            assert config.secrets.source == "aws-secretsmanager" and config.secrets.stack == plan.stack
            assert {m.alias for m in config.models} == {m.name for m in plan.config.models
                                                        if plan.config.zone_of(g.region) in
                                                        {plan.config.zone_of(r) for r in m.regions}}


def test_gpu_instances_carry_the_stack_tags_the_budget_filters_on(prod_plan: Plan) -> None:
    """Karpenter stamps its EC2NodeClass's tags on what it launches, or the budget could not see GPU spend."""
    for node_class in prod_plan.of_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"):
        tags = node_class.inputs["spec"]["tags"]
        assert tags[TAG_STACK] == "prod" and tags[TAG_REGION] == node_class.region
        assert node_class.inputs["spec"]["metadataOptions"]["httpTokens"] == "required"


def test_each_validation_record_has_one_owner(prod_plan: Plan) -> None:
    """The shared domain's ACM record is one resource, however many regions' certificates need it."""
    names = [r.inputs["name"] for r in prod_plan.of_type("aws:route53/record:Record") if r.inputs["type"] == "CNAME"
             and r.inputs["name"].startswith("_")]
    assert len(names) == len(set(names)) == 1 + len(PROD_REGIONS) + len(set(PROD_REGIONS.values()))
    validations = prod_plan.of_type("aws:acm/certificateValidation:CertificateValidation")
    assert all(len(v.inputs["validationRecordFqdns"]) == 3 for v in validations)


def test_each_regions_certificate_covers_the_global_regional_and_zone_names(prod_plan: Plan) -> None:
    """TLS ends at each region's NLB: a client of eu.<domain> must get a certificate that names it."""
    for cert in prod_plan.of_type("aws:acm/certificate:Certificate"):
        zone = PROD_REGIONS[cert.region]
        assert cert.inputs["domainName"] == "api.llm.example.com"
        assert sorted(cert.inputs["subjectAlternativeNames"]) == sorted(
            [f"{cert.region}.api.llm.example.com", f"{zone}.api.llm.example.com"])


def test_each_gateway_answers_on_its_zone_name_and_knows_where_other_zones_models_live(prod_plan: Plan) -> None:
    """The NLB's certificate names the zone's name; a US gateway tells callers of the EU-only model where to go."""
    for g in (r for r in prod_plan.of_type(RELEASE) if r.inputs["chart"] == str(GATEWAY_CHART)):
        zone = PROD_REGIONS[g.region]
        assert f"{zone}.api.llm.example.com" in g.inputs["values"]["service"]["loadBalancer"]["hosts"]
        other = g.inputs["values"]["config"]["other_zones"]
        if zone == "us":
            assert other == {"eu": {"url": "https://eu.api.llm.example.com", "models": ["mistral-small-24b"]}}
        else:
            assert other == {}


# -- what the budget sees -------------------------------------------------------------------------

def test_system_nodes_tag_their_instances_and_volumes_through_a_launch_template(prod_plan: Plan) -> None:
    templates = {r.outputs["id"]: r for r in prod_plan.of_type("aws:ec2/launchTemplate:LaunchTemplate")}
    systems = [g for g in prod_plan.of_type(NODE_GROUP) if g.inputs["labels"][POOL_LABEL] == "system"]
    assert len(systems) == len(PROD_REGIONS)
    for group in systems:
        template = templates[group.inputs["launchTemplate"]["id"]]
        kinds = {spec["resourceType"]: spec["tags"] for spec in template.inputs["tagSpecifications"]}
        assert {k: t[TAG_STACK] for k, t in kinds.items()} == {
            "instance": "prod", "volume": "prod", "network-interface": "prod"}
        assert template.inputs["metadataOptions"]["httpTokens"] == "required"


def test_each_cluster_logs_to_a_tagged_log_group_with_a_retention(prod_plan: Plan) -> None:
    """EKS writes to /aws/eks/<cluster>/cluster; the program creates it so it is tagged and expires."""
    groups = {g.inputs["name"]: g for g in prod_plan.of_type("aws:cloudwatch/logGroup:LogGroup")}
    for cluster in prod_plan.of_type("aws:eks/cluster:Cluster"):
        group = groups[f"/aws/eks/{cluster.inputs['name']}/cluster"]
        assert group.region == cluster.region and group.tags[TAG_STACK] == "prod"
        assert group.inputs["retentionInDays"] == 90


def test_gateway_nlbs_are_asked_to_carry_the_stack_tags(prod_plan: Plan) -> None:
    gateways = [r for r in prod_plan.of_type(RELEASE) if r.inputs["chart"] == str(GATEWAY_CHART)]
    assert len(gateways) == len(PROD_REGIONS)
    for release in gateways:
        tags = release.inputs["values"]["service"]["loadBalancer"]["tags"]
        assert tags[TAG_STACK] == "prod" and tags[TAG_REGION] == release.region
        assert tags[TAG_RESIDENCY] == PROD_REGIONS[release.region]


def test_prod_activates_the_stack_cost_allocation_tag_and_previews_do_not(prod_plan: Plan,
                                                                          preview_plan: Plan) -> None:
    """Activation is account-wide and payer-account only: prod's stack does it, kept even if prod is destroyed."""
    (tag,) = prod_plan.of_type("aws:costexplorer/costAllocationTag:CostAllocationTag")
    assert tag.inputs == {"tagKey": TAG_STACK, "status": "Active"} and tag.region == GLOBAL
    assert preview_plan.of_type("aws:costexplorer/costAllocationTag:CostAllocationTag") == []


# -- operator access ------------------------------------------------------------------------------

def test_operators_administer_every_cluster_through_access_entries(prod_plan: Plan) -> None:
    clusters = {c.outputs["name"]: c for c in prod_plan.of_type("aws:eks/cluster:Cluster")}
    for c in clusters.values():
        assert c.inputs["accessConfig"]["authenticationMode"] == "API"  # no aws-auth ConfigMap
    # Karpenter's nodes join through an EC2_LINUX entry of their own (tests/infra/test_karpenter.py).
    entries = [e for e in prod_plan.of_type("aws:eks/accessEntry:AccessEntry") if e.inputs["type"] != "EC2_LINUX"]
    grants = prod_plan.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
    roles = prod_plan.config.cluster.admin_roles
    assert roles, "the prod stack names its operators"
    assert sorted(e.inputs["clusterName"] for e in entries) == sorted(list(clusters) * len(roles))
    for entry in entries:
        assert entry.region == clusters[entry.inputs["clusterName"]].region
        assert entry.inputs["principalArn"] in {f"arn:aws:iam::123456789012:role/{r}" for r in roles}
        assert entry.inputs["type"] == "STANDARD"
    assert {(g.inputs["clusterName"], g.inputs["principalArn"]) for g in grants} == \
        {(e.inputs["clusterName"], e.inputs["principalArn"]) for e in entries}
    for g in grants:
        assert g.inputs["policyArn"] == "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
        assert g.inputs["accessScope"] == {"type": "cluster"}


def test_every_third_party_chart_is_installed_atomically_at_its_pinned_version(prod_plan: Plan) -> None:
    """One helper (infra/components/releases.py) installs every add-on chart; the project's own charts (the gateway,
    the model servers) are installed from the repository. A component with a release helper of its own is the
    duplication this guards against."""
    components = Path(helm_release.__code__.co_filename).parent
    own = {p.name for p in components.glob("*.py") if "k8s.helm.v3.Release(" in p.read_text()}
    assert own == {"releases.py", "gateway.py", "model_serving.py"}
    third_party = [r for r in prod_plan.of_type("kubernetes:helm.sh/v3:Release")
                   if r.inputs["chart"] not in (GATEWAY_CHART, VLLM_CHART) and not r.inputs["chart"].startswith("/")]
    assert len(third_party) >= 9 * 4
    for release in third_party:
        assert release.inputs["atomic"] is True and release.inputs["version"], release.name
        chart = release.inputs["chart"]
        assert chart.startswith("oci://") or release.inputs["repositoryOpts"]["repo"].startswith("https://"), chart
