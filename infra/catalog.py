"""The world facts snapshot (catalog.yaml): EC2 offerings per region and zone, instance specs, prices, quotas, EKS
versions."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import yaml

HOURS_PER_MONTH = 730
CATALOG_FILE = Path(__file__).with_name("catalog.yaml")

# Node allocatable on the EKS AL2023 AMI, as nodeadm configures the kubelet
# (awslabs/amazon-eks-ami nodeadm/internal/kubelet/config.go, withDefaultReservedResources and
# defaultKubeletSubConfig):
#   allocatable = capacity - kube-reserved - system-reserved - eviction threshold
#   kube-reserved memory = 11 MiB x max pods + 255 MiB          (getMemoryMebibytesToReserve)
#   kube-reserved cpu    = 6% of the first core, 1% of the second, 0.5% of the third and fourth,
#                          0.25% of every core above four        (getCPUMillicoresToReserve)
#   system-reserved      = none (nodeadm sets only the cgroup, no amounts)
#   eviction threshold   = memory.available < 100Mi             (evictionHard)
EVICTION_MEMORY_MIB = 100
SYSTEM_RESERVED_MIB = 0
CPU_RESERVE_STEPS = ((1000, 600), (2000, 100), (4000, 50))  # (up to millicores, reserve in 1/10000)
CPU_RESERVE_ABOVE = 25


def kube_reserved_cpu_millicores(vcpus: int) -> int:
    total, reserved, start = vcpus * 1000, 0, 0
    for end, rate in CPU_RESERVE_STEPS:
        reserved += max(0, min(total, end) - start) * rate // 10000
        start = end
    return reserved + max(0, total - start) * CPU_RESERVE_ABOVE // 10000


def kube_reserved_memory_mib(max_pods: int) -> int:
    return 11 * max_pods + 255


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpu: str | None
    gpus: int
    gpu_memory_gib: int
    vcpus: int
    memory_gib: int
    local_nvme_gb: int
    max_pods: int
    on_demand_usd_h: float  # us-east-1 list price

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def allocatable_cpu_millicores(self) -> int:
        return self.vcpus * 1000 - kube_reserved_cpu_millicores(self.vcpus)

    @property
    def allocatable_memory_mib(self) -> int:
        return (self.memory_gib * 1024 - kube_reserved_memory_mib(self.max_pods) - SYSTEM_RESERVED_MIB
                - EVICTION_MEMORY_MIB)


@dataclass(frozen=True)
class Family:
    name: str
    quota: str  # "P" | "G" | "Standard": which vCPU quota its instances count against
    offered: dict[str, list[str]]  # region -> zone IDs
    prices: dict[str, tuple[float, float]]  # region -> (on-demand factor vs us-east-1, spot fraction)


@dataclass(frozen=True)
class Quota:
    code: str
    name: str


@dataclass(frozen=True)
class VersionSupport:
    version: str
    standard_until: date
    extended_until: date


@dataclass(frozen=True)
class StorePrices:
    """us-east-1 list prices of the gateway's state stores (catalog.yaml `data_stores`), dated."""
    as_of: str = ""
    cache_node_usd_h: dict[str, dict[str, float]] = field(default_factory=dict)  # engine -> node type -> USD/h
    db_instance_usd_h: dict[str, dict[str, float]] = field(default_factory=dict)  # engine -> class -> USD/h
    db_storage_usd_gib_month: dict[str, float] = field(default_factory=dict)  # storage type -> USD per GiB-month
    cache_node_memory_gib: dict[str, float] = field(default_factory=dict)  # ElastiCache node type -> memory GiB
    # S3 Standard: USD per GB-month, per 1,000 PUT/COPY/POST/LIST and per 1,000 GET requests (the batch buckets)
    s3_standard_usd_gb_month: float = 0.0
    s3_put_usd_per_1000: float = 0.0
    s3_get_usd_per_1000: float = 0.0


