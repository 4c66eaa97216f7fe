"""EC2 instance facts (GPUs, memory) and hourly prices per region, read from the dated catalog.yaml."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

HOURS_PER_MONTH = 730
CATALOG_FILE = Path(__file__).with_name("catalog.yaml")


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpu: str | None
    gpus: int
    gpu_memory_gib: int
    vcpus: int
    memory_gib: int
    on_demand_usd_h: float  # us-east-1 list price

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]


@dataclass(frozen=True)
class Catalog:
    as_of: str
    instances: dict[str, InstanceType]
    region_factor: dict[str, float]
    spot_fraction: dict[str, float]
    fixed_hourly: dict[str, float]

    def instance(self, name: str) -> InstanceType:
        return self.instances[name]

    def knows_region(self, region: str) -> bool:
        return region in self.region_factor

    def hourly_usd(self, instance_type: str, region: str, spot: bool) -> float:
        itype = self.instances[instance_type]
        price = itype.on_demand_usd_h * self.region_factor[region]
        return price * self.spot_fraction[itype.family] if spot else price

    def fixed_monthly_usd(self, item: str, region: str, count: int = 1) -> float:
        # EKS charges one price in every region; NAT gateways follow the region's prices.
        factor = 1.0 if item == "eks_control_plane" else self.region_factor[region]
        return self.fixed_hourly[item] * factor * HOURS_PER_MONTH * count


@cache
def load_catalog(path: Path = CATALOG_FILE) -> Catalog:
    raw = yaml.safe_load(path.read_text())
    instances = {
        name: InstanceType(name, gpu, gpus, mem, vcpus, ram, price)
        for name, (gpu, gpus, mem, vcpus, ram, price) in raw["instances"].items()
    }
    return Catalog(
        as_of=str(raw["as_of"]),
        instances=instances,
        region_factor=raw["regions"],
        spot_fraction=raw["families"],
        fixed_hourly=raw["fixed_hourly"],
    )
