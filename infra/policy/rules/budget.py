"""Control `budget-cap`: a stack budget with alerts exists, and the stack at maximum scale costs no more than it."""
from __future__ import annotations

from typing import Any

from infra.catalog import load_catalog
from infra.plan.cost import DB_INSTANCE, REPLICATION_GROUP, estimate, recorded_pools, store_costs
from infra.policy.rules.base import (
    BUDGET,
    EKS_CLUSTER,
    NODE_GROUP,
    TAG_STACK,
    Findings,
    PolicyConfig,
    Resources,
    as_list,
)
from infra.policy.rules.load_balancers import TAGS, gateway_load_balancer_tags

# What bills by the hour or by the byte among the resource types the program creates, each judged on its
# own tags (provider default tags included). Node groups' instances and volumes, the clusters' log
# groups and the gateways' NLBs are not resources of the program: they are judged through what makes them.
COST_BEARING = frozenset({
    EKS_CLUSTER, NODE_GROUP,
    "aws:ec2/natGateway:NatGateway", "aws:ec2/eip:Eip",
    "aws:kms/key:Key", "aws:kms/replicaKey:ReplicaKey",
    "aws:secretsmanager/secret:Secret",
    "aws:cloudwatch/logGroup:LogGroup",
    "aws:route53/healthCheck:HealthCheck",
    "aws:sqs/queue:Queue",
    REPLICATION_GROUP, DB_INSTANCE,
    "aws:s3/bucket:Bucket",
})
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"

DESCRIPTION = (
    "An AWS Budgets cost budget exists for the stack: monthly, in USD, no higher than the stack's declared "
    "budget, filtered on the stack's cost-allocation tag (user:llm-platform:stack$<stack>), with at least one "
    "percentage alert that e-mails someone. The estimated monthly cost with every node pool at its maximum size "
    "(a node group's max size of its dearest type; a Karpenter NodePool at its GPU and CPU limits, the most "
    "Karpenter launches, at the dearest price per GPU or per vCPU among its types; reserved pools billed in full "
    "at both ends; catalog prices, plus control planes, NAT gateways and the gateway's state stores) stays within "
    "the declared budget. Preview stacks (and every pr-N copy) must in addition stay under the preview cap, "
    "whatever their own budget says. Each region's gateway stores are priced from dated catalog rows (us-east-1 "
    "list prices scaled by the region's price level, like NAT gateways): an ElastiCache replication group at its "
    "node type's hourly price times its nodes; an RDS instance at its class's hourly price, plus its storage per "
    "GiB-month (allocated at min scale, the storage autoscaling ceiling at max), both twice when Multi-AZ (the "
    "standby bills like the primary); a node type, instance class or storage type the catalog does not price fails "
    "the control, since the stack's cost would then have no bound. Each batch file bucket is priced at S3 Standard "
    "storage for the GiB it reserves (its llm-platform:budget-gib tag, from gateway.batch.budget_gib) plus a "
    "million PUTs and a million GETs a month (catalog `data_stores.s3`, scaled like the others); a batch bucket "
    "without the tag, or without S3 prices in the catalog, fails the control. The budget sees only what carries "
    "the stack tag, so every cost-bearing resource does: clusters, node groups, NAT gateways and addresses, KMS keys, "
    "secrets, log groups, health checks, ElastiCache replication groups, RDS instances and S3 buckets by their own "
    "tags "
    "(provider default tags included); the nodes' instances and volumes through their node group's launch "
    "template or their NodePool's EC2NodeClass tags; each cluster's control plane log group "
    "(/aws/eks/<cluster>/cluster) created by the program, tagged, rather than by EKS; each gateway's NLB through the "
    "aws-load-balancer-additional-resource-tags annotation of the LoadBalancer Service its release renders, "
    "which the AWS Load Balancer Controller stamps on the NLB, its listener and target group.")


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

    _stack_tag_coverage(resources, policy, found)

    catalog = load_catalog()
    pools = recorded_pools(resources.all, catalog)
    priced = []
    for pool in pools:
        what = f"{'node group' if pool.kind == 'node-group' else 'NodePool'} {pool.resource.name} in {pool.region}"
        unknown = [t for t in pool.instance_types if t not in catalog.instances]
        if pool.kind == "karpenter" and not pool.limits:
            found.fail(f"{what} has no limits: Karpenter would launch nodes without bound, so its cost has none")
        elif pool.max_nodes is None:
            found.fail(f"{what} has no max size: its cost has no upper bound")
        elif not pool.instance_types or unknown or not all(catalog.prices_known(t, pool.region)
                                                           for t in pool.instance_types):
            found.fail(f"{what} cannot be priced (instance types {', '.join(unknown) or '-'} or region missing "
                       f"from infra/catalog.yaml)")
        else:
            priced.append(pool.resource)
    pooled = {id(p.resource) for p in pools}
    others = [r for r in resources.all if id(r) not in pooled]
    for problem in store_costs(resources.all, catalog)[1]:
        found.fail(f"gateway store {problem}: the stack's cost cannot be bounded; add its price, with its source")
    cost = estimate(others + priced, policy.budget_usd, catalog)
    found.judged(None, estimate="monthly cost at max scale", monthly_usd_min=round(cost.monthly_usd_min, 2),
                 monthly_usd_max=round(cost.monthly_usd_max, 2), budget_usd=policy.budget_usd,
                 catalog_as_of=cost.catalog_as_of, store_prices_as_of=catalog.stores.as_of,
                 pools={f"{p.region}/{p.pool}": round(p.monthly_usd_max, 2) for p in cost.pools},
                 stores={f"{st.region}/{st.kind}": [round(st.monthly_usd_min, 2), round(st.monthly_usd_max, 2)]
                         for st in cost.stores})
    if cost.monthly_usd_max > policy.budget_usd:
        dearest = sorted(cost.pools, key=lambda p: -p.monthly_usd_max)[:3]
        top = ", ".join(f"{p.region}/{p.pool} ${p.monthly_usd_max:,.0f}" for p in dearest)
        found.fail(f"at maximum scale the stack would cost ${cost.monthly_usd_max:,.0f}/month (node groups at their "
                   f"max size, Karpenter NodePools at their limits), above its budget of ${policy.budget_usd:,.0f} "
                   f"(dearest pools: {top}); lower pool max_nodes or raise the budget")
    if policy.environment == "preview":
        found.judged(None, preview_cap_usd=policy.preview_cap_usd, budget_usd=policy.budget_usd)
        if policy.budget_usd > policy.preview_cap_usd:
            found.fail(f"preview stack {policy.stack} declares a budget of ${policy.budget_usd:,.0f}, above the "
                       f"preview cap of ${policy.preview_cap_usd:,.0f}")
        if cost.monthly_usd_max > policy.preview_cap_usd:
            found.fail(f"preview stack {policy.stack} would cost ${cost.monthly_usd_max:,.0f}/month at maximum "
                       f"scale, above the preview cap of ${policy.preview_cap_usd:,.0f}")
    return found


