"""Control failover-topology: losing any one region leaves every model serving, DNS routes around it, fallbacks stay
sound."""
from __future__ import annotations

from tests.policy.helpers import (
    assert_passes,
    assert_rejected,
    find,
    gateway_release,
    mutated,
    plan_of,
    result,
    result_of_resources,
    stack_raw,
)

HEALTH_CHECK = "aws:route53/healthCheck:HealthCheck"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"


def _model(raw, name):
    return next(m for m in raw["models"] if m["name"] == name)


def _gateway_models(resources, region):
    return {m["alias"]: m for m in gateway_release(resources, region).inputs["values"]["config"]["models"]}


def test_every_prod_model_runs_in_two_regions_of_each_zone_it_serves(prod_plan):
    res = result(prod_plan, "failover-topology")
    assert_passes(res)
    coverage = {(e["model"], e["zone"]): e["served_in"] for e in res.evidence if "served_in" in e}
    assert coverage[("mistral-small-24b", "eu")] == ["eu-north-1", "eu-west-2"]
    assert ("mistral-small-24b", "us") not in coverage
    assert all(len(regions) >= 2 for regions in coverage.values())
    assert len(coverage) == 7  # three models in both zones, the EU-restricted one in eu only


def test_prod_survives_loss_of_any_one_region(prod_plan):
    res = result(prod_plan, "failover-topology")
    assert_passes(res)
    scenarios = [e for e in res.evidence if "scenario" in e]
    assert {e["scenario"] for e in scenarios} == {f"lose {r.name}" for r in prod_plan.config.regions}
    for e in scenarios:
        assert e["survivors_max_replicas"] >= e["replicas_needed"] > 0
    pools = [e for e in res.evidence if "nodes_needed_at_max" in e]
    assert pools and all(e["nodes_needed_at_max"] <= e["max_nodes"] for e in pools)


def test_every_regional_gateway_is_health_checked_in_dns(stack_plan):
    res = result(stack_plan, "failover-topology")
    assert_passes(res)
    records = {e["gateway_region"]: e for e in res.evidence if "gateway_region" in e}
    assert set(records) == {r.name for r in stack_plan.config.regions}
    for region, e in records.items():
        assert e["health_check"] and e["probes"] == f"{region}.{stack_plan.config.gateway.domain}"


def test_restricted_models_never_fall_back_out_of_their_zone(prod_plan):
    res = result(prod_plan, "failover-topology")
    assert_passes(res)
    chains = {e["region"]: e for e in res.evidence if e.get("restricted_model") == "mistral-small-24b"}
    assert set(chains) == {"eu-north-1", "eu-west-2"}, "only EU gateways may offer the EU-restricted model"
    for e in chains.values():
        assert e["deployments"] == ["mistral-small-24b-eu-north-1", "mistral-small-24b-eu-west-2"]


def test_prod_model_in_one_region_only_is_rejected():
    """Broken config: the EU-restricted model runs in eu-north-1 only; losing it loses the model."""
    raw = stack_raw("prod")
    _model(raw, "mistral-small-24b")["regions"] = ["eu-north-1"]
    assert_rejected(result(plan_of(raw, "prod"), "failover-topology"),
                    "model mistral-small-24b is served in only 1 region(s) of zone 'eu' (eu-north-1); at least 2")


def test_replicas_too_few_to_absorb_a_lost_region_are_rejected():
    """Broken config: the 70B model needs 2 replicas everywhere and may never grow past 2, so no survivor can
    take over a lost region's load."""
    raw = stack_raw("prod")
    _model(raw, "llama-3-3-70b")["replicas"] = {"min": 2, "max": 2}
    for region in raw["regions"]:  # a valid config: the H100 pools start big enough for the two replicas
        next(p for p in region["pools"] if p["name"] == "h100")["min_nodes"] = 2
    assert_rejected(result(plan_of(raw, "prod"), "failover-topology"),
                    "losing us-east-1 leaves model llama-3-3-70b short in zone 'us': the survivors (us-west-2) "
                    "reach 2 replicas at most, but 4 are needed")


def test_pool_too_small_for_its_failover_replicas_is_rejected(prod_plan):
    """Program bug (simulated): eu-west-2's L4 NodePool is limited to one node's GPUs and vCPUs, so Karpenter never
    launches the nodes the failover math counts on there."""
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_POOL, "eu-west-2-mid")
                        .inputs["spec"].update(limits={"nvidia.com/gpu": "4", "cpu": "48"}))
    assert_rejected(result_of_resources(prod_plan, resources, "failover-topology"),
                    "pool mid in eu-west-2 needs 4 nodes to run its models at maximum replicas",
                    "its NodePool limits stop it at 1")


