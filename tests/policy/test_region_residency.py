"""Control region-residency: resources, restricted models and secret replicas stay inside their residency zone."""
from __future__ import annotations

import pytest

from infra.config import ConfigError, parse
from infra.plan.mocks import PlannedResource
from tests.policy.helpers import (
    assert_passes,
    assert_rejected,
    find,
    mutated,
    plan_of,
    result,
    result_of_resources,
    stack_raw,
)

SECRET = "aws:secretsmanager/secret:Secret"
RELEASE = "kubernetes:helm.sh/v3:Release"


def test_every_resource_sits_in_a_region_its_zone_allows(stack_plan):
    res = result(stack_plan, "region-residency")
    assert_passes(res)
    placed = {e["region"]: e["zone"] for e in res.evidence if "resources" in e}
    assert placed == {r.name: r.residency for r in stack_plan.config.regions}


def test_eu_models_never_leave_eu(prod_plan):
    res = result(prod_plan, "region-residency")
    assert_passes(res)
    mistral = next(e for e in res.evidence if e.get("model") == "mistral-small-24b")
    assert mistral["restricted_to"] == "eu"
    assert mistral["served_in"] == ["eu-north-1", "eu-west-2"]


def test_secret_replicas_stay_in_their_zone(prod_plan):
    res = result(prod_plan, "region-residency")
    assert_passes(res)
    secrets = [e for e in res.evidence
               if e.get("type") == SECRET and e["secret"] != "llm-platform/prod/gateway/peer-key"]
    # per zone: four provider keys, the master key, the Hugging Face token; per region: the Redis URL
    assert len(secrets) == 12 + 4
    for e in secrets:
        assert {e["region"], *e["replicas"]} in ({"us-east-1", "us-west-2"}, {"eu-north-1", "eu-west-2"}) or (
            e["secret"] == "llm-platform/prod/gateway/redis-url" and e["replicas"] == [])


def test_only_iam_route53_and_budgets_live_outside_a_region(prod_plan):
    res = result(prod_plan, "region-residency")
    assert_passes(res)
    outside = next(e["outside_any_region"] for e in res.evidence if "outside_any_region" in e)
    assert outside and all(t.split(":")[1].split("/")[0] in {"iam", "route53", "budgets", "costexplorer"}
                           for t in outside)


def test_eu_zone_listing_a_us_region_is_rejected():
    """Broken config: the zone called "eu" is declared to include us-east-1, and the stack runs there as "eu"."""
    raw = stack_raw("preview")
    raw["residency"] = {"eu": ["eu-north-1", "us-east-1"]}
    raw["regions"][0]["residency"] = "eu"
    assert_rejected(result(plan_of(raw, "preview"), "region-residency"),
                    "residency zone 'eu' lists us-east-1, which is outside the EU jurisdiction")


def test_restricted_model_served_outside_its_zone_is_rejected(prod_plan):
    """Program bug (simulated): the EU-restricted model's release in eu-north-1 lands in us-east-1 instead."""
    resources = mutated(prod_plan, lambda rs: setattr(
        find(rs, RELEASE, "eu-north-1-mistral-small-24b"), "region", "us-east-1"))
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "model mistral-small-24b is restricted to zone 'eu' but release eu-north-1-mistral-small-24b "
                    "serves it in us-east-1")


def test_secret_replicated_out_of_its_zone_is_rejected(prod_plan):
    """Program bug (simulated): an EU secret gets a replica in us-east-1."""
    def replicate_to_us(rs):
        secret = find(rs, SECRET, "llm-platform-secrets-eu-providers-openai")
        secret.inputs["replicas"] = [*secret.inputs["replicas"], {
            "region": "us-east-1", "kmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/mrk-x"}]
    resources = mutated(prod_plan, replicate_to_us)
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "secret llm-platform/prod/providers/openai (eu-north-1, zone 'eu') is replicated to us-east-1, "
                    "outside its zone")


def test_regional_resource_on_the_global_provider_is_rejected(prod_plan):
    """Program bug (simulated): a KMS key created through the global-services provider (no region of its own)."""
    resources = mutated(prod_plan, lambda rs: rs.append(PlannedResource(
        "aws:kms/key:Key", "stray-key", "global", {"description": "stray"},
        {"llm-platform:residency": "global"}, {"arn": "arn:aws:kms:us-east-1:123456789012:key/stray"})))
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "aws:kms/key:Key stray-key is created outside any region")


