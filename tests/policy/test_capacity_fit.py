"""Control capacity-fit: every pod the rendered manifests would run is placed on its pool's nodes at min and max
scale, pods per node included, and every rolling update can finish."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from infra.cli import EXIT_POLICY, main
from infra.config import ROOT
from infra.plan.manifests import render_release
from infra.policy.rules import PolicyConfig, Resources, capacity
from infra.policy.rules.workloads import Request, pod_request, pod_templates, rollout_fenceposts
from infra.sizing import installs_node_autoscaler
from tests.policy.helpers import (
    assert_passes,
    assert_rejected,
    find,
    mutated,
    result,
    result_of_resources,
    stack_raw,
)
from tests.stacks import write_stack

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
POOLS = (NODE_GROUP, NODE_POOL)
RELEASE = "kubernetes:helm.sh/v3:Release"
SURGE_ONE = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
UNAVAILABLE_ONE = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def _values(resources: list, name: str) -> dict:
    return find(resources, RELEASE, name).inputs["values"]


def _sized(values: dict, cpu: str, memory: str) -> None:
    """Pins a model's requests, whatever the program sizes them to: these tests are about the rule."""
    values["resources"] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}


def _mentioning(res, fragment: str) -> list[str]:
    return [v for v in res.violations if fragment in v]


# -- what the control judges ------------------------------------------------------------------------------------

def test_every_pool_is_judged_with_its_daemonsets_share(stack_plan):
    res = result(stack_plan, "capacity-fit")
    pools = [e for e in res.evidence if e.get("type") in POOLS]
    assert len(pools) == sum(len(stack_plan.of_type(t)) for t in POOLS)
    for e in pools:
        assert {"kube-system/aws-node", "kube-system/kube-proxy"} <= set(e["daemonsets"])
        assert ("nvidia-device-plugin/nvidia-device-plugin" in e["daemonsets"]) == (e["pool"] != "system")
        assert e["after_daemonsets"] != e["allocatable"]
    system = next(e for e in pools if e["pool"] == "system")
    assert system["node"] == "m7i.xlarge" and system["allocatable"] == "3.92 CPU, 15.03 GiB memory"


def test_gateway_pods_fit_the_system_nodes(stack_plan):
    res = result(stack_plan, "capacity-fit")
    pods = {e["pod"].split(" (")[0]: e for e in res.evidence if "pod" in e}
    for name in ("llm-gateway/gateway", "kube-system/aws-load-balancer-controller", "kube-system/coredns"):
        assert pods[name]["pools"] == ["system"], name
        assert not _mentioning(res, name), name
    assert pods["llm-gateway/gateway"]["requests"] == "0.5 CPU, 0.50 GiB memory"


def test_keda_and_metrics_server_pods_are_placed_on_the_system_nodes(prod_plan):
    """Two of each of KEDA's operator, metrics apiserver and webhooks, and two metrics-servers, per region, beside
    the gateway at its max, each with room for its rolling update's surge."""
    res = result(prod_plan, "capacity-fit")
    for name in ("keda/keda-operator", "keda/keda-operator-metrics-apiserver", "keda/keda-admission-webhooks",
                 "kube-system/metrics-server"):
        placed = [e for e in res.evidence if e.get("pod", "").startswith(f"{name} (")]
        assert len(placed) == len(prod_plan.config.regions), name
        assert all(e["pools"] == ["system"] and e["replicas"] == [2, 2] for e in placed), name
        assert not _mentioning(res, name), name


def test_a_scaled_objects_replica_range_is_judged_like_an_hpas():
    """KEDA creates the HPA at run time from the ScaledObject: its minReplicaCount and maxReplicaCount (KEDA's
    defaults 0 and 100) are the range; with an idleReplicaCount the workload rests there (a batch model idling at
    zero needs no node at min scale; woken, it is judged at its max with the pool grown)."""
    def deployment(name: str) -> dict:
        return {"kind": "Deployment", "metadata": {"name": name},
                "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c"}]}}}}

    def scaled(target: str, **spec) -> dict:
        return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": target},
                "spec": {"scaleTargetRef": {"name": target}, **spec}}
    pods = pod_templates([deployment("batch"), scaled("batch", idleReplicaCount=0, minReplicaCount=1,
                                                        maxReplicaCount=6),
                          deployment("bare"), scaled("bare"), deployment("fixed")], "us-east-1", "vllm", "llm-serving")
    assert {p.name: (p.min_replicas, p.max_replicas) for p in pods} == {"batch": (0, 6), "bare": (0, 100),
                                                                        "fixed": (1, 1)}


