"""Monthly cost estimate of a plan at minimum and maximum scale, from the resources it creates and the catalog."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
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


def gateway_spool_gib(resource: Resource) -> int:
    """The gp3 volumes a gateway release's pods claim for their spend spool (charts/gateway `spool.size`, 1Gi unless
    set), in GiB: one per replica the release may ever run, since a scale-down keeps its volumes (whenScaled
    Retain). 0 for any other resource."""
    chart = str(resource.inputs.get("chart") or "")
    if resource.type != HELM_RELEASE or chart.rstrip("/").rsplit("/", 1)[-1] != "gateway":
        return 0
    values = resource.inputs.get("values") or {}
    size = str((values.get("spool") or {}).get("size") or "1Gi")
    scaling = values.get("autoscaling") or {}
    replicas = int(values.get("replicaCount") or 1)
    if scaling.get("enabled", True):
        replicas = max(replicas, int(scaling.get("maxReplicas") or replicas))
    return int(size.removesuffix("Gi")) * replicas if size.endswith("Gi") else 0


@dataclass(frozen=True)
class PoolCost:
    """One pool's monthly cost range (`pool_cost`): at min scale the cheapest instance type is assumed, at max
    scale the dearest the pool's bounds allow, so the range brackets any mix the autoscaler picks."""
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


REPLICATION_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
DB_INSTANCE = "aws:rds/instance:Instance"
BUCKET = "aws:s3/bucket:Bucket"
# A batch file bucket (infra/components/batch_files.py): named llmp-<stack>-batch-<zone>-..., and tagged with the
# storage the budget reserves for it (S3 has no size cap of its own).
BATCH_BUCKET_PREFIX = re.compile(r"^llmp-.+-batch-")
TAG_BUDGET_GIB = "llm-platform:budget-gib"
# Requests priced per batch bucket and month, PUTs and GETs each: a million, far above what the reserved storage
# holds in files of OpenAI's sizes (a batch is one input, one output and one error file).
BATCH_REQUESTS_PER_MONTH = 1_000_000
GIB_IN_GB = 1.073741824  # S3 prices per GB (10^9 bytes)


@dataclass(frozen=True)
class StoreCost:
    """One of the gateway's state stores for a month: an ElastiCache replication group (its node-hours times its
    nodes) or an RDS instance (its instance-hours and storage, both twice when Multi-AZ: a standby bills like the
    primary). The range is the storage's: allocated at min scale, the autoscaling ceiling (maxAllocatedStorage)
    at max."""
    region: str
    name: str
    kind: str  # "redis" | "ledger"
    engine: str
    size: str  # node type or instance class
    nodes: int  # cache nodes; for a ledger 2 when Multi-AZ, else 1
    multi_az: bool
    storage_gib: tuple[int, int]  # (allocated, ceiling); (0, 0) for Redis
    monthly_usd_min: float
    monthly_usd_max: float

    def as_json(self) -> dict[str, Any]:
        return {"region": self.region, "name": self.name, "kind": self.kind, "engine": self.engine,
                "size": self.size, "nodes": self.nodes, "multi_az": self.multi_az,
                "storage_gib": list(self.storage_gib), "monthly_usd_min": round(self.monthly_usd_min, 2),
                "monthly_usd_max": round(self.monthly_usd_max, 2)}


def _num(value: Any, default: int = 0) -> int:
    return default if value is None else int(value)


def store_cost(store: Resource, catalog: Catalog) -> StoreCost | str:
    """A store's monthly cost, or why the catalog cannot price it."""
    i = store.inputs
    if store.type == REPLICATION_GROUP:
        engine, size = str(i.get("engine") or "redis"), str(i.get("nodeType"))
        nodes = _num(i.get("numCacheClusters")) or _num(i.get("numNodeGroups"), 1) * (
            _num(i.get("replicasPerNodeGroup")) + 1)
        node = catalog.cache_node_monthly_usd(engine, size, store.region)
        if node is None:
            return f"ElastiCache node type {size} ({engine})"
        multi_az = bool(i.get("multiAzEnabled")) and nodes > 1
        return StoreCost(store.region, store.name, "redis", engine, size, nodes, multi_az, (0, 0),
                         node * nodes, node * nodes)
    if store.type == BUCKET:
        return _bucket_cost(store, catalog)
    engine, size = str(i.get("engine") or ""), str(i.get("instanceClass"))
    storage = str(i.get("storageType") or "gp2")  # RDS's default when none is named
    multi_az = bool(i.get("multiAz"))
    copies = 2 if multi_az else 1
    allocated = _num(i.get("allocatedStorage"))
    ceiling = max(allocated, _num(i.get("maxAllocatedStorage")))
    instance = catalog.db_instance_monthly_usd(engine, size, store.region)
    low, high = (catalog.db_storage_monthly_usd(storage, gib, store.region) for gib in (allocated, ceiling))
    if instance is None:
        return f"RDS instance class {size} ({engine})"
    if low is None or high is None:
        return f"RDS storage type {storage}"
    return StoreCost(store.region, store.name, "ledger", engine, size, copies, multi_az, (allocated, ceiling),
                     (instance + low) * copies, (instance + high) * copies)


