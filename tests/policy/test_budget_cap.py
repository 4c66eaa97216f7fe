"""Control budget-cap: every stack has a monthly budget with alerts, and cannot outgrow it even at maximum scale."""
from __future__ import annotations

import pytest

from infra.catalog import HOURS_PER_MONTH, load_catalog
from infra.plan.cost import estimate, store_cost
from infra.plan.render import to_markdown, to_table
from infra.plan.summary import summarize
from infra.policy.rules import evaluate
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

BUDGET = "aws:budgets/budget:Budget"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"


def test_every_stack_has_a_monthly_budget_with_alerts(stack_plan):
    res = result(stack_plan, "budget-cap")
    assert_passes(res)
    budget = next(e for e in res.evidence if e.get("type") == BUDGET)
    assert budget["budget_type"] == "COST" and budget["time_unit"] == "MONTHLY"
    assert budget["limit_usd"] == stack_plan.config.budget.monthly_usd
    assert budget["alert_thresholds_pct"], "a budget nobody hears about caps nothing"


def test_prod_at_maximum_scale_fits_its_budget(prod_plan):
    res = result(prod_plan, "budget-cap")
    assert_passes(res)
    estimate = next(e for e in res.evidence if e.get("estimate"))
    assert 0 < estimate["monthly_usd_max"] <= estimate["budget_usd"] == 500000
    assert "us-east-1/h100" in estimate["pools"]


def test_preview_stays_under_the_preview_cap(preview_plan):
    res = result(preview_plan, "budget-cap")
    assert_passes(res)
    cap = next(e for e in res.evidence if "preview_cap_usd" in e)
    estimate = next(e for e in res.evidence if e.get("estimate"))
    assert estimate["monthly_usd_max"] <= cap["budget_usd"] <= cap["preview_cap_usd"]


def test_budget_below_max_scale_cost_is_rejected():
    """Broken config: prod's pools at maximum cost ~$460k a month; the budget says $250k."""
    raw = stack_raw("prod")
    raw["budget"]["monthly_usd"] = 250000
    assert_rejected(result(plan_of(raw, "prod"), "budget-cap"),
                    "at maximum scale the stack would cost", "above its budget of $250,000")


def test_nodepool_limits_above_the_budget_at_max_scale_are_rejected_with_the_cost_named(prod_plan):
    """Program bug (simulated): us-east-1's H100 NodePool is limited to 100 nodes' GPUs and vCPUs instead of 2.
    Karpenter would launch up to its limits, so the budget is judged there: 100 p5.48xlarge cost millions."""
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_POOL, "us-east-1-h100").inputs["spec"].update(
        limits={"nvidia.com/gpu": "800", "cpu": "19200"}))
    hourly = load_catalog().hourly_usd("p5.48xlarge", "us-east-1", spot=False)
    res = result_of_resources(prod_plan, resources, "budget-cap")
    assert_rejected(res, "at maximum scale the stack would cost", "above its budget of $500,000",
                    f"us-east-1/h100 ${hourly * 100 * HOURS_PER_MONTH:,.0f}")
    pools = next(e["pools"] for e in res.evidence if "pools" in e)
    assert round(pools["us-east-1/h100"]) == round(hourly * 100 * HOURS_PER_MONTH)


def test_a_nodepool_is_judged_at_its_limits_not_its_floor(prod_plan):
    res = result(prod_plan, "budget-cap")
    pools = next(e["pools"] for e in res.evidence if "pools" in e)
    catalog = load_catalog()
    # batch: 6 GPUs and 48 vCPUs; the dearest per GPU of its types fills the GPU limit.
    per_gpu = max(catalog.hourly_usd(t, "us-east-1", spot=True) / catalog.instance(t).gpus
                  for t in ("g6e.xlarge", "g6.xlarge", "g6.2xlarge"))
    per_cpu = max(catalog.hourly_usd(t, "us-east-1", spot=True) / catalog.instance(t).vcpus
                  for t in ("g6e.xlarge", "g6.xlarge", "g6.2xlarge"))
    assert round(pools["us-east-1/batch"], 2) == round(min(6 * per_gpu, 48 * per_cpu) * HOURS_PER_MONTH, 2)


