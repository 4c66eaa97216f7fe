"""Control budget-cap: every stack has a monthly budget with alerts, and cannot outgrow it even at maximum scale."""
from __future__ import annotations

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