def is_batch_bucket(resource: Resource) -> bool:
    if resource.type != BUCKET:
        return False
    name = str(resource.outputs.get("bucket") or resource.inputs.get("bucketPrefix") or "")
    return bool(BATCH_BUCKET_PREFIX.match(name))


def _bucket_cost(bucket: Resource, catalog: Catalog) -> StoreCost | str:
    """A batch bucket at min scale empty, at max scale holding its reserved storage (its budget tag) and serving
    BATCH_REQUESTS_PER_MONTH PUTs and GETs; S3 list prices scaled by the region's level like the other stores."""
    tags = bucket.inputs.get("tags") or {}
    try:
        gib = float(str(tags.get(TAG_BUDGET_GIB)))
    except ValueError:
        return f"the storage batch bucket {bucket.outputs.get('bucket')} reserves (tag {TAG_BUDGET_GIB})"
    s = catalog.stores
    if not s.s3_standard_usd_gb_month:
        return "S3 Standard storage price (data_stores.s3)"
    factor = catalog.region_price_factor(bucket.region)
    storage = gib * GIB_IN_GB * s.s3_standard_usd_gb_month * factor
    requests = BATCH_REQUESTS_PER_MONTH / 1000 * (s.s3_put_usd_per_1000 + s.s3_get_usd_per_1000) * factor
    return StoreCost(bucket.region, bucket.name, "batch-files", "s3", "STANDARD", 0, False, (0, int(gib)),
                     0.0, storage + requests)


def store_costs(resources: Sequence[Resource], catalog: Catalog | None = None) -> tuple[list[StoreCost], list[str]]:
    """Every gateway store's monthly cost, and the ones the catalog cannot price (named, with what is missing)."""
    catalog = catalog or load_catalog()
    priced: list[StoreCost] = []
    unpriced: list[str] = []
    for store in resources:
        if store.type in (REPLICATION_GROUP, DB_INSTANCE) or is_batch_bucket(store):
            cost = store_cost(store, catalog)
            if isinstance(cost, str):
                unpriced.append(f"{store.name} in {store.region}: {cost} is not in infra/catalog.yaml")
            else:
                priced.append(cost)
    return priced, unpriced


@dataclass
class CostEstimate:
    pools: list[PoolCost]
    fixed_monthly_usd: dict[str, float]  # per region: control planes, NAT gateways, Prometheus' volume
    budget_usd: float
    catalog_as_of: str
    regions: dict[str, dict[str, float]] = field(default_factory=dict)
    stores: list[StoreCost] = field(default_factory=list)  # the gateway's Redis and ledger, per region

    @property
    def monthly_usd_min(self) -> float:
        return (sum(p.monthly_usd_min for p in self.pools) + sum(self.fixed_monthly_usd.values())
                + sum(s.monthly_usd_min for s in self.stores))

    @property
    def monthly_usd_max(self) -> float:
        return (sum(p.monthly_usd_max for p in self.pools) + sum(self.fixed_monthly_usd.values())
                + sum(s.monthly_usd_max for s in self.stores))

    def as_json(self) -> dict[str, Any]:
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
            "stores": [st.as_json() for st in self.stores],
        }


RESERVED_TYPE_LABEL = "llm-platform/instance-type"  # infra.components.node_pool.INSTANCE_TYPE_LABEL
CAPACITY = {"SPOT": "spot", "CAPACITY_BLOCK": "reserved"}
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
EC2_NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
MIN_NODES_ANNOTATION = "llm-platform/min-nodes"  # infra.components.node_pool.MIN_NODES_ANNOTATION
KARPENTER_INSTANCE_TYPE = "node.kubernetes.io/instance-type"
KARPENTER_CAPACITY_TYPE = "karpenter.sh/capacity-type"
GPU = "nvidia.com/gpu"
EKS_TAINT_EFFECT = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}


def node_group_types(inputs: Mapping[str, Any]) -> tuple[str, ...]:
    """A node group's instance types; a Capacity Block group names its type in a label (and its template)."""
    types = inputs.get("instanceTypes") or [(inputs.get("labels") or {}).get(RESERVED_TYPE_LABEL)]
    return tuple(t for t in types if t)


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]


