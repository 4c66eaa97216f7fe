"""What `llmp verify` expects of a deployed stack, derived from its config by the program's own naming functions.

Nothing here is re-decided: cluster names (infra/platform.py), release names and namespaces
(infra/chart_values.py), NodePool names and labels (infra/components/node_pool.py, infra/scheduling.py) and DNS
names (infra/components/dns.py) come from the functions `pulumi up` used, so a rename there moves verify too.
"""
from __future__ import annotations

from dataclasses import dataclass

from infra.chart_values import GATEWAY_NAMESPACE, GATEWAY_RELEASE, MODEL_NAMESPACE, vllm_release_name
from infra.components.dns import regional_host, zone_host
from infra.config import Model, StackConfig
from infra.gateway_config import deployment_name
from infra.platform import cluster_name
from infra.scheduling import POOL_LABEL


@dataclass(frozen=True)
class PoolTarget:
    name: str  # the NodePool's name (the config's pool name)
    min_nodes: int  # Ready nodes the pool must have: what its models' floors fill
    label: str  # the label selector of its nodes


@dataclass(frozen=True)
class ReleaseTarget:
    model: str
    name: str  # the Deployment's name in MODEL_NAMESPACE
    floor: int  # ready replicas it must have at rest
    deployment: str  # the region's own gateway deployment of the model (infra/gateway_config.py)


@dataclass(frozen=True)
class RegionTarget:
    name: str
    zone: str
    context: str  # kube context: the cluster's name, as `aws eks update-kubeconfig --alias` names it
    host: str  # the regional gateway's DNS name
    pools: tuple[PoolTarget, ...]
    releases: tuple[ReleaseTarget, ...]
    gateway_floor: int
    session_model: str | None  # the model whose replicas a session must stick to: the one with most replicas
    restricted_elsewhere: tuple[tuple[str, str], ...]  # (model, its zone): models this region must refuse


@dataclass(frozen=True)
class Targets:
    stack: str
    regions: tuple[RegionTarget, ...]
    global_host: str
    zone_hosts: dict[str, str]  # zone -> its DNS name
    zone_models: dict[str, str]  # zone -> a model to call through the zone's name
    global_model: str | None  # a model every zone serves, to call through the global name
    gateway_namespace: str = GATEWAY_NAMESPACE
    gateway_workload: str = GATEWAY_RELEASE  # the chart names its objects after the release
    model_namespace: str = MODEL_NAMESPACE

    def deployments(self, model: str, zone: str | None = None) -> set[str]:
        """The regions' own deployments of `model` (in `zone`, or everywhere): who may answer a call through
        a shared name without a fallback."""
        return {deployment_name(model, r.name) for r in self.regions if zone is None or r.zone == zone}


def _serves_zone(cfg: StackConfig, model: Model, zone: str) -> bool:
    """Served warm in every region of the zone, and allowed there: a call through the zone's name cannot miss."""
    regions = [r.name for r in cfg.regions_in(zone)]
    return model.floor >= 1 and model.residency in (None, zone) and all(r in model.regions for r in regions)


def _first_interactive(models: list[Model]) -> str | None:
    # Interactive first: a batch model may sit on spot capacity that is away right now.
    fits = sorted(models, key=lambda m: m.tier != "interactive")
    return fits[0].name if fits else None


def targets(cfg: StackConfig) -> Targets:
    domain = cfg.gateway.domain
    regions = []
    for region in cfg.regions:
        models = cfg.models_in(region.name)
        releases = tuple(ReleaseTarget(m.name, vllm_release_name(m), m.floor, deployment_name(m.name, region.name))
                         for m in models)
        warm = [m for m in models if m.floor >= 1 and m.residency in (None, region.residency)]
        session = max(warm, key=lambda m: m.floor).name if warm else None
        restricted = tuple((m.name, m.residency) for m in cfg.models
                           if m.residency is not None and m.residency != region.residency)
        regions.append(RegionTarget(
            name=region.name, zone=region.residency, context=cluster_name(cfg.stack, region.name),
            host=regional_host(region.name, domain),
            pools=tuple(PoolTarget(p.name, p.min_nodes, f"{POOL_LABEL}={p.name}") for p in region.pools),
            releases=releases, gateway_floor=max(1, cfg.gateway.replicas.min), session_model=session,
            restricted_elsewhere=restricted))
    zone_models = {z: m for z in cfg.zones
                   if (m := _first_interactive([m for m in cfg.models if _serves_zone(cfg, m, z)])) is not None}
    everywhere = [m for m in cfg.models if all(_serves_zone(cfg, m, z) and m.residency is None for z in cfg.zones)]
    return Targets(stack=cfg.stack, regions=tuple(regions), global_host=domain,
                   zone_hosts={z: zone_host(z, domain) for z in cfg.zones}, zone_models=zone_models,
                   global_model=_first_interactive(everywhere))
