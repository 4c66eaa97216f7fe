"""The control catalogue: the controls, each described for a reviewer, each proven by tests that exist."""
from __future__ import annotations

import ast
import json
from pathlib import Path

from infra.policy.rules import CONTROLS, evaluate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_the_controls_in_order():
    assert [c.id for c in CONTROLS] == ["budget-cap", "region-residency", "failover-topology", "secret-scope",
                                        "gpu-pool-hygiene", "cluster-hardening", "data-stores", "version-support",
                                        "deployability", "capacity-fit"]
    assert all(c.enforcement == "mandatory" and c.title and len(c.description) > 150 for c in CONTROLS)


def test_prod_passes_every_control(prod_plan):
    results = evaluate(prod_plan)
    assert [(r.id, r.status, r.violations) for r in results] == [(c.id, "pass", []) for c in CONTROLS]


def test_preview_passes_every_control(preview_plan):
    results = evaluate(preview_plan)
    assert [(r.id, r.status, r.violations) for r in results] == [(c.id, "pass", []) for c in CONTROLS]


def test_every_proof_a_control_names_exists_and_every_control_test_is_named():
    named = set()
    for control in CONTROLS:
        assert len(control.proven_by) >= 4, control.id
        for node_id in control.proven_by:
            path, _, name = node_id.partition("::")
            assert name in _tests_in(ROOT / path), f"{control.id} names a missing test {node_id}"
            named.add(node_id)
    for path in HERE.glob("test_*.py"):
        if path.name in ("test_controls.py", "test_report.py", "test_policy_pack.py"):
            continue
        for name in _tests_in(path):
            assert f"tests/policy/{path.name}::{name}" in named, f"{path.name}::{name} proves no control"


def test_results_serialize_for_the_cli(prod_plan):
    for r in evaluate(prod_plan):
        doc = r.as_json()
        assert list(doc) == ["id", "title", "status", "enforcement", "violations", "evidence"]
        assert doc["evidence"] and all(isinstance(e, dict) for e in doc["evidence"])
        assert json.loads(json.dumps(doc)) == doc  # plain JSON: `llmp plan --json` can print it as is