def _quantity(value: Any) -> int | None:
    """A NodePool limit: a plain count of GPUs or cores ("16", 384, "384000m")."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return int(text[:-1]) // 1000 if text.endswith("m") else int(float(text))
    except ValueError:
        return None


@dataclass(frozen=True)
class RecordedPool:
    """One pool of nodes as the program records it: an EKS managed node group, or a Karpenter NodePool (with the
    EC2NodeClass it references). Every pool rule and the cost and quota estimates read pools through this."""
    resource: Resource
    kind: str  # "node-group" | "karpenter"
    region: str
    name: str  # the pool label, else the resource's name
    capacity: str  # "on-demand" | "spot" | "reserved"
    instance_types: tuple[str, ...]
    labels: dict[str, str]
    taints: tuple[tuple[str, str, str], ...]  # (key, value, effect as in a Pod spec)
    min_nodes: int
    # A node group's max size; a NodePool's: the most nodes of its smallest type its limits admit. None: unbounded.
    max_nodes: int | None
    limits: dict[str, int] = field(default_factory=dict)  # a NodePool's, in GPUs and cores
    node_class: Resource | None = None

    @property
    def spot(self) -> bool:
        return self.capacity == "spot"

    @property
    def reservation_ids(self) -> list[str]:
        """The capacity reservations a Karpenter pool launches into (its EC2NodeClass's selector terms)."""
        spec = (self.node_class.inputs.get("spec") or {}) if self.node_class is not None else {}
        return [str(t.get("id")) for t in _list(spec.get("capacityReservationSelectorTerms")) if t.get("id")]


def _node_group_pool(group: Resource) -> RecordedPool:
    inputs = group.inputs
    labels = {str(k): str(v) for k, v in (inputs.get("labels") or {}).items()}
    scaling = inputs.get("scalingConfig") or {}
    return RecordedPool(
        resource=group, kind="node-group", region=group.region, name=labels.get("llm-platform/pool", group.name),
        capacity=labels.get("llm-platform/capacity") or CAPACITY.get(str(inputs.get("capacityType")), "on-demand"),
        instance_types=node_group_types(inputs), labels=labels,
        taints=tuple((str(t.get("key")), str(t.get("value") or ""),
                      EKS_TAINT_EFFECT.get(str(t.get("effect")), str(t.get("effect"))))
                     for t in _list(inputs.get("taints"))),
        min_nodes=int(scaling.get("minSize") or 0),
        max_nodes=int(scaling["maxSize"]) if scaling.get("maxSize") is not None else None)


def _requirement(requirements: list[Any], key: str) -> tuple[str, ...]:
    return tuple(str(v) for r in requirements if r.get("key") == key and r.get("operator") == "In"
                 for v in _list(r.get("values")))


def _node_pool(pool: Resource, classes: dict[tuple[str, str], Resource], catalog: Catalog) -> RecordedPool:
    spec = pool.inputs.get("spec") or {}
    template = spec.get("template") or {}
    node_spec = template.get("spec") or {}
    requirements = _list(node_spec.get("requirements"))
    labels = {str(k): str(v) for k, v in ((template.get("metadata") or {}).get("labels") or {}).items()}
    metadata = pool.inputs.get("metadata") or {}
    name = str(metadata.get("name") or pool.name)
    capacities = _requirement(requirements, KARPENTER_CAPACITY_TYPE)
    capacity = ("spot" if "spot" in capacities else "reserved" if capacities == ("reserved",) else "on-demand")
    limits = {k: q for k, v in (spec.get("limits") or {}).items() if (q := _quantity(v)) is not None}
    types = _requirement(requirements, KARPENTER_INSTANCE_TYPE)
    known = [catalog.instance(t) for t in types if t in catalog.instances]
    smallest = min(known, key=lambda i: (i.gpus, i.vcpus), default=None)
    bounds = [limits[GPU] // smallest.gpus] if smallest and smallest.gpus and GPU in limits else []
    bounds += [limits["cpu"] // smallest.vcpus] if smallest and "cpu" in limits else []
    annotations = metadata.get("annotations") or {}
    node_class = classes.get((pool.region, str((node_spec.get("nodeClassRef") or {}).get("name"))))
    return RecordedPool(
        resource=pool, kind="karpenter", region=pool.region, name=labels.get("llm-platform/pool", name),
        capacity=capacity, instance_types=types, labels=labels,
        taints=tuple((str(t.get("key")), str(t.get("value") or ""), str(t.get("effect")))
                     for t in _list(node_spec.get("taints"))),
        min_nodes=int(annotations.get(MIN_NODES_ANNOTATION) or 0),
        max_nodes=min(bounds) if bounds else None, limits=limits, node_class=node_class)


def recorded_pools(resources: Iterable[Resource], catalog: Catalog | None = None) -> list[RecordedPool]:
    """Every pool of nodes the record holds, node groups first, then NodePools."""
    catalog = catalog or load_catalog()
    resources = list(resources)
    classes = {(r.region, str((r.inputs.get("metadata") or {}).get("name") or r.name)): r
               for r in resources if r.type == EC2_NODE_CLASS}
    return ([_node_group_pool(r) for r in resources if r.type == NODE_GROUP]
            + [_node_pool(r, classes, catalog) for r in resources if r.type == NODE_POOL])


def gpu_pools(resources: Iterable[Resource], catalog: Catalog | None = None) -> list[RecordedPool]:
    """The recorded pools with GPU instance types (the system node group is not one)."""
    catalog = catalog or load_catalog()
    return [p for p in recorded_pools(resources, catalog)
            if any(t in catalog.instances and catalog.instance(t).gpus > 0 for t in p.instance_types)]


def pool_cost(pool: RecordedPool, catalog: Catalog) -> PoolCost:
    """Min scale: min_nodes of the cheapest type. Max scale: a node group's max size of its dearest type; a
    NodePool at its limits, the real ceiling Karpenter launches to, bounded by the dearest price per GPU times the
    GPU limit and the dearest price per vCPU times the CPU limit, whichever is lower (exact for one type).

    Reserved pools are priced at the catalog's on-demand rate: an ODCR bills the on-demand price whether or not
    instances run in it (so a reserved pool costs its max at both ends: the reservation is sized to max_nodes),
    and a Capacity Block is paid up front at a price quoted when it is bought (describe-capacity-block-offerings
    UpfrontFee), which the catalog does not know. Budget for the up-front fee."""
    types = pool.instance_types
    prices = {t: catalog.hourly_usd(t, pool.region, pool.spot) for t in types}
    hi = pool.max_nodes or 0
    if pool.kind == "karpenter":
        bounds = []
        if GPU in pool.limits and all(catalog.instance(t).gpus for t in types):
            bounds.append(pool.limits[GPU] * max(prices[t] / catalog.instance(t).gpus for t in types))
        if "cpu" in pool.limits:
            bounds.append(pool.limits["cpu"] * max(prices[t] / catalog.instance(t).vcpus for t in types))
        hourly_max = min(bounds)
        gpus_max = pool.limits.get(GPU, max(catalog.instance(t).gpus for t in types) * hi)
    else:
        hourly_max = max(prices.values()) * hi
        gpus_max = max(catalog.instance(t).gpus for t in types) * hi
    hourly_min = hourly_max if pool.capacity == "reserved" else min(prices.values()) * pool.min_nodes
    return PoolCost(
        region=pool.region, node_group=pool.resource.name, pool=pool.name, capacity=pool.capacity,
        instance_types=types, min_nodes=pool.min_nodes, max_nodes=hi,
        monthly_usd_min=hourly_min * HOURS_PER_MONTH, monthly_usd_max=hourly_max * HOURS_PER_MONTH,
        gpus_max=gpus_max)


def estimate(resources: Sequence[Resource], budget_usd: float, catalog: Catalog | None = None) -> CostEstimate:
    catalog = catalog or load_catalog()
    pools = [pool_cost(p, catalog) for p in recorded_pools(resources, catalog)]
    fixed: dict[str, float] = {}
    for r in resources:
        item = {EKS_CLUSTER: "eks_control_plane", NAT_GATEWAY: "nat_gateway"}.get(r.type)
        if item:
            fixed[r.region] = fixed.get(r.region, 0.0) + catalog.fixed_monthly_usd(item, r.region)
        if gib := prometheus_volume_gib(r) + gateway_spool_gib(r):
            fixed[r.region] = fixed.get(r.region, 0.0) + catalog.fixed_monthly_usd("ebs_gp3_gib", r.region, gib)
    stores, _ = store_costs(resources, catalog)  # what cannot be priced fails budget-cap
    result = CostEstimate(pools=pools, fixed_monthly_usd=fixed, budget_usd=budget_usd, catalog_as_of=catalog.as_of,
                          stores=stores)
    ranges: list[PoolCost | StoreCost] = [*pools, *stores]
    for p in ranges:
        region = result.regions.setdefault(p.region, {"monthly_usd_min": 0.0, "monthly_usd_max": 0.0})
        region["monthly_usd_min"] += p.monthly_usd_min
        region["monthly_usd_max"] += p.monthly_usd_max
    for region_name, amount in fixed.items():
        region = result.regions.setdefault(region_name, {"monthly_usd_min": 0.0, "monthly_usd_max": 0.0})
        region["monthly_usd_min"] += amount
        region["monthly_usd_max"] += amount
    return result
