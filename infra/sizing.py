"""What one model replica requests (CPU, memory, /dev/shm), sized from its pool's instance types and its GPUs, and
how many replicas of each model its pool can hold at the size the pool runs at."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra.catalog import Catalog, InstanceType

if TYPE_CHECKING:
    from infra.config import Model, Pool, Region, StackConfig


@dataclass(frozen=True)
class Headroom:
    cpu_millicores: int
    memory_mib: int


# Left free on every GPU node for its DaemonSets before model replicas take their share: aws-node (VPC CNI),
# kube-proxy, the NVIDIA device plugin and, with a Hugging Face token, the Secrets Store CSI driver and its
# AWS provider (infra/components/cluster.py, addons.py). Each requests tens of millicores and MiB; the rest
# covers what they use beyond their requests and a node metrics agent, so model pods (memory limit =
# request) never push a node into memory-pressure eviction. The capacity-fit control reserves the same.
DAEMONSET_HEADROOM = Headroom(cpu_millicores=500, memory_mib=1024)

# /dev/shm is memory-backed: its pages count against the container's memory, so it is carved out of the
# memory request, never added to it. NCCL between tensor-parallel workers and vLLM's shared-memory queues
# need a few GiB at most.
SHM_SHARE = 8  # 1/8 of the replica's memory
SHM_MIN_MIB = 1024
SHM_MAX_MIB = 16 * 1024


@dataclass(frozen=True)
class Resources:
    """One replica's requests: CPU in millicores, memory and /dev/shm in MiB (shm is inside memory)."""

    cpu_millicores: int
    memory_mib: int
    shm_mib: int

    def values(self) -> dict[str, str]:
        return {"cpu": f"{self.cpu_millicores}m", "memory": f"{self.memory_mib}Mi", "shm": f"{self.shm_mib}Mi"}


def usable(instance: InstanceType) -> Headroom:
    """A node's allocatable CPU and memory (AL2023 nodeadm's formula, infra/catalog.py) less the DaemonSet headroom."""
    return Headroom(instance.allocatable_cpu_millicores - DAEMONSET_HEADROOM.cpu_millicores,
                    instance.allocatable_memory_mib - DAEMONSET_HEADROOM.memory_mib)


def smallest_share(instance_types: list[str], gpus: int, catalog: Catalog) -> tuple[str, Resources] | None:
    """A share of node proportional to GPUs, on the pool's instance type that gives the least of it (a replica
    must fit whichever of the pool's types the node group launched). None: no type in the catalog holds `gpus`."""
    best: tuple[str, Resources] | None = None
    for name in instance_types:
        instance = catalog.instances.get(name)
        if instance is None or instance.gpus < gpus:
            continue
        room = usable(instance)
        cpu = room.cpu_millicores * gpus // instance.gpus
        memory = room.memory_mib * gpus // instance.gpus
        share = Resources(cpu, memory, default_shm_mib(memory))
        if best is None or (share.memory_mib, share.cpu_millicores) < (best[1].memory_mib, best[1].cpu_millicores):
            best = (name, share)
    return best


