"""What a plan amounts to per region: pools, models and replica counts, read from the recorded resources."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infra.catalog import load_catalog
from infra.plan.cost import DB_INSTANCE, REPLICATION_GROUP, CostEstimate, recorded_pools
from infra.plan.mocks import PlannedResource
from infra.plan.run import Plan
from infra.scheduling import POOL_LABEL
from infra.sizing import replica_ranges

RELEASE = "kubernetes:helm.sh/v3:Release"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
QUEUE = "aws:sqs/queue:Queue"
EVENT_RULE = "aws:cloudwatch/eventRule:EventRule"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
DASHBOARD_LABEL = "grafana_dashboard"


@dataclass
class ModelPlacement:
    model: str
    pool: str
    gpus: int
    min_replicas: int
    max_replicas: int
    # Why max_replicas is below the config's replicas.max (e.g. "max 8 capped: at max_nodes, pool mid holds 4
    # GPUs at 1 node"), or empty.
    capped: str = ""

    def replicas(self) -> str:
        """"2–4", or "2–4, max 8 capped: ..." when the pool cannot hold the config's max."""
        span = f"{self.min_replicas}–{self.max_replicas}"
        return f"{span}, {self.capped}" if self.capped else span


@dataclass
class RegionSummary:
    name: str
    residency: str
    pools: list[dict[str, Any]] = field(default_factory=list)
    models: list[ModelPlacement] = field(default_factory=list)
    monthly_usd_min: float = 0.0
    monthly_usd_max: float = 0.0
    # What runs beside the models: add-on charts (name -> version) and what scales, alerts and shows them.
    addons: dict[str, str] = field(default_factory=dict)
    elastic: list[str] = field(default_factory=list)
    # The gateway's state stores: its Redis and its ledger, each with its secrets, network rule and cost.
    stores: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "residency": self.residency, "pools": self.pools,
                "models": [vars(m) for m in self.models], "addons": self.addons, "elastic": self.elastic,
                "stores": self.stores,
                "monthly_usd_min": round(self.monthly_usd_min, 2), "monthly_usd_max": round(self.monthly_usd_max, 2)}


def model_placement(values: dict[str, Any]) -> ModelPlacement:
    """A vLLM release's values -> where the model runs and how far it scales."""
    scaling = values.get("autoscaling") or {}
    replicas = int(values.get("replicaCount", 1))
    hpa = bool(scaling.get("enabled"))
    return ModelPlacement(
        model=values["model"]["servedName"], pool=values["nodeSelector"][POOL_LABEL], gpus=int(values["gpus"]),
        # A batch model that idles at zero (KEDA's idleReplicaCount 0) runs none while nobody calls it.
        min_replicas=(0 if scaling.get("idleReplicas") == 0 else int(scaling.get("minReplicas", replicas)))
        if hpa else replicas,
        max_replicas=int(scaling.get("maxReplicas", replicas)) if hpa else replicas)


def summarize(plan: Plan, cost: CostEstimate) -> list[RegionSummary]:
    regions = {r.name: RegionSummary(r.name, r.residency) for r in plan.config.regions}
    # A NodePool grows from its floor to its limits on Pending pods; a managed node group stays at its desired size.
    autoscalers = {(p.region, p.resource.name): "karpenter" if p.kind == "karpenter" else "none"
                   for p in recorded_pools(plan.resources)}
    for p in cost.pools:
        regions[p.region].pools.append({
            "name": p.pool, "node_group": p.node_group, "capacity": p.capacity,
            "instance_types": list(p.instance_types), "min_nodes": p.min_nodes, "max_nodes": p.max_nodes,
            "gpus_max": p.gpus_max, "autoscaler": autoscalers.get((p.region, p.node_group), "none"),
            # What the pool costs at each end of its range (reserved pools bill in full at both).
            "monthly_usd_min": round(p.monthly_usd_min, 2), "monthly_usd_max": round(p.monthly_usd_max, 2)})
    catalog = load_catalog()
    ranges = {r.name: replica_ranges(plan.config, r, catalog) for r in plan.config.regions}
    for r in plan.of_type(RELEASE):
        values = r.inputs.get("values") or {}
        if r.region in regions and "model" in values and "nodeSelector" in values:
            placed = model_placement(values)
            scale = ranges[r.region].get(placed.model)
            if scale is not None and scale.capped and placed.max_replicas == scale.ceiling:
                placed.capped = scale.cap_reason()
            regions[r.region].models.append(placed)
    for region in regions.values():
        _elastic(plan, region)
        region.stores = gateway_stores(plan, region.name, cost)
    for name, amounts in cost.regions.items():
        if name in regions:
            regions[name].monthly_usd_min = amounts["monthly_usd_min"]
            regions[name].monthly_usd_max = amounts["monthly_usd_max"]
    return list(regions.values())