def test_prod_floors_are_what_the_replica_minimums_fill_and_pools_grow_to_failover_scale(prod_plan):
    """With Karpenter a pool grows on demand: prod keeps one node per interactive GPU pool at rest (none for the
    batch pool, whose model idles at zero), and the failover math counts on each pool's max (its limits), where
    the surviving region's replicas land."""
    for region in prod_plan.config.regions:
        assert [p.min_nodes for p in region.pools] == [1, 1, 0], region.name
    res = result(prod_plan, "failover-topology")
    pools = {(e["region"], e["pool"]): e for e in res.evidence if "nodes_needed_at_max" in e}
    assert pools[("eu-west-2", "mid")]["max_nodes"] == 4 and pools[("eu-west-2", "mid")]["nodes_needed_at_max"] == 4
    assert pools[("us-east-1", "h100")]["max_nodes"] == 2 == pools[("us-east-1", "h100")]["nodes_needed_at_max"]


def test_gateway_without_a_health_check_is_rejected(prod_plan):
    """Program bug (simulated): the health check of us-west-2's gateway is not created."""
    resources = mutated(prod_plan, lambda rs: rs.remove(find(rs, HEALTH_CHECK, "llm-platform-dns-us-west-2")))
    assert_rejected(result_of_resources(prod_plan, resources, "failover-topology"),
                    "Route53 record llm-platform-dns-us-west-2-latency for the gateway in us-west-2 "
                    "has no health check")


def test_fallback_loop_is_rejected(prod_plan):
    """Program bug (simulated): two aliases name each other as fallbacks in us-east-1's gateway config."""
    def loop(rs):
        models = _gateway_models(rs, "us-east-1")
        models["llama-3-3-70b"]["fallbacks"] = ["llama-3-1-8b"]
        models["llama-3-1-8b"]["fallbacks"] = ["llama-3-3-70b"]
    resources = mutated(prod_plan, loop)
    assert_rejected(result_of_resources(prod_plan, resources, "failover-topology"),
                    "gateway in us-east-1: fallback chain loops: llama-3-3-70b -> llama-3-1-8b -> llama-3-3-70b")


def test_restricted_model_falling_back_to_a_hosted_provider_is_rejected(prod_plan):
    """Program bugs (simulated; config validation forbids hosted fallbacks for restricted models): eu-north-1's
    gateway gets a hosted deployment for the EU-restricted model, and eu-west-2's gateway lets it fall back
    to an alias that has one."""
    def leak(rs):
        west = _gateway_models(rs, "eu-north-1")["mistral-small-24b"]
        west["deployments"].append({"name": "mistral-small-24b-together", "provider": "openai",
                                    "model": "mistralai/Mistral-Small-24B", "api_base": "https://api.together.xyz/v1",
                                    "region": "eu-north-1", "residency": "eu", "tier": "fallback"})
        _gateway_models(rs, "eu-west-2")["mistral-small-24b"]["fallbacks"] = ["llama-3-1-8b"]
    resources = mutated(prod_plan, leak)
    assert_rejected(result_of_resources(prod_plan, resources, "failover-topology"),
                    "gateway in eu-north-1: restricted model mistral-small-24b (zone 'eu') can fall back to deployment "
                    "mistral-small-24b-together, a hosted provider (https://api.together.xyz/v1)",
                    "gateway in eu-west-2: restricted model mistral-small-24b (zone 'eu') can fall back to "
                    "deployment llama-3-1-8b-groq (through fallback alias llama-3-1-8b)")


def test_us_gateway_offering_an_eu_restricted_model_is_rejected(prod_plan):
    """Program bug (simulated): us-east-1's gateway lists the EU-restricted model, served from eu-north-1."""
    def offer(rs):
        config = gateway_release(rs, "us-east-1").inputs["values"]["config"]
        config["models"].append({"alias": "mistral-small-24b", "deployments": [
            {"name": "mistral-small-24b-eu-north-1", "provider": "openai", "model": "mistral-small-24b",
             "api_base": "https://eu-north-1.api.llm.example.com/v1", "region": "eu-north-1", "residency": "eu"}]})
    resources = mutated(prod_plan, offer)
    assert_rejected(result_of_resources(prod_plan, resources, "failover-topology"),
                    "gateway in us-east-1 (zone 'us') offers model mistral-small-24b, which is restricted to zone 'eu'")
