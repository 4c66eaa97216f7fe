"""Control `failover-topology`: models survive the loss of any one region, every gateway is health-checked in DNS,
fallback chains are sound."""
from __future__ import annotations

from urllib.parse import urlparse

from infra.catalog import load_catalog
from infra.plan.cost import node_group_types
from infra.policy.rules.base import (
    DNS_RECORD,
    GATEWAY_CHART_DIR,
    HEALTH_CHECK,
    NODE_GROUP,
    POOL_LABEL,
    Findings,
    PolicyConfig,
    Resource,
    Resources,
    as_int,
    as_list,
)

DESCRIPTION = (
    "From the vLLM releases the program installs: every model is served in at least min_regions_per_model "
    "regions of each residency zone it is served in. In prod, for every region that could be lost, each model "
    "it serves still fits in the surviving regions of its zone: the survivors' maximum replicas cover the lost "
    "region's minimum plus their own minimums, and every pool can actually hold its models at maximum replicas "
    "(node group max size x replicas per node). Every regional gateway has a Route53 health check probing its "
    "own regional host and a latency record for its region that uses that health check, so DNS drops a dead "
    "region. In every gateway's routing config, alias fallback chains are acyclic, and a model restricted to a "
    "zone is offered only by that zone's gateways and never falls back (directly, through other regions, "
    "hosted providers, or fallback aliases) to anything outside its zone.")

CLUSTER_LOCAL = ".svc.cluster.local"


def _replicas(release: Resource) -> tuple[int, int]:
    values = release.inputs.get("values") or {}
    scaling = values.get("autoscaling") or {}
    if scaling.get("enabled"):
        return as_int(scaling.get("minReplicas"), 1), as_int(scaling.get("maxReplicas"), 1)
    count = as_int(values.get("replicaCount"), 1)
    return count, count