def test_add_on_charts_render_from_their_vendored_pinned_versions(prod_plan):
    res = result(prod_plan, "capacity-fit")
    for release in prod_plan.of_type(RELEASE):
        key = f"{release.inputs.get('namespace')}/{release.inputs.get('name')}"
        seen = next(e for e in res.evidence if e.get("release") == key and e.get("region") == release.region)
        # karpenter-crd holds only CustomResourceDefinitions: nothing the scheduler places.
        assert seen["rendered_objects"] > 0 or release.inputs.get("name") == "karpenter-crd", release.name
        if release.inputs.get("version"):
            chart = ROOT / seen["chart"]
            assert chart.parent == ROOT / "infra/plan/vendor/charts", release.name
            pinned = yaml.safe_load((chart / "Chart.yaml").read_text())
            name = str(release.inputs["chart"]).rsplit("/", 1)[-1]  # an OCI chart by its repository path
            assert (pinned["name"], str(pinned["version"])) == (name, release.inputs["version"])
            assert (chart / "LICENSE").is_file()
    vendored = Path(ROOT / "infra/plan/vendor/charts/secrets-store-csi-driver-provider-aws-3.1.1/charts")
    assert yaml.safe_load((vendored / "secrets-store-csi-driver/Chart.yaml").read_text())["version"] == "1.6.0"


