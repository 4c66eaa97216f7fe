"""The node labels and taints GPU pools carry, and the tolerations workloads need to land on them.

One source for these names: the node pools set them, the vLLM chart values are computed
from them, and the policy rules check them.
"""

POOL_LABEL = "llm-platform/pool"
CAPACITY_LABEL = "llm-platform/capacity"

GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_TAINT_VALUE = "present"
SPOT_TAINT_KEY = "llm-platform/capacity"
SPOT_TAINT_VALUE = "spot"

GPU_RESOURCE = "nvidia.com/gpu"


def pool_taints(spot: bool) -> list[dict[str, str]]:
    """Kubernetes-style taints of a GPU pool (effect spelled as in a Pod spec)."""
    taints = [{"key": GPU_TAINT_KEY, "value": GPU_TAINT_VALUE, "effect": "NoSchedule"}]
    if spot:
        taints.append({"key": SPOT_TAINT_KEY, "value": SPOT_TAINT_VALUE, "effect": "NoSchedule"})
    return taints


def pool_tolerations(spot: bool) -> list[dict[str, str]]:
    """Tolerations a workload needs to be scheduled on a pool with `pool_taints(spot)`."""
    return [{"key": t["key"], "operator": "Equal", "value": t["value"], "effect": t["effect"]}
            for t in pool_taints(spot)]


def pool_node_selector(pool: str) -> dict[str, str]:
    return {POOL_LABEL: pool}