def test_resource_tagged_with_the_wrong_zone_is_rejected(prod_plan):
    """Program bug (simulated): an eu-west-2 resource carries the us residency tag (a mis-wired provider)."""
    def mistag(rs):
        vpc = find(rs, "aws:ec2/vpc:Vpc", region="eu-west-2")
        vpc.tags = {**vpc.tags, "llm-platform:residency": "us"}
    resources = mutated(prod_plan, mistag)
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "is tagged residency 'us', but eu-west-2 is in zone 'eu'")


# -- DNS: each zone's name resolves only inside the zone ------------------------------------------
RECORD = "aws:route53/record:Record"
US_NLB = "a0123456789abcdef-01234567.elb.us-east-1.amazonaws.com"


def zone_record(resources: list, zone: str, region: str):
    return next(r for r in resources if r.type == RECORD and r.inputs.get("name") == f"{zone}.api.llm.example.com"
                and r.inputs.get("setIdentifier") == region)


def test_each_zone_name_routes_only_to_its_own_regions(prod_plan):
    """eu.<domain> and us.<domain> are latency record sets over their own zone's load balancers only."""
    res = result(prod_plan, "region-residency")
    assert_passes(res)
    judged = [e for e in res.evidence if "zone_name" in e]
    assert sorted((e["zone_name"], e["latency_region"][0]) for e in judged) == sorted([
        ("us.api.llm.example.com", "us-east-1"), ("us.api.llm.example.com", "us-west-2"),
        ("eu.api.llm.example.com", "eu-north-1"), ("eu.api.llm.example.com", "eu-west-2")])
    for e in judged:
        assert set(e["target_regions"]) <= set(prod_plan.config.residency[e["zone"]]), e


def test_eu_zone_name_pointing_at_a_us_load_balancer_is_rejected(prod_plan):
    """Program bug (simulated): eu.<domain>'s eu-north-1 record points at us-east-1's NLB."""
    resources = mutated(prod_plan, lambda rs: zone_record(rs, "eu", "eu-north-1").inputs.update(records=[US_NLB]))
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "points eu.api.llm.example.com (residency zone 'eu') at a load balancer in us-east-1, "
                    "outside the zone")


def test_eu_zone_name_with_a_latency_record_for_a_us_region_is_rejected(prod_plan):
    """Program bug (simulated): eu.<domain> gets a record answering from us-east-1, so Route 53 may pick it."""
    def route_from_us(rs):
        record = zone_record(rs, "eu", "eu-west-2")
        record.inputs.update(latencyRoutingPolicies=[{"region": "us-east-1"}])
    resources = mutated(prod_plan, route_from_us)
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "routes eu.api.llm.example.com (residency zone 'eu') by latency from us-east-1")


def test_stack_without_a_name_for_each_zone_is_rejected(prod_plan):
    """Program bug (simulated): only the global name exists, so EU clients have no name that stays in the EU."""
    resources = mutated(prod_plan, lambda rs: [rs.remove(r) for r in list(rs) if r.type == RECORD
                                               and r.inputs.get("name") == "eu.api.llm.example.com"])
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "residency zone 'eu' has no DNS name of its own")


# -- model weights: buckets, staging and loading stay in the zone ----------------------------------
BUCKET = "aws:s3/bucket:Bucket"
JOB = "kubernetes:batch/v1:Job"


def _bucket(resources: list, region: str):
    return find(resources, BUCKET, f"{region}-weights")


def test_restricted_models_weights_are_staged_and_loaded_only_in_their_zone(prod_plan):
    res = result(prod_plan, "region-residency")
    assert_passes(res)
    mistral = next(e for e in res.evidence if e.get("weights_of") == "mistral-small-24b")
    assert mistral == {"weights_of": "mistral-small-24b", "restricted_to": "eu",
                       "loaded_from": ["eu-north-1", "eu-west-2"], "staged_in": ["eu-north-1", "eu-west-2"]}
    judged = {e["region"]: e["zone"] for e in res.evidence
              if e.get("type") == BUCKET and e["resource"].endswith("-weights")}
    assert judged == {r.name: r.residency for r in prod_plan.config.regions}


