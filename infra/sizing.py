"""What one model replica requests (CPU, memory, /dev/shm), sized from its pool's instance types and its GPUs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra.catalog import Catalog, InstanceType

if TYPE_CHECKING:
    from infra.config import Model, Pool


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
