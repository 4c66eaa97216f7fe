"""Monthly cost estimate of a plan at minimum and maximum scale, from the resources it creates and the catalog."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infra.catalog import HOURS_PER_MONTH, Catalog, load_catalog

if TYPE_CHECKING:  # the policy rules import this module
    from infra.policy.rules.base import Resource

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
NAT_GATEWAY = "aws:ec2/natGateway:NatGateway"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


def prometheus_volume_gib(resource: Resource) -> int:
    """The gp3 volume a kube-prometheus-stack release's Prometheus claims (infra/components/monitoring.py), in GiB;
    0 for any other resource. The EBS CSI driver creates it, so no recorded AWS resource stands for it."""
    if resource.type != HELM_RELEASE or resource.inputs.get("chart") != "kube-prometheus-stack":
        return 0
    spec = ((resource.inputs.get("values") or {}).get("prometheus") or {}).get("prometheusSpec") or {}
    claim = ((spec.get("storageSpec") or {}).get("volumeClaimTemplate") or {}).get("spec") or {}
    size = str(((claim.get("resources") or {}).get("requests") or {}).get("storage") or "0Gi")
    replicas = int(spec.get("replicas") or 1)
    return int(size.removesuffix("Gi")) * replicas if size.endswith("Gi") else 0


@dataclass(frozen=True)
class PoolCost:
    """One node group's monthly cost range. At min scale the cheapest instance type is assumed,
    at max scale the dearest, so the range brackets any mix the autoscaler picks."""
    region: str
    node_group: str
    pool: str
    capacity: str
    instance_types: tuple[str, ...]
    min_nodes: int
    max_nodes: int
    monthly_usd_min: float
    monthly_usd_max: float
    gpus_max: int


@dataclass
class CostEstimate:
    pools: list[PoolCost]
    fixed_monthly_usd: dict[str, float]  # per region: control planes, NAT gateways, Prometheus' volume
    budget_usd: float
    catalog_as_of: str
    regions: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def monthly_usd_min(self) -> float:
        return sum(p.monthly_usd_min for p in self.pools) + sum(self.fixed_monthly_usd.values())

    @property
    def monthly_usd_max(self) -> float:
        return sum(p.monthly_usd_max for p in self.pools) + sum(self.fixed_monthly_usd.values())

    def as_json(self) -> dict:
        return {
            "monthly_usd_min": round(self.monthly_usd_min, 2),
            "monthly_usd_max": round(self.monthly_usd_max, 2),
            "budget_usd": self.budget_usd,
            "catalog_as_of": self.catalog_as_of,
            "by_region": {region: {k: round(v, 2) for k, v in costs.items()}
                          for region, costs in self.regions.items()},
            "pools": [{"region": p.region, "pool": p.pool, "capacity": p.capacity,
                       "instance_types": list(p.instance_types), "min_nodes": p.min_nodes,
                       "max_nodes": p.max_nodes, "monthly_usd_min": round(p.monthly_usd_min, 2),
                       "monthly_usd_max": round(p.monthly_usd_max, 2)} for p in self.pools],
        }


RESERVED_TYPE_LABEL = "llm-platform/instance-type"  # infra.components.node_pool.INSTANCE_TYPE_LABEL
CAPACITY = {"SPOT": "spot", "CAPACITY_BLOCK": "reserved"}


def node_group_types(inputs: Mapping[str, Any]) -> tuple[str, ...]:
    """A node group's instance types; a Capacity Block group names its one type in a label (and its template)."""
    types = inputs.get("instanceTypes") or [(inputs.get("labels") or {}).get(RESERVED_TYPE_LABEL)]
    return tuple(t for t in types if t)


def pool_cost(resource: Resource, catalog: Catalog) -> PoolCost:
    """Reserved pools are priced at the catalog's on-demand rate: an ODCR bills the on-demand price whether or
    not instances run in it, and a Capacity Block is paid up front at a price quoted when it is bought
    (describe-capacity-block-offerings UpfrontFee), which the catalog does not know. Budget for the up-front fee."""
    inputs = resource.inputs
    spot = inputs.get("capacityType") == "SPOT"
    types = node_group_types(inputs)
    # The engine hands numbers over as floats.
    lo, hi = int(inputs["scalingConfig"]["minSize"]), int(inputs["scalingConfig"]["maxSize"])
    prices = [catalog.hourly_usd(t, resource.region, spot) for t in types]
    gpus = max(catalog.instance(t).gpus for t in types)
    return PoolCost(
        region=resource.region, node_group=resource.name,
        pool=(inputs.get("labels") or {}).get("llm-platform/pool", resource.name),
        capacity=(inputs.get("labels") or {}).get("llm-platform/capacity")
        or CAPACITY.get(str(inputs.get("capacityType")), "on-demand"), instance_types=types,
        min_nodes=lo, max_nodes=hi,
        monthly_usd_min=min(prices) * lo * HOURS_PER_MONTH,
        monthly_usd_max=max(prices) * hi * HOURS_PER_MONTH,
        gpus_max=gpus * hi)


def estimate(resources: Sequence[Resource], budget_usd: float, catalog: Catalog | None = None) -> CostEstimate:
    catalog = catalog or load_catalog()
    pools = [pool_cost(r, catalog) for r in resources if r.type == NODE_GROUP]
    fixed: dict[str, float] = {}
    for r in resources:
        item = {EKS_CLUSTER: "eks_control_plane", NAT_GATEWAY: "nat_gateway"}.get(r.type)
        if item:
            fixed[r.region] = fixed.get(r.region, 0.0) + catalog.fixed_monthly_usd(item, r.region)
        if gib := prometheus_volume_gib(r):
            fixed[r.region] = fixed.get(r.region, 0.0) + catalog.fixed_monthly_usd("ebs_gp3_gib", r.region, gib)
    result = CostEstimate(pools=pools, fixed_monthly_usd=fixed, budget_usd=budget_usd, catalog_as_of=catalog.as_of)
    for p in pools:
        region = result.regions.setdefault(p.region, {"monthly_usd_min": 0.0, "monthly_usd_max": 0.0})
        region["monthly_usd_min"] += p.monthly_usd_min
        region["monthly_usd_max"] += p.monthly_usd_max
    for region_name, amount in fixed.items():
        region = result.regions.setdefault(region_name, {"monthly_usd_min": 0.0, "monthly_usd_max": 0.0})
        region["monthly_usd_min"] += amount
        region["monthly_usd_max"] += amount
    return result
