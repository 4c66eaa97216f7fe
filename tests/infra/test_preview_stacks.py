"""Ephemeral pr-<n> stacks: made from the preview template, tagged with their PR and expiry, scoped, and reaped."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from infra.cli import EXIT_CONFIG, main
from infra.config import ConfigError, parse, preview_config, read_stack
from infra.plan.cost import estimate
from infra.plan.mocks import GLOBAL
from infra.plan.run import Plan, run_program
from infra.platform import TAG_EXPIRES, TAG_PR
from infra.reaper import judge, reap, summary
from tests.stacks import stack_raw

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pr_plan() -> Plan:
    raw, _ = read_stack("pr-123", now=NOW)
    return run_program(raw, "pr-123")


def test_pr_config_is_the_preview_template_with_its_own_name_and_expiry() -> None:
    raw = preview_config(stack_raw("preview"), "pr-123", NOW)
    template = stack_raw("preview")
    assert raw["models"] == template["models"] and raw["regions"] == template["regions"]
    assert raw["budget"] == template["budget"]
    assert raw["gateway"]["domain"] == "pr-123.preview.llm.example.com"
    assert raw["preview"]["expires_at"] == "2026-11-26T08:00:00Z"  # 72 h later


def test_every_resource_is_tagged_with_the_pr_and_its_expiry(pr_plan: Plan) -> None:
    aws = [r for r in pr_plan.resources if r.type.startswith("aws:")]
    assert aws
    for r in aws:
        assert r.tags.get(TAG_PR) == "123", r.name
        assert r.tags.get(TAG_EXPIRES) == "2026-11-26T08:00:00Z", r.name
        assert r.tags.get("llm-platform:stack") == "pr-123", r.name


def test_secrets_live_under_the_pr_path(pr_plan: Plan) -> None:
    names = [s.inputs["name"] for s in pr_plan.of_type("aws:secretsmanager/secret:Secret")]
    assert names and all(n.startswith("llm-platform/pr-123/") for n in names)
    for policy in pr_plan.of_type("aws:iam/rolePolicy:RolePolicy"):
        for statement in json.loads(policy.inputs["policy"])["Statement"]:
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            assert not any(":secret:llm-platform/prod/" in r for r in resources)


def test_gpu_pools_are_spot_only(pr_plan: Plan) -> None:
    gpu = pr_plan.of_type("kubernetes:karpenter.sh/v1:NodePool")
    assert gpu and all({"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}
                       in r.inputs["spec"]["template"]["spec"]["requirements"] for r in gpu)


def test_its_own_budget_stays_under_the_preview_cap(pr_plan: Plan) -> None:
    (budget,) = pr_plan.of_type("aws:budgets/budget:Budget")
    cap = parse(stack_raw("preview"), "preview").budget.monthly_usd
    assert budget.inputs["name"] == "llm-platform-pr-123" and budget.region == GLOBAL
    assert float(budget.inputs["limitAmount"]) <= cap
    assert budget.inputs["costFilters"][0]["values"] == ["user:llm-platform:stack$pr-123"]
    assert estimate(pr_plan.resources, cap).monthly_usd_max <= cap


def test_preview_config_command_prints_a_stack_file_the_plan_accepts(tmp_path, capsys) -> None:
    assert main(["preview-config", "pr-7", "--now", "2026-11-23T08:00:00+00:00"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "Pulumi.pr-7.yaml"
    path.write_text(text)
    doc = yaml.safe_load(text)["config"]
    assert doc["pulumi:disable-default-providers"] == ["*"]
    assert doc["llm-platform:preview"]["expires_at"] == "2026-11-26T08:00:00Z"
    assert main(["plan", "--config-file", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["stack"] == "pr-7"


@pytest.mark.parametrize("stack", ["pr-abc", "pr-0", "preview-1"])
def test_preview_config_refuses_names_that_are_not_pr_numbers(stack: str, capsys) -> None:
    assert main(["preview-config", stack]) == EXIT_CONFIG
    assert "pr-<number>" in capsys.readouterr().err


def test_a_pr_stack_without_an_expiry_is_refused() -> None:
    raw = preview_config(stack_raw("preview"), "pr-9", NOW)
    del raw["preview"]["expires_at"]
    with pytest.raises(ConfigError, match="needs an expiry"):
        parse(raw, "pr-9")


# -- the reaper -----------------------------------------------------------------------------------

def test_reaper_removes_stacks_past_their_expiry_only() -> None:
    due = judge("pr-1", {"expires_at": (NOW - timedelta(hours=1)).isoformat()}, NOW)
    fresh = judge("pr-2", {"expires_at": "2026-11-24T00:00:00Z"}, NOW)
    assert due.expired and not fresh.expired


@pytest.mark.parametrize("value", [None, {}, {"expires_at": "next tuesday"}])
def test_reaper_keeps_and_reports_stacks_it_cannot_date(value) -> None:
    verdict = judge("pr-3", value, NOW)
    assert not verdict.expired and "check it by hand" in verdict.reason


def test_reaper_summary_lists_what_it_removed() -> None:
    verdicts = [judge("pr-1", {"expires_at": "2026-11-20T00:00:00Z"}, NOW),
                judge("pr-2", {"expires_at": "2026-11-30T00:00:00Z"}, NOW)]
    text = summary(verdicts, dry_run=False)
    assert "removed 1 of 2" in text and "| pr-1 |" in text and "kept" in text


def test_reaper_goes_on_after_a_failed_destroy_and_reports_it() -> None:
    """The Pulumi CLI is played by a function (the reaper's only boundary): pr-1's destroy fails."""
    import subprocess

    calls: list[list[str]] = []

    def pulumi(args: list[str]) -> str:
        calls.append(args)
        if args[:2] == ["stack", "ls"]:
            return json.dumps([{"name": "org/llm-platform/pr-1"}, {"name": "org/llm-platform/pr-2"},
                               {"name": "org/llm-platform/prod"}])
        if args[:2] == ["config", "get"]:
            return json.dumps({"objectValue": {"expires_at": "2026-11-20T00:00:00Z"}})
        if args[0] == "destroy" and "pr-1" in args:
            raise subprocess.CalledProcessError(255, ["pulumi", *args], stderr="error: resource busy")
        return ""

    verdicts = reap(NOW, dry_run=False, run=pulumi)
    assert [(v.stack, v.failed) for v in verdicts] == [("pr-1", True), ("pr-2", False)]
    assert ["stack", "rm", "--yes", "--stack", "pr-2"] in calls and not any("prod" in c for c in calls)
    assert "FAILED (destroy failed: error: resource busy)" in summary(verdicts, dry_run=False)


def test_report_to_an_unwritable_path_is_a_clear_error(capsys) -> None:
    assert main(["report", "--stack", "preview", "-o", "/nonexistent/dir/report.md"]) == EXIT_CONFIG
    assert "cannot write /nonexistent/dir/report.md" in capsys.readouterr().err


def test_preview_config_rejects_a_bad_now(capsys) -> None:
    assert main(["preview-config", "pr-5", "--now", "yesterday"]) == EXIT_CONFIG
    assert "--now" in capsys.readouterr().err
