"""Control `gpu-pool-hygiene`: GPU pools are tainted, spot pools are marked and run only batch-tolerant models, every
pool is bounded, and Karpenter's pools disrupt gently and launch hardened nodes."""
from __future__ import annotations

from typing import Any

from infra.catalog import load_catalog
from infra.plan.cost import GPU, RecordedPool, recorded_pools
from infra.policy.rules.base import (
    POOL_LABEL,
    TIER_LABEL,
    Findings,
    PolicyConfig,
    Resources,
    as_list,
)
from infra.scheduling import GPU_TAINT_KEY, GPU_TAINT_VALUE, SPOT_TAINT_KEY, SPOT_TAINT_VALUE

# An interactive pool gives back only empty nodes: consolidating a busy one evicts a replica that reloads tens of
# GiB of weights while its traffic waits. A spot batch pool may also repack underused nodes.
INTERACTIVE_POLICY = "WhenEmpty"
BATCH_POLICIES = ("WhenEmpty", "WhenEmptyOrUnderutilized")

DESCRIPTION = (
    f"Every GPU pool (an EKS node group, or a Karpenter NodePool) carries the taint "
    f"{GPU_TAINT_KEY}={GPU_TAINT_VALUE}:NoSchedule, so only workloads that ask for GPUs land on (and pay for) "
    f"them. Every spot pool also carries {SPOT_TAINT_KEY}={SPOT_TAINT_VALUE}:NoSchedule, and the only vLLM "
    f"releases scheduled onto a spot pool are models the stack marks batch-tolerant (tier: batch): an interactive "
    f"model must not lose its replicas to a spot interruption. Every pool is bounded: a node group's max size at "
    f"or above its min size; a NodePool's limits in both {GPU} and cpu. A NodePool's disruption is fit for GPUs: "
    f"a consolidation policy of {INTERACTIVE_POLICY} unless the pool is spot (which may also consolidate "
    f"underused nodes), a consolidateAfter, at least one disruption budget, and a terminationGracePeriod. Its "
    f"EC2NodeClass launches nodes with IMDSv2 only (httpTokens required) and encrypted block devices.")


def _tainted(pool: RecordedPool, key: str, value: str) -> bool:
    return (key, value, "NoSchedule") in pool.taints


def _nodeclass_problems(pool: RecordedPool) -> list[str]:
    where = f"NodePool {pool.resource.name} in {pool.region}"
    if pool.node_class is None:
        return [f"{where} references no EC2NodeClass the program creates: nothing is known of its nodes"]
    spec = pool.node_class.inputs.get("spec") or {}
    problems = []
    metadata = spec.get("metadataOptions") or {}
    if metadata.get("httpTokens") != "required":
        problems.append(f"{where}: its EC2NodeClass does not require IMDSv2 (metadataOptions.httpTokens is "
                        f"{metadata.get('httpTokens')!r}): a pod's SSRF could read the node role's credentials")
    volumes = as_list(spec.get("blockDeviceMappings"))
    if not volumes or not all((v.get("ebs") or {}).get("encrypted") is True for v in volumes):
        problems.append(f"{where}: its EC2NodeClass does not encrypt every block device (ebs.encrypted): model "
                        f"weights and caches would rest in clear")
    return problems


def _karpenter_problems(pool: RecordedPool) -> list[str]:
    where = f"NodePool {pool.resource.name} in {pool.region}"
    spec = pool.resource.inputs.get("spec") or {}
    problems = []
    missing = [k for k in (GPU, "cpu") if k not in pool.limits]
    if missing:
        problems.append(f"{where} has no limit on {' or '.join(missing)}: Karpenter would launch nodes without "
                        f"bound")
    disruption: dict[str, Any] = spec.get("disruption") or {}
    policy = disruption.get("consolidationPolicy")
    allowed = BATCH_POLICIES if pool.spot else (INTERACTIVE_POLICY,)
    if policy not in allowed:
        problems.append(f"{where} consolidates with policy {policy!r}; a {'spot' if pool.spot else 'non-spot'} "
                        f"GPU pool allows {' or '.join(allowed)}: consolidating busy interactive nodes evicts "
                        f"replicas that take minutes to reload")
    if not disruption.get("consolidateAfter"):
        problems.append(f"{where} has no consolidateAfter: a node is given back the moment it empties")
    if not as_list(disruption.get("budgets")):
        problems.append(f"{where} has no disruption budget: Karpenter may disrupt many GPU nodes at once")
    template = (spec.get("template") or {}).get("spec") or {}
    if not template.get("terminationGracePeriod"):
        problems.append(f"{where} has no terminationGracePeriod: a node being drained may wait on its pods forever")
    return problems + _nodeclass_problems(pool)


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    spot_pools: set[tuple[str, str]] = set()
    catalog = load_catalog()
    for pool in recorded_pools(resources.all, catalog):
        group = pool.resource
        gpu = any(t in catalog.instances and catalog.instance(t).gpus > 0 for t in pool.instance_types)
        kind = "GPU node group" if pool.kind == "node-group" else "GPU NodePool"
        found.judged(group, pool=pool.name, gpu=gpu, capacity=pool.capacity,
                     taints=[f"{k}={v}:{e}" for k, v, e in pool.taints],
                     min_size=pool.min_nodes, max_size=pool.max_nodes, limits=dict(pool.limits) or None)
        if pool.spot:
            spot_pools.add((group.region, pool.name))
        if gpu and not _tainted(pool, GPU_TAINT_KEY, GPU_TAINT_VALUE):
            found.fail(f"{kind} {group.name} in {group.region} lacks the taint "
                       f"{GPU_TAINT_KEY}={GPU_TAINT_VALUE}:NoSchedule: any pod could land on its GPUs")
        if pool.spot and not _tainted(pool, SPOT_TAINT_KEY, SPOT_TAINT_VALUE):
            found.fail(f"spot {kind.removeprefix('GPU ')} {group.name} in {group.region} lacks the taint "
                       f"{SPOT_TAINT_KEY}={SPOT_TAINT_VALUE}:NoSchedule: interactive workloads could be scheduled "
                       f"onto interruptible nodes")
        if pool.kind == "karpenter":
            for problem in _karpenter_problems(pool):
                found.fail(problem)
        elif pool.max_nodes is None:
            found.fail(f"node group {group.name} in {group.region} has no max size")
        elif pool.max_nodes < max(1, pool.min_nodes):
            found.fail(f"node group {group.name} in {group.region} has max size {pool.max_nodes} "
                       f"below its min size {pool.min_nodes}")

    for release, model in resources.model_releases():
        values = release.inputs.get("values") or {}
        pool_name = str((values.get("nodeSelector") or {}).get(POOL_LABEL))
        if (release.region, pool_name) not in spot_pools:
            continue
        intent = policy.models.get(model)
        tier = (values.get("podLabels") or {}).get(TIER_LABEL)
        found.judged(release, model=model, pool=pool_name, capacity="spot", tier=tier,
                     batch_tolerant=bool(intent and intent.batch_tolerant))
        if not (intent and intent.batch_tolerant) or tier != "batch":
            found.fail(f"model {model} runs on spot pool {pool_name} in {release.region} but is not marked "
                       f"batch-tolerant (tier {tier!r}): a spot interruption would drop its interactive traffic")
    return found