def default_shm_mib(memory_mib: int) -> int:
    return max(SHM_MIN_MIB, min(SHM_MAX_MIB, memory_mib // SHM_SHARE))


def smallest_instance(instance_types: list[str], gpus: int, catalog: Catalog) -> InstanceType | None:
    """The pool's type with the least usable memory, then CPU, among those that hold `gpus` GPUs."""
    known = [catalog.instances[t] for t in instance_types if t in catalog.instances]
    fits = [i for i in known if i.gpus >= gpus]
    return min(fits, key=lambda i: (usable(i).memory_mib, usable(i).cpu_millicores), default=None)


def model_resources(model: Model, pool: Pool, catalog: Catalog) -> Resources:
    """The replica's requests: the proportional share on the pool's smallest type, with the model's
    `resources` overrides (already validated to fit by infra/config.py)."""
    found = smallest_share(pool.instance_types, model.gpus, catalog)
    if found is None:
        raise ValueError(f"model {model.name}: no instance type of pool {pool.name} holds {model.gpus} GPU(s)")
    share = found[1]
    override = model.resources
    if override is None:
        return share
    cpu = parse_cpu(override.cpu) if override.cpu is not None else share.cpu_millicores
    memory = parse_memory(override.memory) if override.memory is not None else share.memory_mib
    shm = parse_memory(override.shm) if override.shm is not None else min(default_shm_mib(memory), memory // 2)
    return Resources(cpu, memory, shm)


# --- Kubernetes quantities ----------------------------------------------------------------------

_CPU = re.compile(r"^([0-9]+(\.[0-9]+)?)(m?)$")
_MEMORY = re.compile(r"^([0-9]+(\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_BYTES = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
          "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_cpu(value: str | float) -> int:
    """'4', 4, 0.5 or '3500m' -> millicores."""
    match = _CPU.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a CPU quantity (e.g. 4, 0.5 or 3500m)")
    number = float(match.group(1))
    return int(number if match.group(3) else number * 1000)


def parse_memory(value: str) -> int:
    """'32Gi', '16384Mi', '40G' -> MiB (rounded down)."""
    match = _MEMORY.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a memory quantity (e.g. 24Gi or 16384Mi)")
    return int(float(match.group(1)) * _BYTES[match.group(3)] // 1024**2)


def fit_problems(model: Model, pool: Pool, region: str, catalog: Catalog) -> list[tuple[str, str]]:
    """(field under `resources`, problem) for each explicit request that cannot fit the pool's smallest instance."""
    override = model.resources
    instance = smallest_instance(pool.instance_types, model.gpus, catalog)
    if override is None or instance is None:
        return []
    room = usable(instance)
    where = (f"pool {pool.name} in {region}: its smallest instance {instance.name} has {{}} for pods once "
             f"kubelet and the DaemonSet headroom take their share")
    problems: list[tuple[str, str]] = []
    if override.cpu is not None and parse_cpu(override.cpu) > room.cpu_millicores:
        problems.append(("cpu", f"model {model.name} requests {override.cpu} CPU, more than "
                                + where.format(f"{room.cpu_millicores}m CPU")))
    memory = parse_memory(override.memory) if override.memory is not None else None
    if memory is not None and memory > room.memory_mib:
        problems.append(("memory", f"model {model.name} requests {override.memory} memory, more than "
                                   + where.format(f"{room.memory_mib}Mi memory")))
    if override.shm is not None:
        total = memory if memory is not None else model_resources(model, pool, catalog).memory_mib
        if parse_memory(override.shm) > total:
            problems.append(("shm", f"model {model.name}: /dev/shm {override.shm} is memory-backed and counted in "
                                    f"the replica's memory ({total}Mi); it cannot be larger"))
    return problems


# --- How far a model's replicas can scale on its pool ------------------------------------------

# The charts that add nodes when pods are Pending. A region whose record holds a release of one of them has
# pools that grow to max_nodes (the capacity-fit control reads this); anywhere else a pool stays at min_nodes.
NODE_AUTOSCALER_CHARTS = ("cluster-autoscaler", "karpenter")


def is_node_autoscaler_chart(chart: str) -> bool:
    """Whether a Helm release of `chart` (a name, a path or a URL) makes its cluster's pools grow."""
    return chart.rstrip("/").rsplit("/", 1)[-1] in NODE_AUTOSCALER_CHARTS


def installs_node_autoscaler(cfg: StackConfig, region: str) -> bool:
    """Whether the program installs a node autoscaler (a release of a NODE_AUTOSCALER_CHARTS chart) in `region`'s
    cluster. Every cluster gets Karpenter (infra/components/karpenter.py), which launches a node of a pool
    whenever a pod of the pool is Pending, up to the pool's limits (max_nodes); its release is what the
    capacity-fit control sees in the record."""
    return any(r.name == region for r in cfg.regions)


def nodes_for(models: list[Model], gpus_per_node: int, replicas: dict[str, int]) -> int:
    """Nodes of gpus_per_node GPUs that hold `replicas` of each model."""
    # Replicas don't span nodes but share them: pack them, largest first, onto whole nodes.
    free: list[int] = []
    for size in sorted((m.gpus for m in models for _ in range(replicas[m.name])), reverse=True):
        slot = next((k for k, left in enumerate(free) if left >= size), None)
        if slot is None:
            free.append(gpus_per_node - size)
        else:
            free[slot] -= size
    return len(free)


@dataclass(frozen=True)
class PoolAtRest:
    """A pool as its models are packed: nodes of its smallest GPU count, as many as it runs (min_nodes unless a
    node autoscaler grows it to max_nodes), and its models in config order."""

    name: str
    gpus_per_node: int
    nodes: int
    grows: bool
    models: tuple[Model, ...]

    def holds(self, replicas: dict[str, int]) -> bool:
        return nodes_for(list(self.models), self.gpus_per_node, replicas) <= self.nodes


@dataclass(frozen=True)
class ReplicaRange:
    """How far one model scales in a region: from its floor (the HPA cannot go below one) to its ceiling, the
    config's `replicas.max` capped by what its pool holds (see `replica_ranges`)."""

    model: str
    floor: int
    configured_max: int
    ceiling: int
    pool: PoolAtRest

    @property
    def capped(self) -> bool:
        return self.ceiling < max(self.floor, self.configured_max)

    def cap_reason(self) -> str:
        """Why the ceiling is below the config's max, for people: empty when it is not."""
        if not self.capped:
            return ""
        gpus = self.pool.gpus_per_node * self.pool.nodes
        reason = "at max_nodes" if self.pool.grows else "no node autoscaler"
        return (f"max {self.configured_max} capped: {reason}, pool {self.pool.name} holds "
                f"{gpus} GPU{'s' if gpus != 1 else ''} at {self.pool.nodes} node{'s' if self.pool.nodes != 1 else ''}")


def pool_at_rest(cfg: StackConfig, region: Region, pool: Pool, catalog: Catalog) -> PoolAtRest:
    per_node = min((catalog.instances[t].gpus for t in pool.instance_types if t in catalog.instances), default=0)
    grows = installs_node_autoscaler(cfg, region.name)
    # A model whose replica is larger than the pool's nodes is refused by the config check; packing skips it.
    models = tuple(m for m in cfg.models_in(region.name) if m.pool == pool.name and 0 < m.gpus <= per_node)
    return PoolAtRest(pool.name, per_node, pool.max_nodes if grows else pool.min_nodes, grows, models)


def replica_ranges(cfg: StackConfig, region: Region, catalog: Catalog) -> dict[str, ReplicaRange]:
    """Each model's replica range in `region`. While no node autoscaler runs, a pool never has more than
    min_nodes nodes, and an HPA that scales past what they hold leaves replicas Pending (and a rollout or an
    awaited release waiting on them). So, pool by pool, models in config order: a model's ceiling is the
    largest n, from its floor max(1, replicas.min) up to replicas.max, such that the pool's nodes hold this model
    at n, the models before it at their ceilings and the models after it at their floors. With a node
    autoscaler the ceiling is replicas.max (the config check holds every model at max within max_nodes)."""
    out: dict[str, ReplicaRange] = {}
    for pool in region.pools:
        at_rest = pool_at_rest(cfg, region, pool, catalog)
        chosen = {m.name: max(1, m.replicas.min) for m in at_rest.models}
        for m in at_rest.models:
            floor = chosen[m.name]
            top = max(floor, m.replicas.max)
            if not at_rest.grows:
                while top > floor and not at_rest.holds({**chosen, m.name: top}):
                    top -= 1
            chosen[m.name] = top
            out[m.name] = ReplicaRange(m.name, floor, m.replicas.max, top, at_rest)
    return out
