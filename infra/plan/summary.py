"""What a plan amounts to per region: pools, models and replica counts, read from the recorded resources."""
from __future__ import annotations

from dataclasses import dataclass, field

from infra.catalog import load_catalog
from infra.plan.cost import CostEstimate, recorded_pools
from infra.plan.run import Plan
from infra.scheduling import POOL_LABEL
from infra.sizing import replica_ranges

RELEASE = "kubernetes:helm.sh/v3:Release"


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
    pools: list[dict] = field(default_factory=list)
    models: list[ModelPlacement] = field(default_factory=list)
    monthly_usd_min: float = 0.0
    monthly_usd_max: float = 0.0

    def as_json(self) -> dict:
        return {"name": self.name, "residency": self.residency, "pools": self.pools,
                "models": [vars(m) for m in self.models],
                "monthly_usd_min": round(self.monthly_usd_min, 2), "monthly_usd_max": round(self.monthly_usd_max, 2)}


def model_placement(values: dict) -> ModelPlacement:
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
    for name, amounts in cost.regions.items():
        if name in regions:
            regions[name].monthly_usd_min = amounts["monthly_usd_min"]
            regions[name].monthly_usd_max = amounts["monthly_usd_max"]
    return list(regions.values())
