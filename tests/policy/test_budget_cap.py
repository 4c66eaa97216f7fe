"""Control budget-cap: every stack has a monthly budget with alerts, and cannot outgrow it even at maximum scale."""
from __future__ import annotations

from tests.policy.helpers import (assert_passes, assert_rejected, find, mutated, plan_of, result, result_of_resources,
                                  stack_raw)

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