def test_surge_percentages_round_up_and_unavailable_percentages_round_down():
    assert rollout_fenceposts({}, 3) == (1, 0)  # the defaults, 25% and 25%, of 3 pods
    assert rollout_fenceposts({"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}, 4) == (1, 1)
    assert rollout_fenceposts({"rollingUpdate": {"maxSurge": "0%", "maxUnavailable": "10%"}}, 5) == (0, 1)
    assert rollout_fenceposts({"type": "Recreate"}, 2) is None


# -- pods that can never be placed --------------------------------------------------------------------------------

def test_a_batch_model_larger_than_its_nodes_fails_naming_pod_pool_and_memory(prod_plan):
    """The batch model asks for 4 CPU and 32Gi; its pool's smallest node is a g6.xlarge (4 vCPU, 16 GiB)."""
    resources = mutated(prod_plan, lambda rs: _sized(_values(rs, "us-east-1-qwen2-5-7b-batch"), "4", "32Gi"))
    assert_rejected(result_of_resources(prod_plan, resources, "capacity-fit"),
                    "Deployment llm-serving/vllm-qwen2-5-7b-batch (us-east-1) can never be scheduled: it needs "
                    "4 CPU, 32.00 GiB memory, 1 GPU; pool batch node g6.xlarge has 3.5 CPU, 14.54 GiB memory, "
                    "1 GPU allocatable after DaemonSets",
                    "short of CPU: needs 4, has 3.5; memory: needs 32.00 GiB, has 14.54 GiB")


def test_a_model_needing_more_gpus_than_its_node_has_fails(prod_plan):
    """The 8B model asks for 8 GPUs on the mid pool, whose g6e.12xlarge nodes have 4."""
    def more_gpus(rs):
        values = _values(rs, "us-east-1-llama-3-1-8b")
        values["gpus"] = 8
        _sized(values, "4", "32Gi")
    res = result_of_resources(prod_plan, mutated(prod_plan, more_gpus), "capacity-fit")
    assert_rejected(res, "Deployment llm-serving/vllm-llama-3-1-8b (us-east-1) can never be scheduled",
                    "pool mid node g6e.12xlarge has", "short of nvidia.com/gpu: needs 8, has 4")


def test_a_pod_tolerating_no_pools_taints_fails_naming_each_pool(prod_plan):
    """The 8B model loses its GPU toleration: no pool it selects will take it."""
    resources = mutated(prod_plan, lambda rs: _values(rs, "us-east-1-llama-3-1-8b").update(tolerations=[]))
    assert_rejected(result_of_resources(prod_plan, resources, "capacity-fit"),
                    "Deployment llm-serving/vllm-llama-3-1-8b (us-east-1) can never be scheduled: no pool in "
                    "us-east-1 admits it",
                    "pool mid does not tolerate its taint nvidia.com/gpu=present:NoSchedule",
                    "pool system its nodes do not match the pod's nodeSelector llm-platform/pool=mid")


def test_a_release_whose_chart_is_not_vendored_fails(prod_plan):
    """The load balancer controller is bumped in the program but its chart is not vendored: nothing is known of its
    pods."""
    resources = mutated(prod_plan, lambda rs: find(rs, RELEASE, "us-east-1-aws-load-balancer-controller").inputs.update(
        version="3.99.0"))
    assert_rejected(result_of_resources(prod_plan, resources, "capacity-fit"),
                    "Helm release kube-system/aws-load-balancer-controller (us-east-1) cannot be rendered",
                    "chart aws-load-balancer-controller 3.99.0 is neither one of the project's charts nor vendored")


# -- what DaemonSets and pods per node leave -------------------------------------------------------------------------

def test_daemonsets_reduce_what_is_left_on_every_node_they_land_on(prod_plan):
    """A 3-CPU batch pod fits a g6.xlarge beside today's DaemonSets, and no longer once the device plugin asks
    for a whole CPU on every GPU node."""
    def small_batch(rs):
        values = _values(rs, "us-east-1-qwen2-5-7b-batch")
        _sized(values, "3", "8Gi")
        values["strategy"] = UNAVAILABLE_ONE  # its pool's one node has no room for a second copy
    fits = result_of_resources(prod_plan, mutated(prod_plan, small_batch), "capacity-fit")
    assert not _mentioning(fits, "vllm-qwen2-5-7b-batch (us-east-1)")

    def hungry_plugin(rs):
        small_batch(rs)
        _values(rs, "us-east-1-nvidia-device-plugin")["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
    res = result_of_resources(prod_plan, mutated(prod_plan, hungry_plugin), "capacity-fit")
    assert_rejected(res, "Deployment llm-serving/vllm-qwen2-5-7b-batch (us-east-1) can never be scheduled: it "
                         "needs 3 CPU, 8.00 GiB memory, 1 GPU; pool batch node g6.xlarge has 2.5 CPU, 13.54 GiB "
                         "memory, 1 GPU allocatable after DaemonSets (nvidia-device-plugin/nvidia-device-plugin",
                    "short of CPU: needs 3, has 2.5")


def test_more_pods_than_a_node_takes_fail_on_pods_per_node(prod_plan):
    """200 tiny gateway pods on three m7i.xlarge system nodes, which take 58 pods each (the DaemonSets' included)."""
    def many_gateways(rs):
        values = _values(rs, "us-east-1-gateway")
        values["autoscaling"].update(minReplicas=200, maxReplicas=200)
        values["resources"] = {"requests": {"cpu": "1m", "memory": "1Mi"}, "limits": {"memory": "1Mi"}}
    res = result_of_resources(prod_plan, mutated(prod_plan, many_gateways), "capacity-fit")
    assert_rejected(res, "at min scale", "replicas of StatefulSet llm-gateway/gateway (us-east-1) cannot be placed",
                    "pool system node m7i.xlarge, the roomiest it may land on, is short of pods: node is at its "
                    "max of 58")


def _karpenter(resources: list, region: str = "us-east-1"):
    """A node autoscaler's release in `region`, as the program will record one (issue 13)."""
    return find(resources, RELEASE, f"{region}-gateway").__class__(
        RELEASE, f"{region}-karpenter", region, {"chart": "karpenter", "version": "1.6.0"})


def _without_karpenter(resources: list, region: str = "us-east-1") -> list:
    """The record less `region`'s Karpenter releases: a cluster whose pools never grow past their min."""
    return [r for r in resources if not (r.type == RELEASE and r.region == region
                                         and str(r.inputs.get("chart", "")).rsplit("/", 1)[-1].startswith("karpenter"))]


def _hpa_of_the_8b_model(max_replicas: int):
    """The 8B model in us-east-1 (one mid node of 4 GPUs, at most 2) scaling from 2 to `max_replicas`."""
    def change(rs):
        values = _values(rs, "us-east-1-llama-3-1-8b")
        values["autoscaling"].update(enabled=True, minReplicas=2, maxReplicas=max_replicas)
        _sized(values, "4", "32Gi")
    return change


def test_an_hpa_beyond_what_min_nodes_hold_fails_where_no_node_autoscaler_runs(prod_plan):
    """Without Karpenter nothing adds nodes, so the mid pool is its one node however busy the model gets: the HPA's
    5th to 8th replicas would wait Pending for good (and a rollout begun at that scale with them)."""
    resources = _without_karpenter(mutated(prod_plan, _hpa_of_the_8b_model(8)))
    res = result_of_resources(prod_plan, resources, "capacity-fit")
    assert_rejected(res, "at max scale (on min nodes: no node autoscaler is installed, so pools never grow) 4 of "
                         "8 replicas of Deployment llm-serving/vllm-llama-3-1-8b (us-east-1) cannot be placed",
                    "pool mid node g6e.12xlarge", "nvidia.com/gpu: needs 1, has 0")
    assert not _mentioning(res, "at min scale")


def test_the_same_hpa_fits_where_karpenter_runs(prod_plan):
    """With Karpenter in the region the mid pool may grow to the 2 nodes its limits admit: 8 one-GPU replicas fit."""
    res = result_of_resources(prod_plan, mutated(prod_plan, _hpa_of_the_8b_model(8)), "capacity-fit")
    assert res.status == "pass", res.violations


def test_a_nodepools_max_scale_is_what_its_limits_admit(prod_plan):
    """us-east-1's mid NodePool limited to 4 GPUs (one g6e.12xlarge): Karpenter launches no second node, so the
    HPA's 5th to 8th replicas never run."""
    def one_node(rs):
        _hpa_of_the_8b_model(8)(rs)
        find(rs, NODE_POOL, "us-east-1-mid").inputs["spec"]["limits"]["nvidia.com/gpu"] = "4"
    res = result_of_resources(prod_plan, mutated(prod_plan, one_node), "capacity-fit")
    assert_rejected(res, "at max scale 4 of 8 replicas of Deployment llm-serving/vllm-llama-3-1-8b (us-east-1) "
                         "cannot be placed", "pool mid node g6e.12xlarge", "nvidia.com/gpu: needs 1, has 0")


def test_karpenter_runs_on_the_system_nodes_beside_the_gateway(stack_plan):
    res = result(stack_plan, "capacity-fit")
    pods = [e for e in res.evidence if str(e.get("pod", "")).startswith("kube-system/karpenter ")]
    assert len(pods) == len(stack_plan.config.regions)
    for e in pods:
        assert e["pools"] == ["system"] and e["requests"] == "1 CPU, 1.00 GiB memory", e
        assert e["replicas"] == [min(2, stack_plan.config.cluster.system_nodes)] * 2, e
        assert not _mentioning(res, e["pod"])


KARPENTER_POD = "kube-system/karpenter (us-east-1)"


def test_the_prod_system_nodes_hold_karpenters_two_replicas_on_distinct_nodes(prod_plan):
    """Karpenter's chart requires its replicas on distinct nodes (a required pod anti-affinity on the hostname) with
    1 CPU each: prod's three m7i.xlarge system nodes, beside the gateway, the add-ons and the DaemonSets as rendered,
    hold the two replicas on two different nodes."""
    release = find(prod_plan.resources, RELEASE, "us-east-1-karpenter")
    rendered = render_release(release)
    (pod,) = [p for p in pod_templates(rendered.objects, "us-east-1", rendered.name, "kube-system")
              if p.kind == "Deployment"]
    assert pod.one_per_node and (pod.min_replicas, pod.max_replicas) == (2, 2)
    nodes = capacity.nodes_at_min_scale(Resources(prod_plan.resources), "us-east-1")
    system = [held for pool, held in nodes if pool == "system"]
    assert len(system) == prod_plan.config.cluster.system_nodes == 3
    assert sum(KARPENTER_POD in held for held in system) == 2, system
    assert_passes(result(prod_plan, "capacity-fit"))


def test_more_karpenter_replicas_than_system_nodes_fail_on_its_hostname_anti_affinity(prod_plan):
    """Four replicas on three system nodes: there is CPU for a fourth, but no node without one already."""
    resources = mutated(prod_plan, lambda rs: find(rs, RELEASE, "us-east-1-karpenter").inputs["values"].update(
        replicas=4))
    res = result_of_resources(prod_plan, resources, "capacity-fit")
    assert_rejected(res, f"1 of 4 replicas of Deployment {KARPENTER_POD} cannot be placed",
                    "each of the 3 node(s) it may land on already runs one of its replicas (required pod "
                    "anti-affinity on kubernetes.io/hostname)")


def test_replicas_beyond_the_pools_max_scale_fail(prod_plan):
    """12 one-GPU replicas of the 8B model on a mid pool of at most 2 nodes of 4 GPUs: too many even though
    Karpenter may grow the pool to its max_nodes."""
    res = result_of_resources(prod_plan, mutated(prod_plan, _hpa_of_the_8b_model(12)), "capacity-fit")
    assert_rejected(res, "at max scale 4 of 12 replicas of Deployment llm-serving/vllm-llama-3-1-8b (us-east-1) "
                         "cannot be placed", "pool mid node g6e.12xlarge", "nvidia.com/gpu: needs 1, has 0")
    assert not _mentioning(res, "at min scale")


def test_the_program_and_the_control_agree_on_whether_pools_grow(prod_plan, preview_plan):
    """The program caps HPAs at what min_nodes hold unless it installs a node autoscaler; the control reads the
    same fact from the record (a cluster-autoscaler or Karpenter release). Every cluster gets Karpenter."""
    for plan in (prod_plan, preview_plan):
        for region in plan.config.regions:
            assert capacity.node_autoscaled(Resources(plan.resources), region.name) == \
                installs_node_autoscaler(plan.config, region.name) is True, region.name


def test_a_daemonset_larger_than_the_nodes_it_must_run_on_fails(prod_plan):
    """The device plugin asks for 200 CPUs on every GPU node; a p5.48xlarge has 192 vCPUs."""
    resources = mutated(prod_plan, lambda rs: _values(rs, "us-east-1-nvidia-device-plugin").update(
        resources={"requests": {"cpu": "200"}}))
    assert_rejected(result_of_resources(prod_plan, resources, "capacity-fit"),
                    "DaemonSet nvidia-device-plugin/nvidia-device-plugin (us-east-1) cannot run on pool h100 node "
                    "p5.48xlarge beside the DaemonSets before it (none): short of CPU: needs 200, has 191.45")


def test_a_pool_of_instance_types_the_catalog_does_not_know_fails(prod_plan):
    def unknown_type(rs):
        requirements = find(rs, NODE_POOL, "us-east-1-mid").inputs["spec"]["template"]["spec"]["requirements"]
        next(r for r in requirements if r["key"] == "node.kubernetes.io/instance-type")["values"] = ["g9.12xlarge"]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, unknown_type), "capacity-fit"),
                    "NodePool us-east-1-mid (us-east-1): none of its instance types ['g9.12xlarge'] is in the "
                    "catalog")