def test_restricted_model_loading_weights_from_a_bucket_outside_its_zone_is_rejected(prod_plan):
    """Program bug (simulated): the EU-restricted model's eu-north-1 release streams from us-east-1's bucket."""
    def load_from_us(rs):
        us = _bucket(rs, "us-east-1").outputs["bucket"]
        find(rs, RELEASE, "eu-north-1-mistral-small-24b").inputs["values"]["model"]["source"] = \
            f"s3://{us}/mistral-small-24b"
    resources = mutated(prod_plan, load_from_us)
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "release eu-north-1-mistral-small-24b puts model mistral-small-24b's weights (restricted to zone "
                    "'eu') in bucket llmp-prod-weights-", "in us-east-1 (zone 'us')")


def test_another_models_release_loading_a_restricted_models_prefix_outside_its_zone_is_rejected(prod_plan):
    """Program bug (simulated): us-east-1's release of another model streams the EU-restricted model's prefix
    (<model>/<revision>) from us-east-1's bucket: judged by the path read, not only by whose release it is."""
    def load_mistral_in_us(rs):
        us = _bucket(rs, "us-east-1").outputs["bucket"]
        revision = next(m.revision for m in prod_plan.config.models if m.name == "mistral-small-24b")
        find(rs, RELEASE, "us-east-1-llama-3-3-70b").inputs["values"]["model"]["source"] = \
            f"s3://{us}/mistral-small-24b/{revision}"
    resources = mutated(prod_plan, load_mistral_in_us)
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "release us-east-1-llama-3-3-70b puts model mistral-small-24b's weights (restricted to zone "
                    "'eu') in bucket llmp-prod-weights-", "in us-east-1 (zone 'us')")


def test_restricted_model_staged_into_a_bucket_outside_its_zone_is_rejected(prod_plan):
    """Program bug (simulated): the EU stager of the EU-restricted model uploads to us-east-1's bucket."""
    def stage_to_us(rs):
        us = _bucket(rs, "us-east-1").outputs["bucket"]
        job = find(rs, JOB, "eu-west-2-weights-mistral-small-24b")
        for env in job.inputs["spec"]["template"]["spec"]["containers"][0]["env"]:
            if env["name"] == "BUCKET":
                env["value"] = us
    resources = mutated(prod_plan, stage_to_us)
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "staging job eu-west-2-weights-mistral-small-24b puts model mistral-small-24b's weights "
                    "(restricted to zone 'eu') in bucket llmp-prod-weights-")


def test_restricted_model_staged_by_a_job_outside_its_zone_is_rejected(prod_plan):
    """Program bug (simulated): the EU-restricted model's staging Job runs in the us-east-1 cluster."""
    resources = mutated(prod_plan, lambda rs: setattr(
        find(rs, JOB, "eu-north-1-weights-mistral-small-24b"), "region", "us-east-1"))
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "staging job eu-north-1-weights-mistral-small-24b downloads model mistral-small-24b (restricted "
                    "to zone 'eu') in us-east-1 (zone 'us')")


def test_weights_bucket_replicated_out_of_its_zone_is_rejected(prod_plan):
    """Program bug (simulated): the eu-north-1 weights bucket replicates to us-east-1's."""
    def replicate(rs):
        eu, us = _bucket(rs, "eu-north-1"), _bucket(rs, "us-east-1")
        rs.append(PlannedResource(
            "aws:s3/bucketReplicationConfig:BucketReplicationConfig", "eu-north-1-weights-replication", "eu-north-1",
            {"bucket": eu.outputs["bucket"], "role": "arn:aws:iam::123456789012:role/replication",
             "rules": [{"id": "all", "status": "Enabled", "destination": {"bucket": us.outputs["arn"]}}]},
            {"llm-platform:residency": "eu"}))
    resources = mutated(prod_plan, replicate)
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "bucket replication eu-north-1-weights-replication copies llmp-prod-weights-",
                    "(zone 'eu') to llmp-prod-weights-", "in us-east-1, outside its zone")


# -- Amazon Bedrock fallbacks: processed only inside the gateway's zone ---------------------------
HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
US_REGIONS = ["us-east-1", "us-east-2", "us-west-1", "us-west-2"]  # a us. profile's routes (bedrock_profiles.yaml)


def bedrock_fallback_plan(model_id: str, us_zone: list[str] | None = None):
    raw = stack_raw("preview")
    raw["failover"] = {**raw["failover"], "hosted_fallbacks": {"qwen2-5-1-5b": [f"bedrock/{model_id}"]}}
    if us_zone is not None:
        raw["residency"] = {"us": us_zone}
    return plan_of(raw, "preview")


