"""`llmp plan`: what the JSON, table and Markdown renderings promise, and the exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infra.cli import EXIT_OK, EXIT_POLICY, main
from infra.config import ROOT
from tests.stacks import stack_raw, write_stack

CONTROLS = ["budget-cap", "region-residency", "failover-topology", "secret-scope", "gpu-pool-hygiene",
            "cluster-hardening", "version-support", "deployability", "capacity-fit"]


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


def test_prod_json_shows_gpu_node_groups_with_their_types_and_capacity(capsys) -> None:
    _, doc = plan_json(capsys, "--stack", "prod")
    groups = [r for r in doc["resources"] if r["type"] == "aws:eks/nodeGroup:NodeGroup"
              and r["inputs"]["amiType"] == "AL2023_x86_64_NVIDIA"]
    seen = {(g["region"], tuple(g["inputs"]["instanceTypes"]), g["inputs"]["capacityType"]) for g in groups}
    for region in ("us-east-1", "us-west-2", "eu-north-1", "eu-west-2"):
        assert (region, ("p5.48xlarge",), "ON_DEMAND") in seen
        if region == "eu-west-2":  # no g6e offered there: L4s
            assert (region, ("g6.12xlarge",), "ON_DEMAND") in seen
            assert (region, ("g6.xlarge", "g6.2xlarge"), "SPOT") in seen
        else:
            assert (region, ("g6e.12xlarge",), "ON_DEMAND") in seen
            assert (region, ("g6e.xlarge", "g6.xlarge", "g6.2xlarge"), "SPOT") in seen


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


def test_the_plan_says_where_a_pools_min_nodes_cap_a_models_configured_max(capsys) -> None:
    """No node autoscaler adds nodes: the us-east-1 mid pool's one g6e.12xlarge caps the 8B model at 4 of its 8."""
    main(["plan", "--stack", "prod", "--format", "markdown"])
    markdown = capsys.readouterr().out
    assert ("llama-3-1-8b (2–4, max 8 capped: no node autoscaler, pool mid holds 4 GPUs at 1 node)"
            in markdown)
    main(["plan", "--stack", "prod"])
    table = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "llama-3-1-8b ×2–4 (1 GPU; max 8 capped: no node autoscaler, pool mid holds 4 GPUs at 1 node)" in table
    _, doc = plan_json(capsys, "--stack", "prod")
    us = next(m for m in doc["regions"][0]["models"] if m["model"] == "llama-3-1-8b")
    assert (us["min_replicas"], us["max_replicas"]) == (2, 4) and us["capped"].startswith("max 8 capped")


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