# -- rolling updates ----------------------------------------------------------------------------------------------

def _full_mid_pool(strategy: dict, floor: int = 4):
    """The 8B model fills us-east-1's one mid node (4 GPUs) with 4 one-GPU replicas at its HPA's max."""
    def change(rs):
        values = _values(rs, "us-east-1-llama-3-1-8b")
        values.update(replicaCount=floor, strategy=strategy)
        values["autoscaling"].update(enabled=floor < 4, minReplicas=floor, maxReplicas=4)
        _sized(values, "4", "32Gi")
    return change


def test_a_full_pool_with_surge_one_and_no_unavailability_fails_naming_the_rollout(prod_plan):
    """Where no node autoscaler runs, the pool is its min nodes when the update starts."""
    resources = _without_karpenter(mutated(prod_plan, _full_mid_pool(SURGE_ONE)))
    res = result_of_resources(prod_plan, resources, "capacity-fit")
    assert_rejected(res, "rolling update of Deployment llm-serving/vllm-llama-3-1-8b (us-east-1) can never finish: "
                         "maxSurge 1 / maxUnavailable 0 needs one more pod (4 CPU, 32.00 GiB memory, 1 GPU) beside "
                         "its 4 replica(s) at their HPA max and every other pod at its max, before any old pod goes, "
                         "but at its pools' min = desired size (no node "
                         "autoscaler is installed) pool mid node g6e.12xlarge",
                    "short of nvidia.com/gpu: needs 1, has 0")