def test_bedrock_fallback_is_called_and_processed_in_the_gateways_own_region():
    """A plain model id: the us-east-1 gateway calls Bedrock in us-east-1, with no key, and may invoke nothing else."""
    plan = bedrock_fallback_plan(HAIKU)
    res = result(plan, "region-residency")
    assert_passes(res)
    [called] = [e for e in res.evidence if "bedrock" in e]
    assert (called["called_in"], called["processed_in"]) == ("us-east-1", ["us-east-1"])
    [granted] = [e for e in res.evidence if "bedrock_invoke" in e]
    assert granted["bedrock_invoke"] == [f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}"]


def test_bedrock_profile_is_allowed_when_the_zone_holds_every_region_it_may_route_to():
    res = result(bedrock_fallback_plan(f"us.{HAIKU}", us_zone=US_REGIONS), "region-residency")
    assert_passes(res)
    [called] = [e for e in res.evidence if "bedrock" in e]
    assert called["processed_in"] == US_REGIONS


def test_bedrock_profile_that_may_route_outside_the_zone_is_rejected():
    """The us. profile may send a call to us-east-2 or us-west-1; the zone allows only us-east-1 and us-west-2."""
    assert_rejected(result(bedrock_fallback_plan(f"us.{HAIKU}"), "region-residency"),
                    f"sends qwen2-5-1-5b to Bedrock us.{HAIKU} in us-east-1, which Bedrock may process in "
                    "us-east-2, us-west-1, outside the zone (us-east-1, us-west-2)",
                    "the zone 'us' gateway role may invoke Bedrock in us-east-2")


def test_gateway_role_invoking_bedrock_outside_its_zone_is_rejected():
    """Program bug (simulated): the us-east-1 gateway's Bedrock grant names a model in eu-west-1."""
    plan = bedrock_fallback_plan(HAIKU)

    def grant_eu(rs):
        grant = find(rs, "aws:iam/rolePolicy:RolePolicy", "us-east-1-gateway-bedrock")
        grant.inputs["policy"] = grant.inputs["policy"].replace("bedrock:us-east-1:", "bedrock:eu-west-1:")
    assert_rejected(result_of_resources(plan, mutated(plan, grant_eu), "region-residency"),
                    "the zone 'us' gateway role may invoke Bedrock in eu-west-1, outside the zone")


def test_global_bedrock_profile_is_refused_by_the_stack_config():
    """A global. profile may be processed in any commercial region: no zone can hold it."""
    raw = stack_raw("preview")
    raw["failover"] = {**raw["failover"], "hosted_fallbacks": {"qwen2-5-1-5b": [f"bedrock/global.{HAIKU}"]}}
    with pytest.raises(ConfigError, match=r"failover.hosted_fallbacks.qwen2-5-1-5b\[0\]: .* is a global inference "
                                          r"profile"):
        parse(raw, "preview")


def test_every_regions_alerts_go_to_a_topic_in_that_region(prod_plan):
    res = result(prod_plan, "region-residency")
    sent = [e for e in res.evidence if "alert_topic" in e]
    assert len(sent) == len(prod_plan.config.regions)
    for e in sent:
        assert e["alert_topic"].startswith(f"arn:aws:sns:{e['region']}:") and e["sigv4_region"] == e["region"]


def test_alerts_sent_to_a_topic_in_another_region_are_rejected(prod_plan):
    def to_virginia(rs):
        release = find(rs, RELEASE, "eu-west-2-monitoring-prometheus-stack")
        sns = release.inputs["values"]["alertmanager"]["config"]["receivers"][1]["sns_configs"][0]
        sns["topic_arn"] = "arn:aws:sns:us-east-1:123456789012:llmp-prod-alerts-us-east-1"
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, to_virginia), "region-residency"),
                    "Alertmanager of release eu-west-2-monitoring-prometheus-stack in eu-west-2 sends alerts to "
                    "arn:aws:sns:us-east-1:")


# -- the AWS Load Balancer Controller acts in its own region only ---------------------------------
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def test_each_load_balancer_controller_manages_its_own_region_only(stack_plan):
    res = result(stack_plan, "region-residency")
    assert_passes(res)
    controllers = [e for e in res.evidence if "load_balancer_controller_region" in e]
    assert sorted(e["region"] for e in controllers) == sorted(r.name for r in stack_plan.config.regions)
    for e in controllers:
        assert e["load_balancer_controller_region"] == e["region"] and e["fenced_to_region"], e
        assert e["role"].startswith("arn:aws:iam::")


