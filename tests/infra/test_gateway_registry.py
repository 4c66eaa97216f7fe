"""The gateway image's registry: one ECR repository per stack in its first region, replicated to the others, and
every region's gateway pulling the stack's digest from its own region; previews pull prod's image."""
from __future__ import annotations

import json

import pytest

from infra.components.registry import lifecycle_policy, repository_name, repository_prefix
from infra.config import PLACEHOLDER_DIGEST, ConfigError, parse
from infra.plan.mocks import ACCOUNT
from infra.plan.run import Plan, run_program
from tests.stacks import stack_raw

DIGEST = "sha256:" + "ab" * 32


def gateway_images(plan: Plan) -> dict[str, dict]:
    """{region: the gateway release's image values} as the program installs them."""
    releases = [r for r in plan.of_type("kubernetes:helm.sh/v3:Release") if r.inputs.get("name") == "gateway"]
    assert releases
    return {r.region: r.inputs["values"]["image"] for r in releases}


def test_prod_has_one_repository_in_its_first_region_immutable_scanned_and_kms_encrypted(prod_plan: Plan) -> None:
    (repo,) = prod_plan.of_type("aws:ecr/repository:Repository")
    assert repo.region == prod_plan.config.regions[0].name
    assert repo.inputs["name"] == repository_name("prod") == "llm-platform/prod/gateway"
    assert repo.inputs["imageTagMutability"] == "IMMUTABLE"
    assert repo.inputs["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo.inputs["encryptionConfigurations"] == [{"encryptionType": "KMS"}]
    assert not repo.inputs.get("forceDelete"), "a destroy must not delete images running pods pull"
    (lifecycle,) = prod_plan.of_type("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert lifecycle.region == repo.region and json.loads(lifecycle.inputs["policy"]) == json.loads(lifecycle_policy())


def test_prod_replicates_only_its_own_prefix_to_every_other_region(prod_plan: Plan) -> None:
    regions = [r.name for r in prod_plan.config.regions]
    (replication,) = prod_plan.of_type("aws:ecr/replicationConfiguration:ReplicationConfiguration")
    assert replication.region == regions[0]
    (rule,) = replication.inputs["replicationConfiguration"]["rules"]
    assert [d["region"] for d in rule["destinations"]] == regions[1:]
    assert {d["registryId"] for d in rule["destinations"]} == {ACCOUNT}
    assert rule["repositoryFilters"] == [{"filter": "llm-platform/prod/", "filterType": "PREFIX_MATCH"}]
    # The replicas ECR creates take their settings from a template in their own region.
    templates = prod_plan.of_type("aws:ecr/repositoryCreationTemplate:RepositoryCreationTemplate")
    assert sorted(t.region for t in templates) == sorted(regions[1:])
    for t in templates:
        assert t.inputs["prefix"] == repository_prefix("prod").rstrip("/")
        assert t.inputs["appliedFors"] == ["REPLICATION"]
        assert t.inputs["imageTagMutability"] == "IMMUTABLE"
        # KMS in a creation template needs custom_role_arn (a role ECR assumes); AES256 needs none.
        assert t.inputs["encryptionConfigurations"] == [{"encryptionType": "AES256"}]
        assert "customRoleArn" not in t.inputs and "resourceTags" not in t.inputs


def test_every_region_pulls_the_stacks_digest_from_its_own_regions_replica(prod_plan: Plan) -> None:
    images = gateway_images(prod_plan)
    assert sorted(images) == sorted(r.name for r in prod_plan.config.regions)
    for region, image in images.items():
        assert image == {"repository": f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/llm-platform/prod/gateway",
                         "digest": prod_plan.config.gateway.image_digest, "pullPolicy": "Always"}


def test_a_preview_creates_no_registry_and_pulls_prods_image(preview_plan: Plan) -> None:
    assert not preview_plan.of_type("aws:ecr/repository:Repository")
    assert not preview_plan.of_type("aws:ecr/replicationConfiguration:ReplicationConfiguration")
    for region, image in gateway_images(preview_plan).items():
        assert image["repository"] == f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/llm-platform/prod/gateway"


def test_a_single_region_stack_has_no_replication() -> None:
    raw = stack_raw("prod")
    raw["gateway"]["image_digest"] = DIGEST
    raw["regions"] = raw["regions"][:1]
    raw["residency"] = {"us": ["us-east-1"]}
    raw["failover"] = {"min_regions_per_model": 1}
    raw["models"] = [dict(m, regions=["us-east-1"]) for m in raw["models"] if "us-east-1" in m["regions"]]
    plan = run_program(raw, "prod")
    assert len(plan.of_type("aws:ecr/repository:Repository")) == 1
    assert not plan.of_type("aws:ecr/replicationConfiguration:ReplicationConfiguration")
    assert gateway_images(plan)["us-east-1"]["digest"] == DIGEST


def test_the_shipped_stacks_hold_the_placeholder_digest_until_an_image_is_built(prod_plan: Plan) -> None:
    """All zeros says "not built yet": the plan and a first `up` (which creates the repository) still run."""
    assert prod_plan.config.gateway.image_digest == PLACEHOLDER_DIGEST
    assert stack_raw("preview")["gateway"]["image_digest"] == PLACEHOLDER_DIGEST


@pytest.mark.parametrize("value, says", [
    ("0.1.0", "is a tag"),
    ("ghcr.io/llm-platform/gateway:0.1.0", "not a digest"),
    ("sha256:" + "AB" * 32, "not a digest"),
    ("sha256:abc", "not a digest"),
])
def test_an_image_pinned_otherwise_than_by_digest_is_refused_naming_the_field(value: str, says: str) -> None:
    raw = stack_raw("prod")
    raw["gateway"]["image_digest"] = value
    with pytest.raises(ConfigError) as exc:
        parse(raw, "prod", "Pulumi.prod.yaml")
    (problem,) = [p for p in exc.value.problems if p[0] == "llm-platform:gateway.image_digest"]
    assert says in problem[1] and "sha256:" in problem[1]


def test_the_old_image_key_says_what_replaced_it() -> None:
    raw = stack_raw("prod")
    raw["gateway"]["image"] = "ghcr.io/llm-platform/gateway:0.1.0"
    with pytest.raises(ConfigError) as exc:
        parse(raw, "prod", "Pulumi.prod.yaml")
    assert any(path == "llm-platform:gateway.image" and "image_digest" in msg for path, msg in exc.value.problems)


def test_a_missing_digest_is_refused_naming_the_field() -> None:
    raw = stack_raw("prod")
    del raw["gateway"]["image_digest"]
    with pytest.raises(ConfigError) as exc:
        parse(raw, "prod", "Pulumi.prod.yaml")
    assert ("llm-platform:gateway.image_digest", "required key is missing") in exc.value.problems


# -- who may push and who may manage it ------------------------------------------------------------------------

def test_the_push_role_pushes_to_prods_repository_only_and_trusts_only_its_environment(prod_plan: Plan) -> None:
    from infra.ci_access import image_push_role
    from tests.infra.test_ci_access import ACCOUNT as ROLE_ACCOUNT
    from tests.infra.test_ci_access import allowed_resources, reaches

    role = image_push_role(ROLE_ACCOUNT, "example-org/llm-platform")
    assert role["trust"]["Statement"][0]["Condition"]["StringEquals"][
        "token.actions.githubusercontent.com:sub"] == "repo:example-org/llm-platform:environment:gateway-image"
    (repo,) = prod_plan.of_type("aws:ecr/repository:Repository")
    pushable = allowed_resources(role["permissions"], "ecr:PutImage")
    assert reaches(pushable, repo.outputs["arn"])
    assert not reaches(pushable, f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/llm-platform/pr-1/gateway")
    assert not reaches(pushable, f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/other-team/app")
    actions = {a for s in role["permissions"]["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str)
                                                                       else s["Action"])}
    assert not {a for a in actions if a.startswith("ecr:Delete") or a == "ecr:*"}


def test_only_prods_deploy_role_manages_the_repository_and_previews_may_look_it_up(prod_plan: Plan) -> None:
    from tests.infra.test_ci_access import ROLES, allowed_resources, reaches

    (repo,) = prod_plan.of_type("aws:ecr/repository:Repository")
    assert reaches(allowed_resources(ROLES["prod"]["permissions"], "ecr:*"), repo.outputs["arn"])
    assert not reaches(allowed_resources(ROLES["preview"]["permissions"], "ecr:*"), repo.outputs["arn"])
    discover = next(s for s in ROLES["preview"]["permissions"]["Statement"] if s["Sid"] == "Discover")
    assert "ecr:DescribeRepositories" in discover["Action"]


def test_helm_renders_the_gateway_container_pulling_the_regional_replica_by_digest() -> None:
    """The chart (schema and template, real Helm) takes the program's digest-only image: `<repository>@<digest>`."""
    from infra.chart_values import GATEWAY_CHART, GATEWAY_NAMESPACE, GATEWAY_RELEASE, gateway_values
    from infra.components.providers import stack_tags
    from infra.gateway_config import gateway_config
    from tests.charts.rendering import ROLE_ARN, certificate_arn, load_prod, render

    cfg = load_prod()
    region = cfg.regions[1]
    url = f"{ACCOUNT}.dkr.ecr.{region.name}.amazonaws.com/llm-platform/prod/gateway"
    values = gateway_values(cfg, region, role_arn=ROLE_ARN, config=gateway_config(cfg, region),
                            certificate_arn=certificate_arn(region.name),
                            tags=stack_tags(cfg.stack, region.name, region.residency), image_repository=url)
    rendered = render(GATEWAY_CHART, values, name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)
    (workload,) = [o for o in rendered.objects if o["kind"] in ("Deployment", "StatefulSet")]
    (container,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"]
    assert container["image"] == f"{url}@{cfg.gateway.image_digest}"
    assert container["imagePullPolicy"] == "Always"