def test_a_surge_is_judged_with_the_hpa_at_its_max_not_its_min(prod_plan):
    """Two replicas leave two GPUs free, but the HPA may have scaled to 4 when the update starts: the surge pod
    then has no GPU, and the rollout never progresses."""
    resources = _without_karpenter(mutated(prod_plan, _full_mid_pool(SURGE_ONE, floor=2)))
    res = result_of_resources(prod_plan, resources, "capacity-fit")
    assert_rejected(res, "rolling update of Deployment llm-serving/vllm-llama-3-1-8b (us-east-1) can never finish: "
                         "maxSurge 1 / maxUnavailable 0 needs one more pod (4 CPU, 32.00 GiB memory, 1 GPU) beside "
                         "its 4 replica(s) at their HPA max",
                    "short of nvidia.com/gpu: needs 1, has 0")
    assert not _mentioning(res, "replicas of Deployment llm-serving/vllm-llama-3-1-8b (us-east-1) cannot be placed")


def test_a_full_pool_with_surge_zero_and_one_unavailable_passes(prod_plan):
    resources = mutated(prod_plan, _full_mid_pool(UNAVAILABLE_ONE))
    res = result_of_resources(prod_plan, resources, "capacity-fit")
    assert not _mentioning(res, "vllm-llama-3-1-8b (us-east-1)"), res.violations
    pods = [e for e in res.evidence if e.get("pod") == "llm-serving/vllm-llama-3-1-8b (us-east-1)"]
    assert pods and pods[0]["replicas"] == [4, 4] and pods[0]["pools"] == ["mid"]


