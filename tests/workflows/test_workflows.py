"""The delivery workflows: lint clean (actionlint, zizmor), and shaped the way the preview flow needs."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONS = sorted((ROOT / ".github" / "actions").glob("*/action.yml"))
LOCAL_ACTION = "./.github/actions/pulumi-env"
ACTIONLINT = Path(__file__).with_name("actionlint.cjs")
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


def actionlint(*paths: Path) -> list[dict]:
    node = shutil.which("node")
    assert node, "node is required for actionlint (install Node.js 20+)"
    modules = ROOT / "node_modules"
    assert (modules / "@tktco" / "node-actionlint").is_dir(), "run `make test` (npm ci) to install actionlint"
    proc = subprocess.run([node, str(ACTIONLINT), *map(str, paths)], capture_output=True, text=True,
                          env={**os.environ, "NODE_PATH": str(modules)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def load(name: str) -> dict:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def test_there_are_four_workflows() -> None:
    assert [w.name for w in WORKFLOWS] == ["deploy.yml", "gateway-image.yml", "preview.yml", "reaper.yml"]


def test_workflows_pass_actionlint() -> None:
    assert actionlint(*WORKFLOWS) == []


def test_actionlint_does_catch_mistakes(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
                      "      - run: echo ${{ github.event.nope.nope }}\n      - uses: actions/checkout\n")
    assert actionlint(broken), "a workflow with mistakes must produce findings"


UNSAFE_WORKFLOW = """\
on: pull_request_target
permissions: write-all
jobs:
  a:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v4
        with:
          ref: ${{ github.event.pull_request.head.sha }}
      - run: echo ${{ github.event.pull_request.title }}
