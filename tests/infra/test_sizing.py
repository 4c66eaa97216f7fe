"""Model replica sizes: a share of the pool's smallest node proportional to GPUs, beside the DaemonSets; overrides
that cannot fit are config errors naming the key, the model, the pool, the instance type and the resource."""
from __future__ import annotations

import pytest

from infra.catalog import load_catalog
from infra.chart_values import vllm_values
from infra.config import ConfigError, _nodes_for, parse
from infra.sizing import (
    DAEMONSET_HEADROOM,
    Resources,
    installs_node_autoscaler,
    model_resources,
    parse_cpu,
    parse_memory,
    smallest_share,
    usable,
)
from tests.stacks import stack_raw

CATALOG = load_catalog()
BATCH = 3  # models[3]: qwen2-5-7b-batch on the spot pool `batch`


def _prod(raw: dict | None = None):
    return parse(raw or stack_raw("prod"), "prod")


def _requests(cfg, region: str, model: str) -> dict[str, str]:
    m = next(x for x in cfg.models if x.name == model)
    values = vllm_values(cfg, m, cfg.region(region), role_arn="arn:aws:iam::123456789012:role/models")
    return values["resources"]["requests"]


def test_the_batch_model_fits_a_g6_xlarge_the_smallest_node_of_its_pool():
    """g6.xlarge: 4 vCPU, 16 GiB. Its kubelet keeps 80m and 893Mi + 100Mi eviction (58 pods), the DaemonSets
    their headroom: the replica gets the rest, not the 4 CPU / 32Gi every model once requested."""
    cfg = _prod()
    node = CATALOG.instance("g6.xlarge")
    for region in ("us-east-1", "us-west-2", "eu-north-1", "eu-west-2"):
        requests = _requests(cfg, region, "qwen2-5-7b-batch")
        assert parse_cpu(requests["cpu"]) == node.allocatable_cpu_millicores - DAEMONSET_HEADROOM.cpu_millicores
        assert parse_memory(requests["memory"]) == node.allocatable_memory_mib - DAEMONSET_HEADROOM.memory_mib
        assert parse_cpu(requests["cpu"]) < 4000 and parse_memory(requests["memory"]) < 16 * 1024


def test_a_pool_of_several_types_is_sized_for_the_one_with_the_least_room():
    name, share = smallest_share(["g6e.xlarge", "g6.xlarge", "g6.2xlarge"], 1, CATALOG)
    assert name == "g6.xlarge"
    for itype in ("g6e.xlarge", "g6.2xlarge"):
        room = usable(CATALOG.instance(itype))
        assert share.cpu_millicores <= room.cpu_millicores and share.memory_mib <= room.memory_mib


def test_the_share_is_proportional_to_gpus_and_a_full_node_holds_its_replicas():
    one = smallest_share(["g6e.12xlarge"], 1, CATALOG)[1]
    two = smallest_share(["g6e.12xlarge"], 2, CATALOG)[1]
    four = smallest_share(["g6e.12xlarge"], 4, CATALOG)[1]
    room = usable(CATALOG.instance("g6e.12xlarge"))
    assert two.memory_mib == pytest.approx(2 * one.memory_mib, abs=1)
    # Two 1-GPU replicas and a 2-GPU one fill the node and still fit beside the DaemonSets.
    assert 2 * one.cpu_millicores + two.cpu_millicores <= room.cpu_millicores
    assert 2 * one.memory_mib + two.memory_mib <= room.memory_mib
    assert (four.cpu_millicores, four.memory_mib) == (room.cpu_millicores, room.memory_mib)


