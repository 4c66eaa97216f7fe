"""The vLLM releases as the program records them: awaited, with a timeout a slow model load fits in."""
from __future__ import annotations

from infra.chart_values import VLLM_CHART, rollout_timeout_seconds
from infra.plan.run import Plan

RELEASE = "kubernetes:helm.sh/v3:Release"


def _vllm_releases(plan: Plan) -> list:
    return [r for r in plan.of_type(RELEASE) if r.inputs["chart"] == str(VLLM_CHART)]


def test_model_releases_are_awaited_so_a_stuck_rollout_fails_the_deploy(prod_plan: Plan) -> None:
    """skip_await hid rollouts that never finished (a surge replica Pending on a full pool): the deploy reported
    success while the model kept its old version."""
    releases = _vllm_releases(prod_plan)
    assert releases
    for release in releases:
        assert not release.inputs.get("skipAwait"), release.inputs["name"]
        # Not atomic: a rollback of a half-done roll on a full pool would take another replica down.
        assert not release.inputs.get("atomic"), release.inputs["name"]


def test_the_await_outlasts_every_replicas_drain_pull_and_startup_budget(prod_plan: Plan) -> None:
    for release in _vllm_releases(prod_plan):
        values = release.inputs["values"]
        drain = values["drain"]
        grace = drain["preStopSeconds"] + drain["timeoutSeconds"] + drain["marginSeconds"]
        startup = values["probes"]["startup"]  # sized from the checkpoint and where it loads from
        startup_budget = startup["periodSeconds"] * startup["failureThreshold"]
        timeout = release.inputs["timeout"]
        assert timeout == rollout_timeout_seconds(values)
        # Every replica that can be live when the update starts, the HPA's max, replaced in turn.
        scaling = values["autoscaling"]
        live = scaling["maxReplicas"] if scaling["enabled"] else values["replicaCount"]
        assert timeout >= live * (grace + startup_budget), release.inputs["name"]


def test_the_us_8b_models_await_covers_the_8_replicas_its_hpa_may_run_not_its_floor_of_2(prod_plan: Plan) -> None:
    """Karpenter grows the mid pool to its two nodes, so the HPA may run the configured 8."""
    release = next(r for r in _vllm_releases(prod_plan)
                   if r.region == "us-east-1" and r.inputs["name"] == "vllm-llama-3-1-8b")
    values = release.inputs["values"]
    assert (values["replicaCount"], values["autoscaling"]["maxReplicas"]) == (2, 8)
    one = rollout_timeout_seconds({**values, "replicaCount": 1, "autoscaling": {"enabled": False}}) - 300
    assert release.inputs["timeout"] == 8 * one + 300