@dataclass(frozen=True)
class Catalog:
    as_of: str
    sources: dict[str, str]
    regions: dict[str, list[str]]  # region -> zone IDs
    families: dict[str, Family]
    instances: dict[str, InstanceType]
    fixed_hourly: dict[str, float]
    quotas: dict[str, dict[str, Quota]]  # "on-demand" | "spot" -> quota class -> quota
    kubernetes_versions: dict[str, VersionSupport]
    commercial_regions: dict[str, str] = field(default_factory=dict)  # every region of partition `aws` -> its name
    stores: StorePrices = field(default_factory=StorePrices)

    def instance(self, name: str) -> InstanceType:
        return self.instances[name]

    def knows_region(self, region: str) -> bool:
        """The catalog has GPU facts (zones, offerings, prices) for the region."""
        return region in self.regions

    def region_problem(self, region: str) -> str | None:
        """Why a region cannot run GPU pools here: not a commercial AWS region at all (with the closest names), or
        a real one the snapshot has no GPU facts for. None when the catalog knows it."""
        if self.knows_region(region):
            return None
        if region in self.commercial_regions:
            return (f"{region} ({self.commercial_regions[region]}) is an AWS region, but infra/catalog.yaml (as of "
                    f"{self.as_of}) has no GPU facts for it (zones, instance offerings, prices); regions with facts: "
                    f"{', '.join(sorted(self.regions))}. Add it with `llmp catalog refresh --region {region}` plus a "
                    f"--region for each region to keep (needs AWS credentials)")
        close = difflib.get_close_matches(region, list(self.commercial_regions), n=3, cutoff=0.75)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"unknown AWS region {region!r} (not one of the commercial regions in infra/catalog.yaml{hint})"

    def family_of(self, instance_type: str) -> Family | None:
        return self.families.get(instance_type.split(".", 1)[0])

    def zones_offering(self, instance_type: str, region: str) -> list[str]:
        """Zone IDs of `region` that offer the type (empty: not offered, or no facts about it)."""
        family = self.family_of(instance_type)
        return list(family.offered.get(region, [])) if family else []

    def regions_offering(self, instance_type: str) -> list[str]:
        family = self.family_of(instance_type)
        return sorted(family.offered) if family else []

    def prices_known(self, instance_type: str, region: str) -> bool:
        family = self.family_of(instance_type)
        return instance_type in self.instances and family is not None and region in family.prices

    def hourly_usd(self, instance_type: str, region: str, spot: bool) -> float:
        itype = self.instances[instance_type]
        factor, spot_fraction = self.families[itype.family].prices[region]
        price = itype.on_demand_usd_h * factor
        return price * spot_fraction if spot else price

    def region_price_factor(self, region: str) -> float:
        # VPC and NAT prices follow the region's general price level: the general-purpose family's.
        return self.families["m7i"].prices[region][0]

    def fixed_monthly_usd(self, item: str, region: str, count: int = 1) -> float:
        # EKS charges one price in every region; NAT gateways follow the region's prices.
        factor = 1.0 if item == "eks_control_plane" else self.region_price_factor(region)
        return self.fixed_hourly[item] * factor * HOURS_PER_MONTH * count


    def cache_node_monthly_usd(self, engine: str, node_type: str, region: str) -> float | None:
        """One ElastiCache node for a month in `region`; None if the catalog does not price it."""
        price = self.stores.cache_node_usd_h.get(engine, {}).get(node_type)
        return None if price is None else price * self.region_price_factor(region) * HOURS_PER_MONTH

    def db_instance_monthly_usd(self, engine: str, instance_class: str, region: str) -> float | None:
        """One Single-AZ RDS instance for a month in `region` (a Multi-AZ one bills two); None if unpriced."""
        price = self.stores.db_instance_usd_h.get(engine, {}).get(instance_class)
        return None if price is None else price * self.region_price_factor(region) * HOURS_PER_MONTH

    def db_storage_monthly_usd(self, storage_type: str, gib: int, region: str) -> float | None:
        """`gib` of Single-AZ RDS storage for a month in `region`; None if the storage type is unpriced."""
        price = self.stores.db_storage_usd_gib_month.get(storage_type)
        return None if price is None else price * gib * self.region_price_factor(region)


def _store_prices(raw: dict[str, Any] | None) -> StorePrices:
    raw = raw or {}
    return StorePrices(
        as_of=str(raw.get("as_of") or ""),
        cache_node_usd_h={e: {t: float(p) for t, p in types.items()}
                          for e, types in (raw.get("cache_node_usd_h") or {}).items()},
        db_instance_usd_h={e: {c: float(p) for c, p in classes.items()}
                           for e, classes in (raw.get("db_instance_usd_h") or {}).items()},
        db_storage_usd_gib_month={t: float(p) for t, p in (raw.get("db_storage_usd_gib_month") or {}).items()},
        cache_node_memory_gib={t: float(g) for t, g in (raw.get("cache_node_memory_gib") or {}).items()},
        s3_standard_usd_gb_month=float((raw.get("s3") or {}).get("standard_usd_gb_month", 0.0)),
        s3_put_usd_per_1000=float((raw.get("s3") or {}).get("put_usd_per_1000", 0.0)),
        s3_get_usd_per_1000=float((raw.get("s3") or {}).get("get_usd_per_1000", 0.0)))


def parse_catalog(raw: dict[str, Any]) -> Catalog:
    instances = {
        name: InstanceType(name, gpu, gpus, gmem, vcpus, ram, nvme, pods, price)
        for name, (gpu, gpus, gmem, vcpus, ram, nvme, pods, price) in raw["instances"].items()
    }
    families = {
        name: Family(name, f["quota"], {r: list(z) for r, z in f["offered"].items()},
                     {r: (float(p[0]), float(p[1])) for r, p in f["prices"].items()})
        for name, f in raw["families"].items()
    }
    quotas = {kind: {cls: Quota(q["code"], q["name"]) for cls, q in by_class.items()}
              for kind, by_class in raw["quotas"].items()}
    versions = {
        str(v): VersionSupport(str(v), date.fromisoformat(str(d["standard_until"])),
                               date.fromisoformat(str(d["extended_until"])))
        for v, d in raw["kubernetes_versions"].items()
    }
    return Catalog(as_of=str(raw["as_of"]), sources=dict(raw.get("sources") or {}),
                   regions={r: list(z) for r, z in raw["regions"].items()}, families=families,
                   instances=instances, fixed_hourly=raw["fixed_hourly"], quotas=quotas,
                   kubernetes_versions=versions,
                   commercial_regions={str(r): str(n) for r, n in (raw.get("commercial_regions") or {}).items()},
                   stores=_store_prices(raw.get("data_stores")))


@cache
def load_catalog(path: Path = CATALOG_FILE) -> Catalog:
    return parse_catalog(yaml.safe_load(path.read_text()))