def _pool_capacity(resources: Resources, found: Findings) -> None:
    """Each pool must hold every model scheduled on it at maximum replicas (replicas never span nodes)."""
    catalog = load_catalog()
    groups = {(g.region, (g.inputs.get("labels") or {}).get(POOL_LABEL)): g for g in resources.of_type(NODE_GROUP)}
    demand: dict[tuple[str, str | None], list[tuple[str, int, int]]] = {}
    for release, model in resources.model_releases():
        values = release.inputs.get("values") or {}
        pool = (values.get("nodeSelector") or {}).get(POOL_LABEL)
        demand.setdefault((release.region, pool), []).append((model, as_int(values.get("gpus"), 1),
                                                              _replicas(release)[1]))
    for (region, pool), models in sorted(demand.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        group = groups.get((region, pool))
        if group is None:
            found.fail(f"models {', '.join(m for m, _, _ in models)} in {region} select pool {pool!r}, "
                       f"which has no node group there")
            continue
        types = [t for t in node_group_types(group.inputs) if t in catalog.instances]
        per_node = min((catalog.instance(t).gpus for t in types), default=0)
        max_nodes = as_int((group.inputs.get("scalingConfig") or {}).get("maxSize"))
        need = 0
        for model, gpus, reps in models:
            slots = per_node // gpus if gpus else 0
            if slots == 0:
                found.fail(f"model {model} needs {gpus} GPUs per replica; pool {pool} in {region} has nodes "
                           f"with {per_node}")
                continue
            need += -(-reps // slots)
        found.judged(group, pool=pool, max_nodes=max_nodes, gpus_per_node=per_node, nodes_needed_at_max=need,
                     models={m: r for m, _, r in models})
        if need > max_nodes:
            found.fail(f"pool {pool} in {region} needs {need} nodes to run its models at maximum replicas "
                       f"({', '.join(f'{m} x{r}' for m, _, r in models)}) but its node group stops at {max_nodes}: "
                       f"the failover capacity counted on there does not exist")


def _survives_region_loss(placement: dict[str, dict[str, tuple[int, int]]], policy: PolicyConfig,
                          found: Findings) -> None:
    for model, regions in sorted(placement.items()):
        for zone in sorted({z for r in regions if (z := policy.zone_of(r)) is not None}):
            in_zone = {r: mm for r, mm in regions.items() if policy.zone_of(r) == zone}
            for lost, (lost_min, _) in sorted(in_zone.items()):
                survivors = {r: mm for r, mm in in_zone.items() if r != lost}
                need = lost_min + sum(mn for mn, _ in survivors.values())
                have = sum(mx for _, mx in survivors.values())
                found.judged(None, scenario=f"lose {lost}", model=model, zone=zone, survivors=sorted(survivors),
                             replicas_needed=need, survivors_max_replicas=have)
                if have < need:
                    found.fail(f"losing {lost} leaves model {model} short in zone {zone!r}: the survivors "
                               f"({', '.join(sorted(survivors)) or 'none'}) reach {have} replicas at most, but "
                               f"{need} are needed ({lost_min} from {lost} plus their own minimum)")


def _gateway_dns(resources: Resources, found: Findings) -> None:
    checks = {str(h.outputs.get("id")): h for h in resources.of_type(HEALTH_CHECK) if h.outputs.get("id")}
    records = resources.of_type(DNS_RECORD)
    for gateway in resources.releases(GATEWAY_CHART_DIR):
        region = gateway.region
        service = (gateway.inputs.get("values") or {}).get("service") or {}
        hosts = [str(h) for h in as_list((service.get("loadBalancer") or {}).get("hosts"))]
        latency = [r for r in records
                   if r.inputs.get("setIdentifier") == region
                   or any(p.get("region") == region for p in as_list(r.inputs.get("latencyRoutingPolicies")))]
        if not latency:
            found.fail(f"the gateway in {region} has no Route53 latency record: clients cannot reach it, and DNS "
                       f"cannot fail over away from it")
            continue
        for record in latency:
            check = checks.get(str(record.inputs.get("healthCheckId") or ""))
            found.judged(record, gateway_region=region, name=record.inputs.get("name"),
                         health_check=check.name if check else None,
                         probes=check.inputs.get("fqdn") if check else None)
            if check is None:
                found.fail(f"Route53 record {record.name} for the gateway in {region} has no health check: DNS "
                           f"keeps sending traffic to {region} when it is down")
            elif (str(check.inputs.get("fqdn")) not in hosts
                  or not str(check.inputs.get("fqdn")).startswith(f"{region}.")):
                found.fail(f"health check {check.name} for {region} probes {check.inputs.get('fqdn')}, which is not "
                           f"the {region} gateway's own regional host ({', '.join(hosts)})")


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
            if state.get(nxt) is None:
                cycle = visit(nxt, [*path, nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in graph:
        if state.get(start) is None:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def _fallback_chains(resources: Resources, policy: PolicyConfig, found: Findings) -> None:
    for gateway in resources.releases(GATEWAY_CHART_DIR):
        config = (gateway.inputs.get("values") or {}).get("config") or {}
        gw_zone = (config.get("gateway") or {}).get("residency") or policy.zone_of(gateway.region)
        models = {str(m.get("alias")): m for m in as_list(config.get("models"))}
        graph = {alias: [str(f) for f in as_list(m.get("fallbacks"))] for alias, m in models.items()}
        cycle = _find_cycle(graph)
        found.judged(gateway, zone=gw_zone, aliases=sorted(models),
                     fallbacks={a: f for a, f in graph.items() if f})
        if cycle:
            found.fail(f"gateway in {gateway.region}: fallback chain loops: {' -> '.join(cycle)}")
        for alias in sorted(models):
            intent = policy.models.get(alias)
            zone = intent.residency if intent else None
            if not zone:
                continue
            if gw_zone != zone:
                found.fail(f"gateway in {gateway.region} (zone {gw_zone!r}) offers model {alias}, which is "
                           f"restricted to zone {zone!r}")
            chain, todo = [], [alias]
            while todo:
                current = todo.pop(0)
                if current in chain or current not in models:
                    continue
                chain.append(current)
                todo.extend(graph.get(current, []))
            for link in chain:
                for dep in as_list(models[link].get("deployments")):
                    where = _leaves_zone(dep, zone, policy)
                    if where:
                        via = "" if link == alias else f" (through fallback alias {link})"
                        found.fail(f"gateway in {gateway.region}: restricted model {alias} (zone {zone!r}) can fall "
                                   f"back to deployment {dep.get('name')}{via}, {where}")
            found.judged(gateway, restricted_model=alias, zone=zone, chain=chain,
                         deployments=[d.get("name") for link in chain
                                      for d in as_list(models[link].get("deployments"))])


def _leaves_zone(dep: dict, zone: str, policy: PolicyConfig) -> str | None:
    """Why a deployment is outside `zone`, or None when it stays inside."""
    if dep.get("tier") == "fallback":
        return f"a hosted provider ({dep.get('api_base')}) outside every residency zone"
    if dep.get("residency") != zone:
        return f"which is in zone {dep.get('residency')!r}"
    region = str(dep.get("region"))
    if region not in policy.residency.get(zone, []):
        return f"which is in {region}, outside zone {zone!r}"
    if "replicas" in dep and "api_base" not in dep:
        return None  # replicas of the gateway's own cluster (EndpointSlices or a static list)
    host = urlparse(str(dep.get("api_base") or "")).hostname or ""
    if host.endswith(CLUSTER_LOCAL):
        return None
    if not any(host.startswith(f"{r}.") for r in policy.residency.get(zone, [])):
        return f"which is reached at {host}, not a gateway of zone {zone!r}"
    return None


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    placement: dict[str, dict[str, tuple[int, int]]] = {}
    for release, model in resources.model_releases():
        placement.setdefault(model, {})[release.region] = _replicas(release)
    for model, regions in sorted(placement.items()):
        by_zone: dict[str, list[str]] = {}
        for region in regions:
            by_zone.setdefault(policy.zone_of(region) or "?", []).append(region)
        for zone, members in sorted(by_zone.items()):
            found.judged(None, model=model, zone=zone, served_in=sorted(members),
                         min_regions_per_model=policy.min_regions_per_model)
            if len(members) < policy.min_regions_per_model:
                found.fail(f"model {model} is served in only {len(members)} region(s) of zone {zone!r} "
                           f"({', '.join(sorted(members))}); at least {policy.min_regions_per_model} are required so "
                           f"losing one region leaves it serving")
    for model in sorted(set(policy.models) - set(placement)):
        found.fail(f"model {model} is declared but no region serves it")
    if policy.environment == "prod":
        _survives_region_loss(placement, policy, found)
    _pool_capacity(resources, found)
    _gateway_dns(resources, found)
    _fallback_chains(resources, policy, found)
    return found
