"""Control `gpu-pool-hygiene`: GPU pools are tainted, spot pools are marked and run only batch-tolerant models, every
pool is bounded."""
from __future__ import annotations

from infra.catalog import load_catalog
from infra.plan.cost import node_group_types
from infra.policy.rules.base import (
    NODE_GROUP,
    POOL_LABEL,
    TIER_LABEL,
    Findings,
    PolicyConfig,
    Resource,
    Resources,
    as_int,
    as_list,
)
from infra.scheduling import GPU_TAINT_KEY, GPU_TAINT_VALUE, SPOT_TAINT_KEY, SPOT_TAINT_VALUE

DESCRIPTION = (
    f"Every EKS node group with GPU instances carries the taint {GPU_TAINT_KEY}={GPU_TAINT_VALUE}:NoSchedule, so "
    f"only workloads that ask for GPUs land on (and pay for) them. Every spot node group also carries "
    f"{SPOT_TAINT_KEY}={SPOT_TAINT_VALUE}:NoSchedule, and the only vLLM releases scheduled onto a spot pool are "
    f"models the stack marks batch-tolerant (tier: batch): an interactive model must not lose its replicas to a "
    f"spot interruption. Every node group has a max size at or above its min size, so nothing scales without "
    f"bound.")


def _has_taint(group: Resource, key: str, value: str) -> bool:
    return any(t.get("key") == key and t.get("value") == value and t.get("effect") == "NO_SCHEDULE"
               for t in as_list(group.inputs.get("taints")))


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    catalog = load_catalog()
    spot_pools: set[tuple[str, str]] = set()
    for group in resources.of_type(NODE_GROUP):
        types = list(node_group_types(group.inputs))  # a Capacity Block group names its type in a label
        gpu = any(t in catalog.instances and catalog.instance(t).gpus > 0 for t in types)
        spot = group.inputs.get("capacityType") == "SPOT"
        pool = (group.inputs.get("labels") or {}).get(POOL_LABEL)
        scaling = group.inputs.get("scalingConfig") or {}
        found.judged(group, pool=pool, gpu=gpu, capacity="spot" if spot else "on-demand",
                     taints=[f"{t.get('key')}={t.get('value')}:{t.get('effect')}"
                             for t in as_list(group.inputs.get("taints"))],
                     min_size=scaling.get("minSize"), max_size=scaling.get("maxSize"))
        if spot:
            spot_pools.add((group.region, str(pool)))
        if gpu and not _has_taint(group, GPU_TAINT_KEY, GPU_TAINT_VALUE):
            found.fail(f"GPU node group {group.name} in {group.region} lacks the taint "
                       f"{GPU_TAINT_KEY}={GPU_TAINT_VALUE}:NoSchedule: any pod could land on its GPUs")
        if spot and not _has_taint(group, SPOT_TAINT_KEY, SPOT_TAINT_VALUE):
            found.fail(f"spot node group {group.name} in {group.region} lacks the taint "
                       f"{SPOT_TAINT_KEY}={SPOT_TAINT_VALUE}:NoSchedule: interactive workloads could be scheduled "
                       f"onto interruptible nodes")
        if scaling.get("maxSize") is None:
            found.fail(f"node group {group.name} in {group.region} has no max size")
        elif as_int(scaling.get("maxSize")) < max(1, as_int(scaling.get("minSize"))):
            found.fail(f"node group {group.name} in {group.region} has max size {as_int(scaling.get('maxSize'))} "
                       f"below its min size {as_int(scaling.get('minSize'))}")

    for release, model in resources.model_releases():
        values = release.inputs.get("values") or {}
        pool = str((values.get("nodeSelector") or {}).get(POOL_LABEL))
        if (release.region, pool) not in spot_pools:
            continue
        intent = policy.models.get(model)
        tier = (values.get("podLabels") or {}).get(TIER_LABEL)
        found.judged(release, model=model, pool=pool, capacity="spot", tier=tier,
                     batch_tolerant=bool(intent and intent.batch_tolerant))
        if not (intent and intent.batch_tolerant) or tier != "batch":
            found.fail(f"model {model} runs on spot pool {pool} in {release.region} but is not marked "
                       f"batch-tolerant (tier {tier!r}): a spot interruption would drop its interactive traffic")
    return found
