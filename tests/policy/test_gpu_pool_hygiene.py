"""Control gpu-pool-hygiene: GPU pools are tainted, spot pools run only batch-tolerant models, every pool is bounded,
Karpenter's pools disrupt gently and launch hardened nodes."""
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
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
GPU_TAINT = "nvidia.com/gpu=present:NoSchedule"
SPOT_TAINT = "llm-platform/capacity=spot:NoSchedule"


def test_gpu_pools_are_tainted_and_bounded(stack_plan):
    res = result(stack_plan, "gpu-pool-hygiene")
    assert_passes(res)
    pools = [e for e in res.evidence if e.get("type") in (NODE_GROUP, NODE_POOL)]
    assert len(pools) == len(stack_plan.of_type(NODE_GROUP)) + len(stack_plan.of_type(NODE_POOL))
    for e in pools:
        assert e["max_size"] is not None and e["max_size"] >= max(1, e["min_size"])
        if e["gpu"]:
            assert GPU_TAINT in e["taints"]
        if e["capacity"] == "spot":
            assert SPOT_TAINT in e["taints"]
    assert any(not e["gpu"] and not e["taints"] for e in pools), "the system pool takes untolerating pods"


def test_every_gpu_pool_is_a_karpenter_nodepool_with_gpu_and_cpu_limits(stack_plan):
    """No GPU managed node group is left: two autoscalers on one pool would fight over its nodes."""
    res = result(stack_plan, "gpu-pool-hygiene")
    gpu = [e for e in res.evidence if e.get("gpu")]
    assert gpu and all(e["type"] == NODE_POOL for e in gpu)
    assert all(set(e["limits"]) == {"nvidia.com/gpu", "cpu"} for e in gpu)
    groups = [e for e in res.evidence if e.get("type") == NODE_GROUP]
    assert [e["pool"] for e in groups] == ["system"] * len(stack_plan.config.regions)


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
        # Room for both at max; the floor is one one-GPU replica of each. The US mid pools are left without a
        # model, so nothing keeps a node there (the EU ones keep mistral's).
        # The batch model idles at zero: the pool's floor is the 8B model's one replica.
        next(p for p in region["pools"] if p["name"] == "batch").update(min_nodes=1, max_nodes=8)
        next(p for p in region["pools"] if p["name"] == "mid").update(min_nodes=int(region["residency"] == "eu"))
    assert_rejected(result(plan_of(raw, "prod"), "gpu-pool-hygiene"),
                    "model llama-3-1-8b runs on spot pool batch in us-east-1 but is not marked batch-tolerant "
                    "(tier 'interactive')")


def test_gpu_pool_without_gpu_taint_is_rejected(prod_plan):
    """Program bug (simulated): the H100 NodePool in eu-north-1 is created without taints."""
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_POOL, "eu-north-1-h100")
                        .inputs["spec"]["template"]["spec"].pop("taints"))
    assert_rejected(result_of_resources(prod_plan, resources, "gpu-pool-hygiene"),
                    "GPU NodePool eu-north-1-h100 in eu-north-1 lacks the taint nvidia.com/gpu=present:NoSchedule")


def test_spot_pool_without_spot_taint_is_rejected(prod_plan):
    """Program bug (simulated): the spot pool in us-west-2 keeps only the GPU taint."""
    def drop_spot_taint(rs):
        spec = find(rs, NODE_POOL, "us-west-2-batch").inputs["spec"]["template"]["spec"]
        spec["taints"] = [t for t in spec["taints"] if t["key"] != "llm-platform/capacity"]
    resources = mutated(prod_plan, drop_spot_taint)
    assert_rejected(result_of_resources(prod_plan, resources, "gpu-pool-hygiene"),
                    "spot NodePool us-west-2-batch in us-west-2 "
                    "lacks the taint llm-platform/capacity=spot:NoSchedule")


def test_nodepool_without_gpu_limit_is_rejected(prod_plan):
    """Program bug (simulated): a NodePool loses its GPU limit: Karpenter would launch GPUs without bound."""
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_POOL, "us-east-1-mid")
                        .inputs["spec"]["limits"].pop("nvidia.com/gpu"))
    assert_rejected(result_of_resources(prod_plan, resources, "gpu-pool-hygiene"),
                    "NodePool us-east-1-mid in us-east-1 has no limit on nvidia.com/gpu")


def test_node_group_without_max_size_is_rejected(prod_plan):
    """Program bug (simulated): the system node group's scaling config loses its max size."""
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_GROUP, "us-east-1-system")
                        .inputs["scalingConfig"].pop("maxSize"))
    assert_rejected(result_of_resources(prod_plan, resources, "gpu-pool-hygiene"),
                    "node group us-east-1-system in us-east-1 has no max size")


def test_interactive_pool_that_consolidates_busy_nodes_is_rejected(prod_plan):
    """Program bug (simulated): the H100 pool may repack underused nodes, evicting a 70B replica mid-request."""
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_POOL, "us-east-1-h100")
                        .inputs["spec"]["disruption"].update(consolidationPolicy="WhenEmptyOrUnderutilized"))
    assert_rejected(result_of_resources(prod_plan, resources, "gpu-pool-hygiene"),
                    "NodePool us-east-1-h100 in us-east-1 consolidates with policy 'WhenEmptyOrUnderutilized'; "
                    "a non-spot GPU pool allows WhenEmpty")


def test_pools_disrupt_one_node_at_a_time_after_a_delay_and_drain_fully(prod_plan):
    for pool in prod_plan.of_type(NODE_POOL):
        spec = pool.inputs["spec"]
        assert spec["disruption"]["budgets"] == [{"nodes": "1"}], pool.name
        assert spec["disruption"]["consolidateAfter"] in ("5m", "10m"), pool.name
        # At least the vLLM drain (preStop 15 s + drain 120 s + margin 15 s).
        assert int(spec["template"]["spec"]["terminationGracePeriod"].removesuffix("s")) >= 150, pool.name
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_POOL, "eu-west-2-mid")
                        .inputs["spec"]["disruption"].pop("budgets"))
    assert_rejected(result_of_resources(prod_plan, resources, "gpu-pool-hygiene"),
                    "NodePool eu-west-2-mid in eu-west-2 has no disruption budget")


def test_nodeclass_without_imdsv2_or_encryption_is_rejected(prod_plan):
    """Program bug (simulated): eu-north-1's batch nodes allow IMDSv1 and an unencrypted root volume."""
    def weaken(rs):
        spec = find(rs, NODE_CLASS, "eu-north-1-batch-nodeclass").inputs["spec"]
        spec["metadataOptions"]["httpTokens"] = "optional"
        spec["blockDeviceMappings"][0]["ebs"]["encrypted"] = False
    res = result_of_resources(prod_plan, mutated(prod_plan, weaken), "gpu-pool-hygiene")
    assert_rejected(res, "NodePool eu-north-1-batch in eu-north-1: its EC2NodeClass does not require IMDSv2")
    assert_rejected(res, "NodePool eu-north-1-batch in eu-north-1: its EC2NodeClass does not encrypt every block "
                         "device")
