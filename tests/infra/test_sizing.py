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
                for _ in range(max(1, m.replicas.min)):
                    slot = next((n for n in nodes if n[0] >= m.gpus and n[1] >= size.cpu_millicores
                                 and n[2] >= size.memory_mib), None)
                    assert slot is not None, f"{m.name} in {region.name}: no node of pool {pool.name} holds it"
                    slot[0] -= m.gpus
                    slot[1] -= size.cpu_millicores
                    slot[2] -= size.memory_mib
            assert _nodes_for(models, node.gpus, {m.name: max(1, m.replicas.min) for m in models}) <= pool.min_nodes


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