def test_load_balancer_controller_told_another_region_is_rejected(prod_plan):
    """Program bug (simulated): eu-north-1's controller is told us-east-1, where it would make the EU gateway's NLB."""
    resources = mutated(prod_plan, lambda rs: find(rs, RELEASE, "eu-north-1-aws-load-balancer-controller")
                        .inputs["values"].update(region="us-east-1"))
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "the AWS Load Balancer Controller eu-north-1-aws-load-balancer-controller runs in eu-north-1 but "
                    "is told region 'us-east-1'")


def test_load_balancer_controller_role_without_its_region_fence_is_rejected(prod_plan):
    """Program bug (simulated): the role keeps upstream's policy, which names every region, without the fence."""
    resources = mutated(prod_plan, lambda rs: rs.remove(find(rs, ROLE_POLICY, "eu-west-2-lb-controller-region")))
    assert_rejected(result_of_resources(prod_plan, resources, "region-residency"),
                    "(eu-west-2) is not fenced to eu-west-2")


def test_instance_events_go_only_to_a_queue_in_their_rules_region(prod_plan):
    res = result(prod_plan, "region-residency")
    targets = [e for e in res.evidence if e.get("type") == "aws:cloudwatch/eventTarget:EventTarget"]
    assert len(targets) == 5 * len(prod_plan.config.regions)  # Karpenter's five interruption rules per region
    assert all(e["target_region"] == e["rule_region"] == e["region"] for e in targets)


def test_event_rule_delivering_to_another_zones_queue_is_rejected(prod_plan):
    """Program bug (simulated): eu-north-1's spot interruption rule targets us-east-1's queue."""
    def cross(rs):
        us = find(rs, "aws:sqs/queue:Queue", "us-east-1-karpenter-interruption")
        find(rs, "aws:cloudwatch/eventTarget:EventTarget", "eu-north-1-karpenter-spot-interruption").inputs[
            "arn"] = us.outputs["arn"]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, cross), "region-residency"),
                    "EventBridge target eu-north-1-karpenter-spot-interruption of a rule in eu-north-1 delivers to "
                    "arn:aws:sqs:us-east-1:")


REDIS = "aws:elasticache/replicationGroup:ReplicationGroup"
LEDGER = "aws:rds/instance:Instance"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


def test_no_gateway_store_outside_its_zone(stack_plan):
    res = result(stack_plan, "region-residency")
    assert_passes(res)
    stores = [e for e in res.evidence if e.get("type") in (REDIS, LEDGER)]
    assert sorted(e["resource"] for e in stores) == sorted(
        f"{r.name}-gateway-{kind}" for r in stack_plan.config.regions for kind in ("redis", "ledger"))
    assert all(e["store_of_gateway_in"] == e["region"] for e in stores)
    ledgers = {e["region"]: e for e in res.evidence if "ledger_host" in e}
    assert sorted(ledgers) == sorted(r.name for r in stack_plan.config.regions)
    assert all(e["ledger_region"] == e["ledger_password_secret_region"] == region for region, e in ledgers.items())


def test_gateway_store_created_in_another_zones_region_is_rejected(prod_plan):
    """Program bug (simulated): eu-north-1's ledger is created through the us-east-1 provider, and its Redis names
    us-east-1 as its own region (pulumi-aws 7's per-resource region) while going through the EU provider."""
    def move(rs):
        find(rs, LEDGER, "eu-north-1-gateway-ledger").region = "us-east-1"
        find(rs, REDIS, "eu-north-1-gateway-redis").inputs["region"] = "us-east-1"
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, move), "region-residency"),
                    "Instance eu-north-1-gateway-ledger, the store of the gateway in eu-north-1 (zone 'eu'), is "
                    "created in us-east-1 (zone 'us')",
                    "replicationGroup:ReplicationGroup eu-north-1-gateway-redis is created through the eu-north-1 "
                    "provider but names region us-east-1 itself (zone 'us')",
                    "the gateway in eu-north-1 (zone 'eu') keeps its ledger in eu-north-1-gateway-ledger in us-east-1")