def test_nodepool_launching_untagged_instances_is_rejected(prod_plan):
    """Program bug (simulated): an EC2NodeClass without the stack tag: its GPUs would be invisible to the budget."""
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_CLASS, "eu-west-2-h100-nodeclass").inputs["spec"]
                        .update(tags={}))
    assert_rejected(result_of_resources(prod_plan, resources, "budget-cap"),
                    "NodePool eu-west-2-h100 in eu-west-2 launches instances and volumes without the tag "
                    "llm-platform:stack=prod")


def test_preview_budget_above_the_preview_cap_is_rejected():
    """Broken config: a preview stack granting itself $50k a month and a large on-demand pool to spend it on."""
    raw = stack_raw("preview")
    raw["budget"]["monthly_usd"] = 50000
    raw["regions"][0]["pools"][0].update(capacity="on-demand", max_nodes=8)
    raw["models"][0]["tier"] = "interactive"
    assert_rejected(result(plan_of(raw, "preview"), "budget-cap"),
                    "declares a budget of $50,000, above the preview cap of $5,000",
                    "above the preview cap of $5,000")


def test_stack_without_a_budget_is_rejected(prod_plan):
    """Program bug (simulated on the recorded resources): the budget resource is not created."""
    resources = mutated(prod_plan, lambda rs: rs.remove(find(rs, BUDGET)))
    assert_rejected(result_of_resources(prod_plan, resources, "budget-cap"),
                    "no AWS Budgets budget covers stack prod")


def test_budget_without_alerts_is_rejected(prod_plan):
    """Program bug (simulated): the budget is created without notifications."""
    resources = mutated(prod_plan, lambda rs: find(rs, BUDGET).inputs.update(notifications=[]))
    assert_rejected(result_of_resources(prod_plan, resources, "budget-cap"), "has no alert thresholds")


# -- the budget sees the whole spend: every cost-bearing resource carries the stack tag -----------
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"


def gateway_load_balancer(resources: list, region: str) -> dict:
    release = find(resources, "kubernetes:helm.sh/v3:Release", f"{region}-gateway")
    return release.inputs["values"]["service"]["loadBalancer"]


def test_every_cost_bearing_resource_carries_the_stack_tag(stack_plan):
    """Clusters, nodes (instances and volumes), NAT, keys, secrets, log groups, health checks and NLBs."""
    res = result(stack_plan, "budget-cap")
    assert_passes(res)
    coverage = next(e for e in res.evidence if "cost_bearing_resources" in e)
    assert coverage["cost_bearing_resources"] > 0 and coverage["untagged"] == []
    groups = [e for e in res.evidence if "node_group_tags_instances_and_volumes" in e]
    assert groups and all(e["node_group_tags_instances_and_volumes"] for e in groups)
    assert any(e["resource"].endswith("-system") for e in groups), "the system nodes are judged too"
    logs = [e for e in res.evidence if "control_plane_log_group" in e]
    assert len(logs) == len(stack_plan.config.regions) and all(e["created_by_program"] for e in logs)
    nlbs = [e for e in res.evidence if "load_balancer_tags" in e]
    assert len(nlbs) == len(stack_plan.config.regions)
    assert all(e["load_balancer_tags"]["llm-platform:stack"] == stack_plan.stack for e in nlbs)


def test_cluster_whose_log_group_eks_would_create_is_rejected(prod_plan):
    """Program bug (simulated): the control plane log group is left for EKS to create, untagged."""
    resources = mutated(prod_plan, lambda rs: rs.remove(find(rs, LOG_GROUP, region="eu-north-1")))
    assert_rejected(result_of_resources(prod_plan, resources, "budget-cap"),
                    "logs to /aws/eks/llmp-prod-eu-north-1/cluster, which the program does not create")


