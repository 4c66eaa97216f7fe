"""Control gpu-pool-hygiene: GPU pools are tainted, spot pools run only batch-tolerant models, every pool is bounded."""
from __future__ import annotations

from tests.policy.helpers import (
    assert_passes,
    assert_rejected,
    find,
    mutated,
    plan_of,
    result,
    result_of_resources,
    stack_raw,
)

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
GPU_TAINT = "nvidia.com/gpu=present:NO_SCHEDULE"
SPOT_TAINT = "llm-platform/capacity=spot:NO_SCHEDULE"


def test_gpu_pools_are_tainted_and_bounded(stack_plan):
    res = result(stack_plan, "gpu-pool-hygiene")
    assert_passes(res)
    groups = [e for e in res.evidence if e.get("type") == NODE_GROUP]
    assert len(groups) == len(stack_plan.of_type(NODE_GROUP))
    for e in groups:
        assert e["max_size"] is not None and e["max_size"] >= max(1, e["min_size"])
        if e["gpu"]:
            assert GPU_TAINT in e["taints"]
        if e["capacity"] == "spot":
            assert SPOT_TAINT in e["taints"]
    assert any(not e["gpu"] and not e["taints"] for e in groups), "the system pool takes untolerating pods"


def test_spot_pools_serve_only_batch_models(stack_plan):
    res = result(stack_plan, "gpu-pool-hygiene")
    assert_passes(res)
    on_spot = [e for e in res.evidence if e.get("capacity") == "spot" and "model" in e]
    assert on_spot, "both stacks run a batch model on spot"
    assert all(e["tier"] == "batch" and e["batch_tolerant"] for e in on_spot)


def test_interactive_model_on_a_spot_pool_is_rejected():
    """Broken config: the 8B interactive model is moved onto prod's spot batch pool."""
    raw = stack_raw("prod")
    model = next(m for m in raw["models"] if m["name"] == "llama-3-1-8b")
    # Downloaded from Hugging Face: a batch node's memory leaves Run:ai's streamer too small a buffer.
    model.update(pool="batch", replicas={"min": 1, "max": 2}, weights="huggingface")
    for region in raw["regions"]:
        next(p for p in region["pools"] if p["name"] == "batch").update(min_nodes=2, max_nodes=8)  # room for both
    assert_rejected(result(plan_of(raw, "prod"), "gpu-pool-hygiene"),
                    "model llama-3-1-8b runs on spot pool batch in us-east-1 but is not marked batch-tolerant "
                    "(tier 'interactive')")


def test_gpu_pool_without_gpu_taint_is_rejected(prod_plan):
    """Program bug (simulated): the H100 node group in eu-north-1 is created without taints."""
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_GROUP, "eu-north-1-h100").inputs.pop("taints"))
    assert_rejected(result_of_resources(prod_plan, resources, "gpu-pool-hygiene"),
                    "GPU node group eu-north-1-h100 in eu-north-1 lacks the taint nvidia.com/gpu=present:NoSchedule")


def test_spot_pool_without_spot_taint_is_rejected(prod_plan):
    """Program bug (simulated): the spot pool in us-west-2 keeps only the GPU taint."""
    def drop_spot_taint(rs):
        group = find(rs, NODE_GROUP, "us-west-2-batch")
        group.inputs["taints"] = [t for t in group.inputs["taints"] if t["key"] != "llm-platform/capacity"]
    resources = mutated(prod_plan, drop_spot_taint)
    assert_rejected(result_of_resources(prod_plan, resources, "gpu-pool-hygiene"),
                    "spot node group us-west-2-batch in us-west-2 "
                    "lacks the taint llm-platform/capacity=spot:NoSchedule")


def test_node_group_without_max_size_is_rejected(prod_plan):
    """Program bug (simulated): a node group's scaling config loses its max size."""
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_GROUP, "us-east-1-mid")
                        .inputs["scalingConfig"].pop("maxSize"))
    assert_rejected(result_of_resources(prod_plan, resources, "gpu-pool-hygiene"),
                    "node group us-east-1-mid in us-east-1 has no max size")
