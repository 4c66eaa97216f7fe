"""The platform's shape as the recorded resources show it: zones, regions, pools, models, gateways, DNS names,
fallback chains and secret replication, for the topology picture.

Read from what the mock engine recorded, as the controls read it (infra/policy/rules/base.py), never from the
stack's config: the picture shows what `pulumi up` would create.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from infra.plan.cost import PoolCost
from infra.policy.rules.base import (
    DNS_RECORD,
    EKS_CLUSTER,
    GATEWAY_CHART_DIR,
    POOL_LABEL,
    SECRET,
    TAG_RESIDENCY,
    Resource,
    Resources,
    as_int,
    as_list,
)

# An NLB's DNS name is <name>.elb.<region>.amazonaws.com
# (https://docs.aws.amazon.com/elasticloadbalancing/latest/network/network-load-balancers.html#dns-name).
_ELB_REGION = re.compile(r"\.elb\.([a-z0-9-]+)\.amazonaws\.com\.?$")
ACM_VALIDATION = ".acm-validations.aws."


@dataclass(frozen=True)
class Pool:
    name: str
    capacity: str
    instance_types: tuple[str, ...]
    min_nodes: int
    max_nodes: int


@dataclass(frozen=True)
class Model:
    name: str
    pool: str
    min_replicas: int
    max_replicas: int


@dataclass
class Region:
    name: str
    zone: str
    pools: list[Pool] = field(default_factory=list)
    models: list[Model] = field(default_factory=list)
    # region it falls back to -> the aliases that do
    falls_back_to: dict[str, list[str]] = field(default_factory=dict)
    # hosted provider host -> the aliases that fall back to it
    hosted: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class DnsName:
    name: str
    routing: str  # "latency" (health-checked, drops a dead region) or "simple"
    regions: tuple[str, ...]


@dataclass(frozen=True)
class SecretReplication:
    zone: str
    primary: str
    replicas: tuple[str, ...]
    names: tuple[str, ...]


@dataclass
class Topology:
    stack: str
    zones: dict[str, list[Region]]
    dns: list[DnsName]
    secrets: list[SecretReplication]

    def regions(self) -> list[Region]:
        return [r for rs in self.zones.values() for r in rs]


def _record_regions(record: Resource) -> tuple[str, tuple[str, ...]]:
    """(routing, regions) a Route 53 record sends clients to: its latency policy's region, or the region of the
    load balancer it points at."""
    latency = [str(p.get("region")) for p in as_list(record.inputs.get("latencyRoutingPolicies")) if p.get("region")]
    if latency:
        return "latency", tuple(latency)
    targets = [m.group(1) for t in as_list(record.inputs.get("records")) if (m := _ELB_REGION.search(str(t)))]
    return "simple", tuple(targets)


def _dns(resources: Resources) -> list[DnsName]:
    names: dict[str, tuple[str, set[str]]] = {}
    for record in resources.of_type(DNS_RECORD):
        if any(str(t).endswith(ACM_VALIDATION) for t in as_list(record.inputs.get("records"))):
            continue  # certificate validation, not a name clients use
        routing, regions = _record_regions(record)
        name = str(record.inputs.get("name") or record.name).rstrip(".")
        known = names.setdefault(name, (routing, set()))
        names[name] = ("latency" if "latency" in (known[0], routing) else routing, known[1] | set(regions))
    # Broadest first: the global name, then zone names, then each region's own.
    return sorted((DnsName(n, routing, tuple(sorted(rs))) for n, (routing, rs) in names.items()),
                  key=lambda d: (-len(d.regions), d.name.count("."), d.name))


def _secrets(resources: Resources, zone_of: Mapping[str, str]) -> list[SecretReplication]:
    grouped: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    for secret in resources.of_type(SECRET):
        replicas = tuple(sorted(str(r.get("region")) for r in as_list(secret.inputs.get("replicas"))))
        name = str(secret.inputs.get("name") or secret.name)
        grouped.setdefault((zone_of.get(secret.region, "?"), secret.region, replicas), []).append(name)
    return [SecretReplication(z, p, rs, tuple(sorted(ns))) for (z, p, rs), ns in sorted(grouped.items())]


def _fallbacks(resources: Resources, regions: Mapping[str, Region]) -> None:
    """Each gateway's routing config: which aliases reach another region's gateway, which a hosted provider."""
    for gateway in resources.releases(GATEWAY_CHART_DIR):
        region = regions.get(gateway.region)
        if region is None:
            continue
        values: Mapping[str, Any] = gateway.inputs.get("values") or {}
        config = values.get("config") or {}
        for model in as_list(config.get("models")):
            alias = str(model.get("alias"))
            for dep in as_list(model.get("deployments")):
                host = urlparse(str(dep.get("api_base") or "")).hostname or ""
                if dep.get("tier") == "fallback":
                    region.hosted.setdefault(host or str(dep.get("name")), []).append(alias)
                elif dep.get("region") and dep.get("region") != region.name and host:
                    region.falls_back_to.setdefault(str(dep["region"]), []).append(alias)
        for aliases in (*region.hosted.values(), *region.falls_back_to.values()):
            aliases.sort()


def read_topology(stack: str, resources: Iterable[Resource], pools: Iterable[PoolCost]) -> Topology:
    """The topology of the recorded `resources`; `pools` are their node pools as the cost estimate read them
    (infra.plan.cost.recorded_pools: node groups and Karpenter NodePools alike)."""
    index = Resources(resources)
    regions = {c.region: Region(c.region, str(c.tags.get(TAG_RESIDENCY) or "?"))
               for c in index.of_type(EKS_CLUSTER)}
    for p in sorted(pools, key=lambda p: (p.region, p.pool)):
        if p.region in regions:
            regions[p.region].pools.append(Pool(p.pool, p.capacity, p.instance_types, p.min_nodes, p.max_nodes))
    for release, name in index.model_releases():
        values = release.inputs.get("values") or {}
        scaling = values.get("autoscaling") or {}
        count = as_int(values.get("replicaCount"), 1)
        low, high = count, count
        if scaling.get("enabled"):
            # KEDA's idleReplicaCount 0 (a batch model idle until called) runs none while nobody calls it.
            low = 0 if scaling.get("idleReplicas") == 0 else as_int(scaling.get("minReplicas"), count)
            high = as_int(scaling.get("maxReplicas"), count)
        pool = str((values.get("nodeSelector") or {}).get(POOL_LABEL) or "?")
        if release.region in regions:
            regions[release.region].models.append(Model(name, pool, low, high))
    for region in regions.values():
        region.models.sort(key=lambda m: (m.pool, m.name))
    _fallbacks(index, regions)
    zones: dict[str, list[Region]] = {}
    for region in sorted(regions.values(), key=lambda r: (r.zone, r.name)):
        zones.setdefault(region.zone, []).append(region)
    zone_of = {r.name: r.zone for r in regions.values()}
    return Topology(stack, zones, _dns(index), _secrets(index, zone_of))