def test_replicas_that_do_not_fit_before_an_update_are_reported_once(prod_plan):
    """Five one-GPU replicas on one 4-GPU node: the fifth never runs, which is the finding, not the rollout."""
    def five(rs):
        _full_mid_pool(SURGE_ONE)(rs)
        values = _values(rs, "us-east-1-llama-3-1-8b")
        values.update(replicaCount=5)
        values["autoscaling"].update(minReplicas=5)
    res = result_of_resources(prod_plan, mutated(prod_plan, five), "capacity-fit")
    assert _mentioning(res, "at min scale 1 of 5 replicas of Deployment llm-serving/vllm-llama-3-1-8b (us-east-1)")
    assert not _mentioning(res, "rolling update of Deployment llm-serving/vllm-llama-3-1-8b (us-east-1)")


def test_a_node_autoscaler_lets_a_rollout_use_the_pools_max_size(prod_plan):
    """With Karpenter the surge pod makes the mid pool grow to its second node."""
    resources = mutated(prod_plan, _full_mid_pool(SURGE_ONE))
    res = result_of_resources(prod_plan, resources, "capacity-fit")
    assert not _mentioning(res, "vllm-llama-3-1-8b (us-east-1)"), res.violations
    assert capacity.node_autoscaled(Resources(resources), "us-east-1")
    assert not capacity.node_autoscaled(Resources(_without_karpenter(resources)), "us-east-1")
    policy = PolicyConfig.from_stack(prod_plan.config)
    found = capacity.check(Resources(resources), policy, node_autoscaler=False)
    assert [v for v in found.violations if "rolling update of Deployment llm-serving/vllm-llama-3-1-8b" in v]


