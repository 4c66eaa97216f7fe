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
        assert timeout >= values["replicaCount"] * (grace + startup_budget), release.inputs["name"]