def test_log_group_without_the_stack_tag_is_rejected(prod_plan):
    """Program bug (simulated): a log group created through a provider without the stack's default tags."""
    resources = mutated(prod_plan, lambda rs: setattr(find(rs, LOG_GROUP, region="us-east-1"), "tags", {}))
    assert_rejected(result_of_resources(prod_plan, resources, "budget-cap"),
                    "aws:cloudwatch/logGroup:LogGroup", "lacks the tag llm-platform:stack=prod")


def test_gateway_nlb_without_the_tag_annotation_is_rejected(prod_plan):
    """Program bug (simulated): the gateway's release is given no tags, so its rendered LoadBalancer Service has no
    aws-load-balancer-additional-resource-tags annotation and the controller makes an untagged NLB."""
    resources = mutated(prod_plan, lambda rs: gateway_load_balancer(rs, "us-west-2").update(tags={}))
    assert_rejected(result_of_resources(prod_plan, resources, "budget-cap"),
                    "the load balancer of us-west-2-gateway in us-west-2 lacks the tag llm-platform:stack=prod",
                    "service.beta.kubernetes.io/aws-load-balancer-additional-resource-tags")


def test_system_nodes_without_a_tagging_launch_template_are_rejected(prod_plan):
    """Program bug (simulated): the system node group's launch template tags instances but not volumes."""
    def untag_volumes(rs):
        template = find(rs, LAUNCH_TEMPLATE, "us-east-1-system")
        template.inputs["tagSpecifications"] = [s for s in template.inputs["tagSpecifications"]
                                                if s["resourceType"] != "volume"]
    resources = mutated(prod_plan, untag_volumes)
    assert_rejected(result_of_resources(prod_plan, resources, "budget-cap"),
                    "node group us-east-1-system in us-east-1 starts volumes without the tag llm-platform:stack=prod")


REDIS = "aws:elasticache/replicationGroup:ReplicationGroup"
LEDGER = "aws:rds/instance:Instance"


def test_budget_prices_the_gateway_stores(stack_plan):
    """Each region's Redis at its node type's price times its nodes, its ledger at its class's price plus its storage,
    both twice when Multi-AZ; us-east-1 list prices scaled by the region's price level, like NAT gateways."""
    catalog = load_catalog()
    res = result(stack_plan, "budget-cap")
    assert_passes(res)
    stores = next(e for e in res.evidence if e.get("estimate"))["stores"]
    cost = estimate(stack_plan.resources, stack_plan.config.budget.monthly_usd, catalog)
    for region in (r.name for r in stack_plan.config.regions):
        redis = find(stack_plan.resources, REDIS, f"{region}-gateway-redis").inputs
        ledger = find(stack_plan.resources, LEDGER, f"{region}-gateway-ledger").inputs
        factor = catalog.region_price_factor(region) * HOURS_PER_MONTH
        expected_redis = catalog.stores.cache_node_usd_h[redis["engine"]][redis["nodeType"]] * factor \
            * redis["numCacheClusters"]
        copies = 2 if ledger["multiAz"] else 1
        instance = catalog.stores.db_instance_usd_h["postgres"][ledger["instanceClass"]] * factor
        gib = catalog.stores.db_storage_usd_gib_month[ledger["storageType"]] * catalog.region_price_factor(region)
        assert stores[f"{region}/redis"] == [round(expected_redis, 2)] * 2
        assert stores[f"{region}/ledger"] == [round((instance + gib * ledger["allocatedStorage"]) * copies, 2),
                                              round((instance + gib * ledger["maxAllocatedStorage"]) * copies, 2)]
        # included in the region's min and max, and so in the stack's
        here = [s for s in cost.stores if s.region == region]
        pools = [p for p in cost.pools if p.region == region]
        assert cost.regions[region]["monthly_usd_min"] == pytest.approx(
            sum(p.monthly_usd_min for p in pools) + cost.fixed_monthly_usd[region]
            + sum(s.monthly_usd_min for s in here))
        assert cost.regions[region]["monthly_usd_max"] == pytest.approx(
            sum(p.monthly_usd_max for p in pools) + cost.fixed_monthly_usd[region]
            + sum(s.monthly_usd_max for s in here))
    assert catalog.stores.as_of and {"elasticache-pricing", "rds-postgresql-pricing"} <= set(catalog.sources)