def _elastic(plan: Plan, region: RegionSummary) -> None:
    """The region's add-on releases (charts from a repository, by version) and, in words, its elastic capacity:
    Karpenter's NodePools and interruption queue, KEDA's scaled models, the dashboards."""
    here = [r for r in plan.resources if r.region == region.name]
    for r in here:
        chart = str(r.inputs.get("chart") or "") if r.type == RELEASE else ""
        if chart.startswith("oci://") or (chart and "/" not in chart):  # a repository's chart, not charts/<own>
            region.addons[chart.rsplit("/", 1)[-1]] = str(r.inputs.get("version") or "")
    node_pools = [r for r in here if r.type == NODE_POOL]
    queues, rules = (sum(r.type == t for r in here) for t in (QUEUE, EVENT_RULE))
    if node_pools:
        region.elastic.append(f"Karpenter: {len(node_pools)} NodePools with their EC2NodeClasses, "
                              f"{queues} interruption queue(s) fed by {rules} EventBridge rules")
    scaled = [m for m in region.models if m.max_replicas > m.min_replicas]
    idle = [m.model for m in region.models if m.min_replicas == 0]
    if scaled:
        region.elastic.append(f"KEDA: {len(scaled)} model(s) scale on vLLM's queue and KV cache"
                              + (f", {', '.join(idle)} idle at 0 until called" if idle else "")
                              + "; the gateway on CPU and calls in flight")
    dashboards = sorted(str(r.name).rsplit("-", 1)[-1] for r in here if r.type == CONFIG_MAP
                        and DASHBOARD_LABEL in ((r.inputs.get("metadata") or {}).get("labels") or {}))
    if dashboards:
        region.elastic.append(f"dashboards: {', '.join(dashboards)}")


SECRET = "aws:secretsmanager/secret:Secret"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
PARAMETER_GROUP = "aws:rds/parameterGroup:ParameterGroup"


def _ingress(plan: Plan, region: str, group_ids: list[str]) -> str:
    """What a store's security groups admit, in words: `TCP 6379 from the cluster security group`."""
    cluster = next((str((c.outputs.get("vpcConfig") or {}).get("clusterSecurityGroupId"))
                    for c in plan.of_type(EKS_CLUSTER) if c.region == region), "")
    rules = []
    for rule in plan.of_type(INGRESS_RULE):
        i = rule.inputs
        if rule.region != region or str(i.get("securityGroupId")) not in group_ids:
            continue
        source = i.get("referencedSecurityGroupId") or i.get("cidrIpv4") or i.get("cidrIpv6") or i.get("prefixListId")
        who = "the cluster security group" if str(source) == cluster else str(source)
        low, high = int(i.get("fromPort") or 0), int(i.get("toPort") or 0)
        rules.append(f"{str(i.get('ipProtocol')).upper()} {low}{'' if low == high else f'-{high}'} from {who}")
    return "; ".join(rules) or "no ingress rule"


def _forces_tls(plan: Plan, db: PlannedResource) -> bool:
    """The instance's parameter group sets rds.force_ssl=1 (by its name; absent under the mock engine, which does
    not autoname, the group of the instance's own name in its region)."""
    ref = db.inputs.get("parameterGroupName")
    group = next((g for g in plan.of_type(PARAMETER_GROUP) if g.region == db.region and (
        str(ref) in (str(g.inputs.get("name")), str(g.outputs.get("name")), str(g.outputs.get("id"))) if ref
        else g.name == db.name)), None)
    return group is not None and any(str(p.get("name")) == "rds.force_ssl" and str(p.get("value")) == "1"
                                     for p in group.inputs.get("parameters") or [])