# -- the shipped stacks -------------------------------------------------------------------------------------------
# Before pods were sized from the catalog, prod's batch model asked 4 CPU / 32 GiB of a g6.xlarge (3.65 CPU /
# 14.80 GiB after DaemonSets), and full pools rolled out with maxSurge 1 / maxUnavailable 0: the 70B model in every
# region and the EU mid models could never finish a rollout. The fixtures above keep those shapes failing.

def test_prod_places_every_pod_and_finishes_every_rollout(prod_plan):
    res = result(prod_plan, "capacity-fit")
    assert res.status == "pass", res.violations


def test_preview_places_every_pod_and_finishes_every_rollout(preview_plan):
    res = result(preview_plan, "capacity-fit")
    assert res.status == "pass", res.violations


# -- how a pod is read ----------------------------------------------------------------------------------------------

def test_a_pod_requests_the_larger_of_its_containers_sum_and_its_largest_init_container():
    spec = {"initContainers": [{"name": "fetch", "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}},
                           # only a limit: the API server makes it the request too
                           {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}}],
            "overhead": {"cpu": "100m"}}
    assert pod_request(spec) == Request(cpu_m=3100, memory=3 * 2 ** 30, gpus=0)


def test_helm_install_hooks_are_placed_and_test_hooks_are_not():
    def job(name: str, hook: str) -> dict:
        return {"kind": "Job", "metadata": {"name": name, "annotations": {"helm.sh/hook": hook}},
                "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}
    pods = pod_templates([job("admission-create", "pre-install,pre-upgrade"), job("smoke", "test")],
                         "us-east-1", "kube-system", "aws-load-balancer-controller")
    assert [p.name for p in pods] == ["admission-create"]


def test_at_preview_values_not_yet_known_are_stood_in_for_and_the_pods_still_judged(prod_plan):
    """A first `pulumi preview` does not know the model server role's ARN yet; CrossGuard hands the values over as
    proxies that raise on it. The release still renders (an empty ARN stands in) and its pods are still placed."""
    release = copy.deepcopy(find(prod_plan.resources, RELEASE, "us-east-1-llama-3-1-8b"))
    release.inputs["values"]["serviceAccount"]["roleArn"] = UNKNOWN_STRING_VALUE
    release.inputs = unknown_checking_proxy(dict(release.inputs))
    rendered = render_release(release)
    assert rendered.had_unknowns and not rendered.error
    assert [o["metadata"]["name"] for o in rendered.objects if o["kind"] == "Deployment"] == ["vllm-llama-3-1-8b"]


def test_llmp_plan_exits_1_naming_the_pod_and_what_is_missing(tmp_path, capsys):
    """Preview's gateway may scale to 40 replicas of half a CPU, but its system pool grows to 2 m7i.xlarge at most."""
    raw = stack_raw("preview")
    raw["gateway"]["replicas"] = {"min": 1, "max": 40}
    code = main(["plan", "--stack", "preview", "--config-file", str(write_stack(tmp_path, raw, "preview")),
                 "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == EXIT_POLICY
    fit = next(p for p in doc["policies"] if p["id"] == "capacity-fit")
    assert fit["status"] == "fail"
    assert any(v.startswith("at max scale") and "replicas of StatefulSet llm-gateway/gateway (us-east-1) cannot be "
               "placed (0.5 CPU, 0.50 GiB memory each)" in v and "pool system node m7i.xlarge" in v
               and "short of CPU" in v for v in fit["violations"]), fit["violations"]