def test_a_multi_az_ledger_bills_its_standby_and_a_multi_node_redis_each_node(prod_plan):
    catalog = load_catalog()
    ledger = find(prod_plan.resources, LEDGER, "eu-west-2-gateway-ledger")
    redis = find(prod_plan.resources, REDIS, "eu-west-2-gateway-redis")
    single = mutated(prod_plan, lambda rs: (find(rs, LEDGER, "eu-west-2-gateway-ledger").inputs.update(multiAz=False),
                                            find(rs, REDIS, "eu-west-2-gateway-redis").inputs.update(
                                                numCacheClusters=1)))
    one_ledger, one_redis = (store_cost(find(single, t, n), catalog) for t, n in
                             ((LEDGER, "eu-west-2-gateway-ledger"), (REDIS, "eu-west-2-gateway-redis")))
    assert store_cost(ledger, catalog).monthly_usd_max == pytest.approx(2 * one_ledger.monthly_usd_max)
    assert store_cost(redis, catalog).monthly_usd_max == pytest.approx(2 * one_redis.monthly_usd_max)


def test_a_gateway_store_the_catalog_cannot_price_is_rejected(prod_plan):
    """Program bug (simulated): eu-north-1's Redis grows to a node type the catalog has no price for, and its ledger
    moves to io2 storage: the stack's cost then has no known bound."""
    def unknown(rs):
        find(rs, REDIS, "eu-north-1-gateway-redis").inputs.update(nodeType="cache.r7g.16xlarge")
        find(rs, LEDGER, "eu-north-1-gateway-ledger").inputs.update(storageType="io2")
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, unknown), "budget-cap"),
                    "gateway store eu-north-1-gateway-redis in eu-north-1: ElastiCache node type cache.r7g.16xlarge "
                    "(valkey) is not in infra/catalog.yaml",
                    "eu-north-1-gateway-ledger in eu-north-1: RDS storage type io2 is not in infra/catalog.yaml")


def test_an_untagged_gateway_store_is_rejected(prod_plan):
    def untag(rs):
        find(rs, LEDGER, "us-east-1-gateway-ledger").tags.pop("llm-platform:stack")
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, untag), "budget-cap"),
                    "aws:rds/instance:Instance us-east-1-gateway-ledger in us-east-1 lacks the tag "
                    "llm-platform:stack=prod")


def test_the_plan_shows_each_regions_gateway_stores_and_their_cost(prod_plan):
    cost = estimate(prod_plan.resources, prod_plan.config.budget.monthly_usd)
    regions = summarize(prod_plan, cost)
    results = evaluate(prod_plan)
    markdown, table = to_markdown(prod_plan, regions, cost, results), to_table(prod_plan, regions, cost, results, 400)
    for region in regions:
        kinds = [(s["kind"], s["multi_az"]) for s in region.stores]
        assert kinds == [("redis", True), ("ledger", True)], region.name
        redis, ledger = region.stores
        assert redis["ingress"] == "TCP 6379 from the cluster security group"
        assert ledger["ingress"] == "TCP 5432 from the cluster security group"
        assert "llm-platform/prod/gateway/redis-url" in redis["credentials"]
        assert "rds!db-" in ledger["credentials"] and "rds.force_ssl=1" in ledger["encryption"]
    line = next(ln for ln in markdown.splitlines() if ln.startswith("- ledger") and "db.r7g.large" in ln)
    assert "Multi-AZ" in line and "100–1000 GiB gp3" in line and "/month" in line
    assert table.count("gateway Redis valkey") == table.count("gateway ledger postgres") == len(regions)