def gateway_stores(plan: Plan, region: str, cost: CostEstimate) -> list[dict[str, Any]]:
    """The region's gateway stores as the plan shows them: engine, size, Multi-AZ, secrets, network rule, cost."""
    costs = {(c.region, c.name): c for c in cost.stores}
    secrets = {str(s.inputs.get("name")) for s in plan.of_type(SECRET) if s.region == region}
    out: list[dict[str, Any]] = []
    for r in plan.resources:
        if r.region != region or r.type not in (REPLICATION_GROUP, DB_INSTANCE):
            continue
        i, priced = r.inputs, costs.get((r.region, r.name))
        item: dict[str, Any] = {"name": r.name, "engine": f"{i.get('engine')} {i.get('engineVersion') or ''}".strip(),
                      "monthly_usd_min": round(priced.monthly_usd_min, 2) if priced else None,
                      "monthly_usd_max": round(priced.monthly_usd_max, 2) if priced else None}
        if r.type == REPLICATION_GROUP:
            url = next((n for n in secrets if n.endswith("/gateway/redis-url")), None)
            item.update(kind="redis", size=i.get("nodeType"), nodes=priced.nodes if priced else None,
                        multi_az=bool(i.get("multiAzEnabled")),
                        encryption=("TLS" if i.get("transitEncryptionEnabled") else "no TLS") + ", "
                        + ("encrypted at rest" if i.get("atRestEncryptionEnabled") else "not encrypted at rest"),
                        credentials=f"AUTH token, URL in secret {url}" if i.get("authToken") and url
                        else "AUTH token" if i.get("authToken") else "no AUTH token",
                        ingress=_ingress(plan, region, [str(g) for g in i.get("securityGroupIds") or []]))
        else:
            managed = [str(m.get("secretArn")) for m in r.outputs.get("masterUserSecrets") or [] if m.get("secretArn")]
            storage = priced.storage_gib if priced else (int(i.get("allocatedStorage") or 0),) * 2
            item.update(kind="ledger", size=i.get("instanceClass"), nodes=2 if i.get("multiAz") else 1,
                        multi_az=bool(i.get("multiAz")),
                        storage=f"{storage[0]}–{storage[1]} GiB {i.get('storageType') or 'gp2'}",
                        encryption=("storage encrypted" if i.get("storageEncrypted") else "storage not encrypted")
                        + (", TLS required (rds.force_ssl=1)" if _forces_tls(plan, r) else ", TLS not required"),
                        credentials=(f"password managed and rotated by RDS, in {managed[0].rsplit(':', 1)[-1]}"
                                     if managed else "password not managed by RDS"),
                        backups=f"{int(i.get('backupRetentionPeriod') or 0)} days"
                        + (", deletion protection, final snapshot" if i.get("deletionProtection") else ""),
                        ingress=_ingress(plan, region, [str(g) for g in i.get("vpcSecurityGroupIds") or []]))
        out.append(item)
    return sorted(out, key=lambda item: item["kind"], reverse=True)  # Redis first, then the ledger


def store_line(store: dict[str, Any]) -> str:
    """One store in one line, for the table and the PR comment."""
    size = (f"{store['nodes']} × {store['size']}" if store["kind"] == "redis"
            else f"{store['size']}, {store['storage']}")
    cost = (f"${store['monthly_usd_min']:,.0f}" + ("" if store["monthly_usd_min"] == store["monthly_usd_max"]
                                                   else f"–${store['monthly_usd_max']:,.0f}") + "/month"
            if store["monthly_usd_min"] is not None else "not priced")
    extra = f"; backups {store['backups']}" if store.get("backups") else ""
    return (f"{'Redis' if store['kind'] == 'redis' else 'ledger'} {store['engine']}, {size}"
            f"{', Multi-AZ' if store['multi_az'] else ', single-AZ'}; {store['encryption']}; {store['credentials']}"
            f"{extra}; ingress {store['ingress']}; {cost}")