def test_dev_shm_is_carved_out_of_the_memory_and_bounded():
    for itype, gpus in (("g6.xlarge", 1), ("g6e.12xlarge", 2), ("p5.48xlarge", 8)):
        share = smallest_share([itype], gpus, CATALOG)[1]
        assert 1024 <= share.shm_mib <= min(16 * 1024, share.memory_mib // 2), itype


def test_every_prod_pool_at_min_nodes_holds_its_models_floors_by_cpu_and_memory_too():
    """The scheduling check: every model's floor replicas, with their requests, placed on the pool's min_nodes
    nodes of its smallest type beside the DaemonSet headroom."""
    cfg = _prod()
    for region in cfg.regions:
        for pool in region.pools:
            models = [m for m in cfg.models_in(region.name) if m.pool == pool.name]
            name, _ = smallest_share(pool.instance_types, 1, CATALOG)
            node = CATALOG.instance(name)
            room = usable(node)
            nodes = [[node.gpus, room.cpu_millicores, room.memory_mib] for _ in range(pool.min_nodes)]
            for m in sorted(models, key=lambda x: -x.gpus):
                size = model_resources(m, pool, CATALOG)
                for _ in range(m.floor):
                    slot = next((n for n in nodes if n[0] >= m.gpus and n[1] >= size.cpu_millicores
                                 and n[2] >= size.memory_mib), None)
                    assert slot is not None, f"{m.name} in {region.name}: no node of pool {pool.name} holds it"
                    slot[0] -= m.gpus
                    slot[1] -= size.cpu_millicores
                    slot[2] -= size.memory_mib
            assert _nodes_for(models, node.gpus, {m.name: m.floor for m in models}) <= pool.min_nodes


def test_a_model_may_override_its_requests():
    raw = stack_raw("prod")
    raw["models"][BATCH]["resources"] = {"cpu": "2", "memory": "12Gi", "shm": "2Gi"}
    cfg = _prod(raw)
    model = cfg.models[BATCH]
    assert model_resources(model, cfg.region("us-east-1").pool("batch"), CATALOG) == Resources(2000, 12288, 2048)
    assert _requests(cfg, "us-east-1", model.name) == {"cpu": "2000m", "memory": "12288Mi"}


def test_an_override_keeps_the_computed_share_for_what_it_leaves_out():
    raw = stack_raw("prod")
    raw["models"][BATCH]["resources"] = {"cpu": 1.5}
    cfg = _prod(raw)
    size = model_resources(cfg.models[BATCH], cfg.region("us-east-1").pool("batch"), CATALOG)
    assert size.cpu_millicores == 1500
    assert size == Resources(1500, *(smallest_share(["g6.xlarge"], 1, CATALOG)[1].memory_mib,
                                     smallest_share(["g6.xlarge"], 1, CATALOG)[1].shm_mib))


def _problems(resources: dict) -> list[tuple[str, str]]:
    raw = stack_raw("prod")
    raw["models"][BATCH]["resources"] = resources
    with pytest.raises(ConfigError) as caught:
        _prod(raw)
    return caught.value.problems


def test_an_override_too_big_for_the_pools_smallest_instance_is_a_config_error_naming_everything():
    problems = _problems({"memory": "32Gi"})
    key = "llm-platform:models[3].resources.memory"
    messages = [msg for path, msg in problems if path == key]
    # Once per region the model runs in, each naming the model, pool, instance type and resource.
    assert len(messages) == 4, problems
    for region, msg in zip(("us-east-1", "us-west-2", "eu-north-1", "eu-west-2"), messages, strict=True):
        assert "qwen2-5-7b-batch" in msg and f"pool batch in {region}" in msg
        assert "g6.xlarge" in msg and "memory" in msg and "32Gi" in msg
    assert {path for path, _ in problems} == {key}


def test_too_much_cpu_is_named_as_cpu():
    problems = _problems({"cpu": "4"})
    assert {path for path, _ in problems} == {"llm-platform:models[3].resources.cpu"}
    assert "g6.xlarge" in problems[0][1] and "CPU" in problems[0][1]


@pytest.mark.parametrize(("resources", "key", "words"), [
    ({"memory": "lots"}, "memory", "is not a memory quantity"),
    ({"cpu": "two"}, "cpu", "is not a CPU quantity"),
    ({"cpu": "0"}, "cpu", "must be above zero"),
    ({"gpu": 1}, "gpu", "unknown key"),
    ({"memory": "8Gi", "shm": "10Gi"}, "shm", "counted in the replica's memory"),
], ids=["memory", "cpu", "zero cpu", "misspelt key", "shm above memory"])
def test_a_bad_override_is_refused_naming_the_field(resources, key, words):
    problems = _problems(resources)
    assert any(path == f"llm-platform:models[3].resources.{key}" and words in msg for path, msg in problems), problems


@pytest.mark.parametrize(("quantity", "mib"), [("32Gi", 32768), ("16384Mi", 16384), ("1G", 953), ("1.5Gi", 1536)])
def test_memory_quantities_read_as_kubernetes_does(quantity, mib):
    assert parse_memory(quantity) == mib


@pytest.mark.parametrize(("quantity", "millicores"), [("4", 4000), (4, 4000), (0.5, 500), ("3500m", 3500)])
def test_cpu_quantities_read_as_kubernetes_does(quantity, millicores):
    assert parse_cpu(quantity) == millicores


# --- how far an HPA may scale ------------------------------------------------------------------------------------
# Karpenter runs in every cluster (infra/components/karpenter.py): a Pending replica gets a node of its pool, up to
# the pool's limits (max_nodes), so every HPA keeps its configured max. The capping below min_nodes remains for a
# cluster without a node autoscaler, where an HPA maximum beyond what min_nodes hold would leave replicas Pending.

def _values(cfg, region: str, model: str) -> dict:
    m = next(x for x in cfg.models if x.name == model)
    return vllm_values(cfg, m, cfg.region(region), role_arn="arn:aws:iam::123456789012:role/models",
                       weights_source=f"s3://weights/{model}")


def _scaling(values: dict) -> dict:
    """Whether the release scales, and between which replica counts (the rest of its `autoscaling` is KEDA's)."""
    return {k: values["autoscaling"][k] for k in ("enabled", "minReplicas", "maxReplicas")}


@pytest.fixture
def fixed_pools(monkeypatch):
    """A cluster without a node autoscaler: pools stay at min_nodes."""
    import infra.sizing
    monkeypatch.setattr(infra.sizing, "installs_node_autoscaler", lambda cfg, region: False)


def test_every_cluster_installs_a_node_autoscaler():
    cfg = _prod()
    assert all(installs_node_autoscaler(cfg, r.name) for r in cfg.regions)


def test_with_karpenter_every_hpa_keeps_its_configured_max():
    """Pools grow to max_nodes, which the config check already holds every model at max replicas in."""
    cfg = _prod()
    assert _scaling(_values(cfg, "us-east-1", "llama-3-1-8b")) == {"enabled": True, "minReplicas": 2,
                                                                        "maxReplicas": 8}
    assert _scaling(_values(cfg, "us-east-1", "llama-3-3-70b")) == {"enabled": True, "minReplicas": 1,
                                                                         "maxReplicas": 2}
    assert _values(cfg, "eu-north-1", "mistral-small-24b")["autoscaling"]["maxReplicas"] == 4


def test_a_rollout_surges_where_max_nodes_leave_room_and_replaces_in_place_where_they_do_not():
    cfg = _prod()
    # us-east-1 mid: 8 replicas of one GPU fill its 2 nodes (8 GPUs): a replica goes before its successor starts.
    assert _values(cfg, "us-east-1", "llama-3-1-8b")["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    # The batch pool's 6 nodes hold its 6 one-GPU replicas and no seventh; its floor is one replica: Recreate.
    assert _values(cfg, "us-east-1", "qwen2-5-7b-batch")["strategy"] == {"type": "Recreate"}
    raw = stack_raw("prod")
    raw["regions"][0]["pools"][1]["max_nodes"] = 3  # a ninth GPU free beside all 8: the rollout may surge
    assert _values(_prod(raw), "us-east-1", "llama-3-1-8b")["strategy"]["rollingUpdate"] == {
        "maxSurge": 1, "maxUnavailable": 0}


def test_min_nodes_above_what_the_replica_floors_fill_is_refused():
    """Karpenter has no minimum size: it consolidates empty nodes away, so a larger floor cannot be honoured."""
    raw = stack_raw("prod")
    raw["regions"][0]["pools"][1]["min_nodes"] = 2
    with pytest.raises(ConfigError) as exc:
        parse(raw, "prod")
    assert ("llm-platform:regions[0].pools[1].min_nodes",
            "pool mid in us-east-1: min_nodes 2 cannot be honoured: Karpenter keeps only the nodes pods need, "
            "and its models' minimum replicas fill 1; set min_nodes to 1 or raise the models' replicas.min"
            ) in exc.value.problems


def test_a_larger_floor_comes_from_the_models_minimum_replicas():
    raw = stack_raw("prod")
    next(m for m in raw["models"] if m["name"] == "llama-3-1-8b")["replicas"]["min"] = 5  # 5 GPUs: two mid nodes
    with pytest.raises(ConfigError) as exc:
        parse(raw, "prod")
    assert any(path == "llm-platform:regions[0].pools[1].min_nodes" and "needs 2 node(s)" in msg
               for path, msg in exc.value.problems), exc.value.problems
    for region in raw["regions"]:
        next(p for p in region["pools"] if p["name"] == "mid")["min_nodes"] = 2
    parse(raw, "prod")


def test_without_a_node_autoscaler_the_us_8b_model_scales_only_to_what_one_mid_node_holds(fixed_pools):
    values = _values(_prod(), "us-east-1", "llama-3-1-8b")
    assert _scaling(values) == {"enabled": True, "minReplicas": 2, "maxReplicas": 4}
    # At 4 replicas the g6e.12xlarge's 4 GPUs are taken: a replica goes before its successor starts.
    assert values["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_without_a_node_autoscaler_a_model_whose_pool_holds_only_its_floor_gets_no_hpa(fixed_pools):
    cfg = _prod()  # us-east-1 h100 at one node: one 8-GPU replica, configured max 2
    seventy = _values(cfg, "us-east-1", "llama-3-3-70b")
    assert _scaling(seventy) == {"enabled": False, "minReplicas": 1, "maxReplicas": 1}
    assert seventy["strategy"] == {"type": "Recreate"}
    # One EU mid node: the 8B model first in config order (2 GPUs at its floor of 2), mistral's 2-GPU replica beside.
    eight, mistral = _values(cfg, "eu-north-1", "llama-3-1-8b"), _values(cfg, "eu-north-1", "mistral-small-24b")
    assert _scaling(eight) == {"enabled": False, "minReplicas": 2, "maxReplicas": 2}
    assert _scaling(mistral) == {"enabled": False, "minReplicas": 1, "maxReplicas": 1}
    assert mistral["strategy"] == {"type": "Recreate"}


def test_without_a_node_autoscaler_models_earlier_in_the_config_take_the_room_first(fixed_pools):
    """eu-north-1's mid pool at 2 nodes (8 GPUs, the floor of an 8B model at 4 and mistral at 1): the 8B model
    (first) scales to 6 beside mistral's floor of one 2-GPU replica; mistral (after it) gets what is left."""
    raw = stack_raw("prod")
    next(m for m in raw["models"] if m["name"] == "llama-3-1-8b")["replicas"]["min"] = 4
    for region in raw["regions"]:
        mid = next(p for p in region["pools"] if p["name"] == "mid")
        mid["min_nodes"] = 2 if region["residency"] == "eu" else 1
    cfg = _prod(raw)
    assert _values(cfg, "eu-north-1", "llama-3-1-8b")["autoscaling"]["maxReplicas"] == 6
    assert _values(cfg, "eu-north-1", "mistral-small-24b")["autoscaling"]["maxReplicas"] == 1
