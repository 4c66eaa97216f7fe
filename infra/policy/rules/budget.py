"""Control `budget-cap`: a stack budget with alerts exists, and the stack at maximum scale costs no more than it."""
from __future__ import annotations

from infra.catalog import load_catalog
from infra.plan.cost import estimate
from infra.policy.rules.base import BUDGET, NODE_GROUP, Findings, PolicyConfig, Resources, as_list

DESCRIPTION = (
    "An AWS Budgets cost budget exists for the stack: monthly, in USD, no higher than the stack's declared "
    "budget, filtered on the stack's cost-allocation tag (user:llm-platform:stack$<stack>), with at least one "
    "percentage alert that e-mails someone. The estimated monthly cost with every node pool at its maximum size "
    "(dearest instance type of each pool, catalog prices, plus control planes and NAT gateways) stays within "
    "the declared budget. Preview stacks (and every pr-N copy) must in addition stay under the preview cap, "
    "whatever their own budget says.")


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    budgets = resources.of_type(BUDGET)
    tag_filter = f"user:llm-platform:stack${policy.stack}"
    ours = [b for b in budgets
            if any(f.get("name") == "TagKeyValue" and tag_filter in as_list(f.get("values"))
                   for f in as_list(b.inputs.get("costFilters")))]
    if not ours:
        found.fail(f"no AWS Budgets budget covers stack {policy.stack}: expected a COST budget filtered on "
                   f"TagKeyValue {tag_filter}")
    for b in ours:
        limit = float(b.inputs.get("limitAmount") or 0)
        alerts = [n for n in as_list(b.inputs.get("notifications"))
                  if n.get("thresholdType") == "PERCENTAGE" and n.get("threshold")
                  and (n.get("subscriberEmailAddresses") or n.get("subscriberSnsTopicArns"))]
        found.judged(b, budget_type=b.inputs.get("budgetType"), time_unit=b.inputs.get("timeUnit"),
                     limit_usd=limit, unit=b.inputs.get("limitUnit"),
                     alert_thresholds_pct=sorted(float(n["threshold"]) for n in alerts))
        if b.inputs.get("budgetType") != "COST" or b.inputs.get("timeUnit") != "MONTHLY" \
                or b.inputs.get("limitUnit") != "USD":
            found.fail(f"budget {b.name} must be a monthly COST budget in USD (is {b.inputs.get('budgetType')}, "
                       f"{b.inputs.get('timeUnit')}, {b.inputs.get('limitUnit')})")
        if limit <= 0 or limit > policy.budget_usd:
            found.fail(f"budget {b.name} limit ${limit:,.2f} is not within the stack's declared budget "
                       f"${policy.budget_usd:,.2f}")
        if not alerts:
            found.fail(f"budget {b.name} has no alert thresholds: nobody is told when spend crosses the line")

    catalog = load_catalog()
    priced = []
    for group in resources.of_type(NODE_GROUP):
        scaling = group.inputs.get("scalingConfig") or {}
        unknown = [t for t in as_list(group.inputs.get("instanceTypes")) if t not in catalog.instances]
        if scaling.get("maxSize") is None:
            found.fail(f"node group {group.name} in {group.region} has no max size: its cost has no upper bound")
        elif unknown or not all(catalog.prices_known(t, group.region)
                                for t in as_list(group.inputs.get("instanceTypes"))):
            found.fail(f"node group {group.name} in {group.region} cannot be priced (instance types "
                       f"{', '.join(unknown) or '-'} or region missing from infra/catalog.yaml)")
        else:
            priced.append(group)
    others = [r for r in resources.all if r.type != NODE_GROUP]
    cost = estimate(others + priced, policy.budget_usd, catalog)
    found.judged(None, estimate="monthly cost at max scale", monthly_usd_min=round(cost.monthly_usd_min, 2),
                 monthly_usd_max=round(cost.monthly_usd_max, 2), budget_usd=policy.budget_usd,
                 catalog_as_of=cost.catalog_as_of,
                 pools={f"{p.region}/{p.pool}": round(p.monthly_usd_max, 2) for p in cost.pools})
    if cost.monthly_usd_max > policy.budget_usd:
        dearest = sorted(cost.pools, key=lambda p: -p.monthly_usd_max)[:3]
        top = ", ".join(f"{p.region}/{p.pool} ${p.monthly_usd_max:,.0f}" for p in dearest)
        found.fail(f"at maximum scale the stack would cost ${cost.monthly_usd_max:,.0f}/month, above its budget "
                   f"of ${policy.budget_usd:,.0f} (dearest pools: {top}); lower pool max_nodes or raise the budget")
    if policy.environment == "preview":
        found.judged(None, preview_cap_usd=policy.preview_cap_usd, budget_usd=policy.budget_usd)
        if policy.budget_usd > policy.preview_cap_usd:
            found.fail(f"preview stack {policy.stack} declares a budget of ${policy.budget_usd:,.0f}, above the "
                       f"preview cap of ${policy.preview_cap_usd:,.0f}")
        if cost.monthly_usd_max > policy.preview_cap_usd:
            found.fail(f"preview stack {policy.stack} would cost ${cost.monthly_usd_max:,.0f}/month at maximum "
                       f"scale, above the preview cap of ${policy.preview_cap_usd:,.0f}")
    return found
