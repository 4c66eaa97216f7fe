"""`llmp plan`: what the JSON, table and Markdown renderings promise, and the exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infra.cli import EXIT_CONFIG, EXIT_OK, EXIT_POLICY, main
from infra.config import ROOT
from tests.stacks import stack_raw, write_stack

CONTROLS = ["budget-cap", "region-residency", "failover-topology", "secret-scope", "gpu-pool-hygiene",
            "cluster-hardening", "data-stores", "version-support", "deployability", "capacity-fit"]


def plan_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["plan", *args, "--format", "json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_prod_json_has_every_field_and_all_four_regions(capsys) -> None:
    code, doc = plan_json(capsys, "--stack", "prod")
    assert code == EXIT_OK
    assert doc["stack"] == "prod"
    assert [r["name"] for r in doc["regions"]] == ["us-east-1", "us-west-2", "eu-north-1", "eu-west-2"]
    assert all({"type", "name", "region", "inputs"} <= set(r) for r in doc["resources"])
    assert {"monthly_usd_min", "monthly_usd_max", "budget_usd"} <= set(doc["cost"])
    assert doc["cost"]["monthly_usd_min"] < doc["cost"]["monthly_usd_max"] <= doc["cost"]["budget_usd"]
    assert [p["id"] for p in doc["policies"]] == CONTROLS
    for p in doc["policies"]:
        assert p["status"] == "pass" and p["enforcement"] in ("mandatory", "advisory") and p["violations"] == []


def test_prod_json_shows_gpu_node_pools_with_their_types_and_capacity(capsys) -> None:
    _, doc = plan_json(capsys, "--stack", "prod")
    pools = [r for r in doc["resources"] if r["type"] == "kubernetes:karpenter.sh/v1:NodePool"]

    def requirement(pool: dict, key: str) -> tuple[str, ...]:
        return tuple(next(r["values"] for r in pool["inputs"]["spec"]["template"]["spec"]["requirements"]
                          if r["key"] == key))
    seen = {(p["region"], requirement(p, "node.kubernetes.io/instance-type"),
             requirement(p, "karpenter.sh/capacity-type")) for p in pools}
    for region in ("us-east-1", "us-west-2", "eu-north-1", "eu-west-2"):
        assert (region, ("p5.48xlarge",), ("reserved",)) in seen
        if region == "eu-west-2":  # no g6e offered there: L4s
            assert (region, ("g6.12xlarge",), ("on-demand",)) in seen
            assert (region, ("g6.xlarge", "g6.2xlarge"), ("spot",)) in seen
        else:
            assert (region, ("g6e.12xlarge",), ("on-demand",)) in seen
            assert (region, ("g6e.xlarge", "g6.xlarge", "g6.2xlarge"), ("spot",)) in seen


def test_preview_json(capsys) -> None:
    code, doc = plan_json(capsys, "--stack", "preview")
    assert code == EXIT_OK
    assert [r["name"] for r in doc["regions"]] == ["us-east-1"]
    assert all(p["capacity"] == "spot" for p in doc["regions"][0]["pools"] if p["name"] != "system")
    assert doc["cost"]["monthly_usd_max"] <= doc["cost"]["budget_usd"] == 3000


def test_table_lists_regions_pools_models_cost_and_controls(capsys) -> None:
    assert main(["plan", "--stack", "prod"]) == EXIT_OK
    out = capsys.readouterr().out
    for word in ["us-east-1", "eu-west-2", "p5.48xlarge", "llama-3-3-70b", "$500,000", *CONTROLS]:
        assert word in out


def test_the_plan_shows_each_pools_autoscaling_range_and_its_cost_at_both_ends(capsys) -> None:
    """Karpenter grows the us-east-1 mid pool from its one g6e.12xlarge to two: the 8B model scales to its 8."""
    _, doc = plan_json(capsys, "--stack", "prod")
    us = next(m for m in doc["regions"][0]["models"] if m["model"] == "llama-3-1-8b")
    assert (us["min_replicas"], us["max_replicas"], us["capped"]) == (2, 8, "")
    mid = next(p for p in doc["regions"][0]["pools"] if p["name"] == "mid")
    assert (mid["min_nodes"], mid["max_nodes"], mid["autoscaler"]) == (1, 2, "karpenter")
    assert mid["monthly_usd_max"] == 2 * mid["monthly_usd_min"] > 0
    h100 = next(p for p in doc["regions"][0]["pools"] if p["name"] == "h100")
    assert h100["monthly_usd_min"] == h100["monthly_usd_max"]  # the reservation bills whether used or not
    main(["plan", "--stack", "prod", "--format", "markdown"])
    markdown = capsys.readouterr().out
    assert "llama-3-1-8b (2–8)" in markdown and "capped" not in markdown
    usd = f"${mid['monthly_usd_min']:,.0f}–${mid['monthly_usd_max']:,.0f}"
    assert f"| 1–2 | llama-3-1-8b (2–8) | {usd} |" in markdown
    main(["plan", "--stack", "prod"])
    table = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "1–2 (Karpenter)" in table and f"{usd}/month" in table


def test_markdown_for_the_pr_comment(capsys) -> None:
    assert main(["plan", "--stack", "preview", "--format", "markdown"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("### llm-platform plan: `preview`")
    assert "| `budget-cap` | mandatory | pass |" in out


def test_a_mandatory_control_failing_exits_1_and_says_which(tmp_path, capsys) -> None:
    raw = stack_raw("prod")
    raw["budget"]["monthly_usd"] = 250_000  # below the max-scale estimate
    code, doc = plan_json(capsys, "--stack", "prod", "--config-file", str(write_stack(tmp_path, raw)))
    assert code == EXIT_POLICY
    failed = {p["id"]: p for p in doc["policies"] if p["status"] == "fail"}
    assert list(failed) == ["budget-cap"] and failed["budget-cap"]["violations"]


def test_json_output_is_only_json_even_as_a_process() -> None:
    proc = subprocess.run([sys.executable, "-m", "infra.cli", "plan", "--stack", "preview", "--format", "json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stack"] == "preview"


@pytest.mark.parametrize("stack", ["pr-123"])
def test_an_ephemeral_stack_plans_from_the_preview_template(capsys, stack: str) -> None:
    code, doc = plan_json(capsys, "--stack", stack)
    assert code == EXIT_OK and doc["stack"] == stack and doc["environment"] == "preview"


def test_the_plan_shows_each_regions_elastic_capacity_add_ons_and_no_ingress_nginx(capsys) -> None:
    """Per region: Karpenter with a NodePool per GPU pool and its interruption queue and rules, KEDA scaling each
    model (the batch one idling at zero), the metrics stack and dashboards, the AWS Load Balancer Controller."""
    _, doc = plan_json(capsys, "--stack", "prod")
    for region in doc["regions"]:
        assert {"karpenter", "karpenter-crd", "keda", "metrics-server", "kube-prometheus-stack", "dcgm-exporter",
                "aws-load-balancer-controller"} <= set(region["addons"]), region["name"]
        assert "ingress-nginx" not in region["addons"]
        assert region["elastic"][0] == ("Karpenter: 3 NodePools with their EC2NodeClasses, 1 interruption queue(s) "
                                        "fed by 5 EventBridge rules")
        assert "qwen2-5-7b-batch idle at 0 until called" in region["elastic"][1]
        assert region["elastic"][2] == "dashboards: gateway, gpu, vllm"
        batch = next(m for m in region["models"] if m["model"] == "qwen2-5-7b-batch")
        assert batch["min_replicas"] == 0
    main(["plan", "--stack", "prod"])
    table = capsys.readouterr().out
    assert "add-ons: aws-load-balancer-controller 3.5.0" in table and "nginx" not in table


def test_a_stack_that_does_not_exist_is_named_with_the_stacks_that_do(capsys) -> None:
    assert main(["plan", "--stack", "prdo"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "no stack 'prdo': there is no Pulumi.prdo.yaml. Stacks here: preview, prod, and pr-<number>" in err
    assert err.rstrip().endswith("did you mean prod?")


def test_the_program_run_by_python_itself_says_how_to_run_it_in_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "infra"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "use `pulumi up`" in result.stderr and "`llmp plan --stack <name>`" in result.stderr


def test_on_a_terminal_the_plan_shows_its_phases_and_piped_it_prints_nothing_on_stderr(capsys, monkeypatch) -> None:
    from io import StringIO

    from rich.console import Console

    from infra.plan import progress

    screen, seen = StringIO(), []
    enter = progress.Progress.__enter__
    monkeypatch.setattr(progress.Progress, "__enter__", lambda self: seen.append(self) or enter(self))
    monkeypatch.setattr(progress, "Console", lambda **_: Console(file=screen, force_terminal=True, width=200))
    code, doc = plan_json(capsys, "--stack", "preview")
    charts = sum(r["type"] == "kubernetes:helm.sh/v3:Release" for r in doc["resources"])
    assert code == EXIT_OK and charts > 0
    assert seen[0].phases == ["running the Pulumi program for stack preview under the mock engine",
                              f"rendering {charts} Helm charts", "evaluating policy controls"]
    assert "running the Pulumi program for stack preview under the mock engine…" in screen.getvalue()
    monkeypatch.undo()
    assert main(["plan", "--stack", "preview", "--format", "json"]) == EXIT_OK
    assert capsys.readouterr().err == ""  # not a terminal: nothing but the JSON on stdout


def test_every_command_says_what_its_exit_codes_mean(capsys) -> None:
    for command in ("plan", "preview-config", "deploy-hub-targets", "reap", "ci-role"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "exit codes:" in text and "\n  2  something to fix on your side" in text, command