def test_ledger_copies_outside_its_zone_are_rejected(prod_plan):
    """Program bug (simulated): an EU ledger gets a read replica in us-west-2, and its automated backups are
    replicated to us-east-1; a replica inside the zone (eu-west-2) is fine."""
    source = find(prod_plan.resources, LEDGER, "eu-north-1-gateway-ledger").outputs["arn"]

    def copy_out(rs):
        rs.append(PlannedResource(LEDGER, "eu-north-1-gateway-ledger-replica-us", "us-west-2", {
            "engine": "postgres", "instanceClass": "db.r7g.large", "replicateSourceDb": source},
            {"llm-platform:residency": "us"}))
        rs.append(PlannedResource(LEDGER, "eu-north-1-gateway-ledger-replica-eu", "eu-west-2", {
            "engine": "postgres", "instanceClass": "db.r7g.large", "replicateSourceDb": source},
            {"llm-platform:residency": "eu"}))
        rs.append(PlannedResource(
            "aws:rds/instanceAutomatedBackupsReplication:InstanceAutomatedBackupsReplication",
            "eu-north-1-gateway-ledger-backups", "us-east-1", {"sourceDbInstanceArn": source},
            {"llm-platform:residency": "us"}))
    res = result_of_resources(prod_plan, mutated(prod_plan, copy_out), "region-residency")
    assert_rejected(res, "RDS read replica eu-north-1-gateway-ledger-replica-us in us-west-2 (zone 'us') copies "
                         "eu-north-1-gateway-ledger in eu-north-1, outside its zone",
                    "InstanceAutomatedBackupsReplication eu-north-1-gateway-ledger-backups copies the ledger's "
                    "backups from eu-north-1 (zone 'eu') to us-east-1, outside its zone")
    assert not any("replica-eu" in v for v in res.violations)


def test_gateway_pointing_at_another_regions_ledger_is_rejected(prod_plan):
    """Program bug (simulated): the eu-west-2 gateway's rendered config names us-east-1's ledger and its secret."""
    us = find(prod_plan.resources, LEDGER, "us-east-1-gateway-ledger")

    def repoint(rs):
        release = next(r for r in rs if r.type == HELM_RELEASE and r.region == "eu-west-2"
                       and str(r.inputs.get("chart", "")).endswith("charts/gateway"))
        ledger = release.inputs["values"]["config"]["ledger"]
        ledger["store"] = f"postgresql://llmp@{us.outputs['address']}:5432/llmp?sslmode=require"
        ledger["store_password_secret"] = us.outputs["masterUserSecrets"][0]["secretArn"]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, repoint), "region-residency"),
                    "the gateway in eu-west-2 (zone 'eu') keeps its ledger in us-east-1-gateway-ledger in us-east-1 "
                    "(zone 'us')",
                    "the gateway in eu-west-2 reads its ledger password from arn:aws:secretsmanager:us-east-1:")


def test_the_peer_key_alone_is_replicated_across_zones(prod_plan):
    """The gateway peer key is in every region of the stack, both zones; the same replication of the master key is
    refused."""
    res = result(prod_plan, "region-residency")
    assert_passes(res)
    peer = next(e for e in res.evidence if e.get("secret") == "llm-platform/prod/gateway/peer-key")
    assert {peer["region"], *peer["replicas"]} == {r.name for r in prod_plan.config.regions}

    def replicate_master_key(rs):
        secret = find(rs, SECRET, "llm-platform-secrets-us-gateway-master-key")
        secret.inputs["replicas"] = [*secret.inputs["replicas"], {"region": "eu-north-1", "kmsKeyId": ""}]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, replicate_master_key), "region-residency"),
                    "secret llm-platform/prod/gateway/master-key (us-east-1, zone 'us') is replicated to eu-north-1")


def test_a_config_putting_a_store_outside_its_zone_is_rejected_naming_it():
    """Broken config: the zone called "eu" is declared to include us-east-1: that region's gateway stores would keep
    the EU zone's key records, spend rows and counters in the US."""
    raw = stack_raw("preview")
    raw["residency"] = {"eu": ["eu-north-1", "us-east-1"]}
    raw["regions"][0]["residency"] = "eu"
    assert_rejected(result(plan_of(raw, "preview"), "region-residency"),
                    "Instance us-east-1-gateway-ledger would keep zone 'eu''s key records and spend rows in us-east-1, "
                    "outside the EU jurisdiction",
                    "ReplicationGroup us-east-1-gateway-redis would keep zone 'eu''s limit and budget counters in "
                    "us-east-1")
