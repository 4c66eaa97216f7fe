"""The EC2 vCPU quotas a plan needs per region at maximum scale, so an operator can request them before `up`.

EC2 limits running instances by vCPUs per quota class (P, G and VT, Standard), separately for On-Demand and
Spot (https://docs.aws.amazon.com/ec2/latest/instancetypes/ec2-instance-quotas.html). Instances in an On-Demand
Capacity Reservation count against the On-Demand quota: creating the reservation already fails when "the
requested quantity exceeds your On-Demand Instance limit" (capacity-reservations-create.html). For Capacity
Blocks the EC2 guide states no such rule; they are counted under On-Demand too, so the request errs high.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from infra.catalog import Catalog, load_catalog
from infra.plan.cost import recorded_pools
from infra.plan.mocks import PlannedResource


@dataclass
class QuotaNeed:
    region: str
    market: str  # "on-demand" | "spot"
    quota_class: str  # "P" | "G" | "Standard"
    code: str
    name: str
    vcpus: int = 0
    node_groups: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"region": self.region, "market": self.market, "quota": self.name, "code": self.code,
                "vcpus_at_max_scale": self.vcpus, "node_groups": list(self.node_groups)}


def quota_needs(resources: list[PlannedResource], catalog: Catalog | None = None) -> list[QuotaNeed]:
    """vCPUs per (region, market, quota class) at max scale: a node group at max size on its largest instance type,
    a Karpenter NodePool at its CPU limit (Karpenter launches nothing past it, whatever the mix of types)."""
    catalog = catalog or load_catalog()
    needs: dict[tuple[str, str, str], QuotaNeed] = {}
    for pool in recorded_pools(resources, catalog):
        types = [t for t in pool.instance_types if t in catalog.instances]
        if not types:
            continue
        market = "spot" if pool.spot else "on-demand"
        largest = max(types, key=lambda t: catalog.instance(t).vcpus)
        family = catalog.family_of(largest)
        if family is None:
            continue
        quota = catalog.quotas[market][family.quota]
        need = needs.setdefault((pool.region, market, family.quota),
                                QuotaNeed(pool.region, market, family.quota, quota.code, quota.name))
        if pool.kind == "karpenter" and "cpu" in pool.limits:
            need.vcpus += pool.limits["cpu"]
        else:
            need.vcpus += catalog.instance(largest).vcpus * (pool.max_nodes or 0)
        need.node_groups.append(pool.resource.name)
    return sorted(needs.values(), key=lambda n: (n.region, n.market, n.quota_class))