def _tagged(tags: Any, stack: str) -> bool:
    # Mapping-like, not only dict: CrossGuard hands nested values over as proxies.
    return hasattr(tags, "get") and tags.get(TAG_STACK) == stack


def _stack_tag_coverage(resources: Resources, policy: PolicyConfig, found: Findings) -> None:
    stack = policy.stack
    untagged = [r for r in resources.all if r.type in COST_BEARING and not _tagged(r.tags, stack)]
    for r in untagged:
        found.fail(f"{r.type} {r.name} in {r.region} lacks the tag {TAG_STACK}={stack}: the budget cannot see "
                   f"what it costs")
    found.judged(None, stack_tag=f"{TAG_STACK}={stack}",
                 cost_bearing_resources=sum(1 for r in resources.all if r.type in COST_BEARING),
                 untagged=[r.name for r in untagged])

    templates = {str(t.outputs.get("id")): t for t in resources.of_type(LAUNCH_TEMPLATE)}
    for group in resources.of_type(NODE_GROUP):
        template = templates.get(str((group.inputs.get("launchTemplate") or {}).get("id")))
        specs = {s.get("resourceType"): s.get("tags") for s in as_list(template.inputs.get("tagSpecifications"))} \
            if template is not None else {}
        missing = [kind for kind in ("instance", "volume") if not _tagged(specs.get(kind), stack)]
        found.judged(group, node_group_tags_instances_and_volumes=not missing,
                     launch_template=template.name if template is not None else None)
        if missing:
            found.fail(f"node group {group.name} in {group.region} starts {' and '.join(m + 's' for m in missing)} "
                       f"without the tag {TAG_STACK}={stack} (managed node groups don't pass their tags on: a "
                       f"launch template's tag specifications must)")

    for pool in recorded_pools(resources.all):
        if pool.kind != "karpenter":
            continue
        tags = ((pool.node_class.inputs.get("spec") or {}).get("tags")) if pool.node_class is not None else None
        found.judged(pool.resource, node_class_tags_instances_and_volumes=_tagged(tags, stack),
                     node_class=pool.node_class.name if pool.node_class is not None else None)
        if not _tagged(tags, stack):
            found.fail(f"NodePool {pool.resource.name} in {pool.region} launches instances and volumes without the "
                       f"tag {TAG_STACK}={stack}: its EC2NodeClass's spec.tags must carry it (Karpenter stamps "
                       f"those on everything it launches)")

    log_groups = {str(g.inputs.get("name")): g for g in resources.of_type(LOG_GROUP)}
    for cluster in resources.of_type(EKS_CLUSTER):
        if not as_list(cluster.inputs.get("enabledClusterLogTypes")):
            continue
        name = f"/aws/eks/{cluster.inputs.get('name') or cluster.outputs.get('name')}/cluster"
        log_group = log_groups.get(name)
        found.judged(cluster, control_plane_log_group=name, created_by_program=log_group is not None,
                     retention_days=log_group.inputs.get("retentionInDays") if log_group is not None else None)
        if log_group is None:
            found.fail(f"cluster {cluster.name} in {cluster.region} logs to {name}, which the program does not "
                       f"create: EKS would create it untagged, unseen by the budget and kept forever")
        elif not log_group.inputs.get("retentionInDays"):
            found.fail(f"log group {name} keeps its logs forever: set a retention")

    for release, tags in gateway_load_balancer_tags(resources):
        found.judged(release, load_balancer_tags=tags)
        if tags is not None and not _tagged(tags, stack):  # no load balancer at all is cluster-hardening's
            found.fail(f"the load balancer of {release.name} in {release.region} lacks the tag {TAG_STACK}={stack}: "
                       f"its Service has no {TAGS} annotation carrying it")