"""


def zizmor(*paths: Path) -> list[dict]:
    binary = Path(sys.executable).with_name("zizmor")
    proc = subprocess.run([str(binary), "--offline", "--persona=pedantic", "--format=json", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


def test_workflows_pass_zizmor_with_no_findings() -> None:
    findings = zizmor(*WORKFLOWS, *ACTIONS)
    assert findings == [], json.dumps(findings, indent=1)[:4000]


def test_zizmor_does_catch_unsafe_workflows(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.yml"
    unsafe.write_text(UNSAFE_WORKFLOW)
    audits = {f["ident"] for f in zizmor(unsafe)}
    assert {"dangerous-triggers", "template-injection", "excessive-permissions"} <= audits, audits


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_action_is_pinned_to_a_commit(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    all_steps = doc["runs"]["steps"] if "runs" in doc else [s for j in doc["jobs"].values() for s in steps(j)]
    for step in all_steps:
        if "uses" in step and not step["uses"].startswith("./"):
            assert SHA_PIN.match(step["uses"]), f"{path.name}: {step['uses']} is not pinned to a commit"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_no_long_lived_cloud_keys_and_least_privilege(workflow: Path) -> None:
    text = workflow.read_text()
    assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    assert "pull_request_target" not in text
    doc = load(workflow.name)
    assert doc["permissions"] == {}, "workflows grant nothing by default; jobs ask for what they need"
    for name, job in doc["jobs"].items():
        for step in steps(job):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, f"{workflow.name}:{name}"
        if any(s.get("uses") == LOCAL_ACTION for s in steps(job)):  # it assumes an AWS role
            assert job["permissions"].get("id-token") == "write", f"{workflow.name}:{name} needs OIDC"


def test_preview_runs_on_pull_requests_and_destroys_on_close() -> None:
    doc = load("preview.yml")
    assert set(doc["on"]["pull_request"]["types"]) >= {"opened", "synchronize", "reopened", "closed"}
    assert doc["env"]["STACK"] == "pr-${{ github.event.pull_request.number }}"
    jobs = doc["jobs"]
    plan = " ".join(s.get("run", "") for s in steps(jobs["test-and-plan"]))
    assert "make test" in plan and 'llmp plan --stack "$STACK" --format markdown' in plan
    assert "plan-comment.sh" in plan
    assert "deploy-preview" in jobs["deploy"]["if"]
    assert "head.repo.full_name == github.repository" in jobs["deploy"]["if"]
    assert jobs["deploy"]["needs"] == "runner" and jobs["runner"]["if"] == jobs["deploy"]["if"]
    deploy = " ".join(s.get("run", "") for s in steps(jobs["deploy"]))
    assert 'llmp preview-config "$STACK"' in deploy
    assert deploy.index("pulumi preview") < deploy.index("pulumi up")
    assert "--policy-pack infra/policy" in deploy
    destroy = " ".join(s.get("run", "") for s in steps(jobs["destroy"]))
    assert "closed" in jobs["stack-exists"]["if"] and jobs["destroy"]["needs"] == ["stack-exists", "destroy-workloads"]
    assert destroy.index("pulumi destroy") < destroy.index("pulumi stack rm")
    # Kubernetes objects go first, through the private API from the stack's own runner.
    workloads = jobs["destroy-workloads"]
    assert workloads["runs-on"] == jobs["deploy"]["runs-on"]
    assert "--target-dependents" in " ".join(s.get("run", "") for s in steps(workloads))


def test_prod_deploys_only_from_main_behind_the_protected_environment_after_tests() -> None:
    doc = load("deploy.yml")
    assert doc["on"] == {"push": {"branches": ["main"]}}
    deploy = doc["jobs"]["deploy"]
    assert deploy["environment"] == "production" and deploy["needs"] == "runner"
    assert doc["jobs"]["runner"]["environment"] == "production" and doc["jobs"]["runner"]["needs"] == "test"
    run = " ".join(s.get("run", "") for s in steps(deploy))
    assert run.index("pulumi preview --stack prod --policy-pack infra/policy") < run.index("pulumi up --stack prod")


def test_reaper_runs_on_a_schedule_and_reports() -> None:
    doc = load("reaper.yml")
    assert doc["on"]["schedule"] and "workflow_dispatch" in doc["on"]
    run = " ".join(s.get("run", "") for s in steps(doc["jobs"]["reap"]))
    assert "llmp reap" in run and "GITHUB_STEP_SUMMARY" in run


@pytest.mark.parametrize("workflow, stack", [("deploy.yml", "prod"),
                                             ("preview.yml", "pr-${{ github.event.pull_request.number }}")])
def test_stacks_deploy_from_their_runner_in_the_vpc_after_a_bootstrap_that_touches_no_cluster(workflow, stack) -> None:
    """The cluster APIs are private: the first job builds only the runner (no Kubernetes provider is in its
    targets), and the full `up` runs on that CodeBuild-hosted runner, named by the label CodeBuild routes on."""
    from infra.components.deploy_hub import bootstrap_targets, runner_project_name

    jobs = load(workflow)["jobs"]
    assert jobs["runner"]["runs-on"].startswith("ubuntu-")
    bootstrap = " ".join(s.get("run", "") for s in steps(jobs["runner"]))
    assert "llmp deploy-hub-targets" in bootstrap and '"${targets[@]}"' in bootstrap
    assert "pulumi up" in bootstrap and "pulumi preview" not in bootstrap
    assert not any("kubernetes" in t or "Cluster" in t for t in bootstrap_targets("prod", "any-region"))
    assert jobs["deploy"]["runs-on"] == (f"codebuild-{runner_project_name(stack)}"
                                         "-${{ github.run_id }}-${{ github.run_attempt }}")


@pytest.mark.parametrize("workflow", ["deploy.yml", "preview.yml"])
def test_a_region_that_cannot_get_gpus_does_not_stop_the_rest_of_the_update(workflow: str) -> None:
    """By default Pulumi starts no new operation after the first failure; `--continue-on-error` (CLI 3.114)
    lets everything that does not depend on a failed GPU pool still be created or updated (the program keeps
    ingress, gateway and DNS independent of GPU pools: tests/infra/test_failure_isolation.py)."""
    doc = load(workflow)
    full_updates = [line for job in doc["jobs"].values() for s in steps(job)
                    for line in s.get("run", "").splitlines()
                    if line.strip().startswith("pulumi up") and "--policy-pack" in line]
    assert full_updates
    assert all("--continue-on-error" in line for line in full_updates), full_updates
