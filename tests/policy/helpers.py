"""Helpers for the policy tests: load stacks, plan broken variants, mutate recorded resources, assert on results."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from infra.config import parse
from infra.plan.run import Plan, run_program
from infra.policy.rules import ControlResult, PolicyConfig, evaluate, evaluate_resources
from tests.stacks import stack_raw  # noqa: F401  (the policy tests take it from here)


def plan_of(raw: dict[str, Any], stack: str) -> Plan:
    parse(raw, stack)  # a broken config in these tests must still be a *valid* config
    return run_program(raw, stack)


def result(plan: Plan, control_id: str) -> ControlResult:
    return next(r for r in evaluate(plan) if r.id == control_id)


def result_of_resources(plan: Plan, resources: list, control_id: str) -> ControlResult:
    results = evaluate_resources(resources, PolicyConfig.from_stack(plan.config))
    return next(r for r in results if r.id == control_id)


def mutated(plan: Plan, change: Callable[[list], None]) -> list:
    """A deep copy of the plan's resources with `change` applied: simulates a bug in the program."""
    resources = copy.deepcopy(plan.resources)
    change(resources)
    return resources


def find(resources: list, typ: str, name: str | None = None, region: str | None = None):
    return next(r for r in resources if r.type == typ and (name is None or r.name == name)
                and (region is None or r.region == region))


def gateway_release(resources: list, region: str):
    return next(r for r in resources if r.type == "kubernetes:helm.sh/v3:Release"
                and str(r.inputs.get("chart", "")).endswith("charts/gateway") and r.region == region)


def assert_rejected(res: ControlResult, *fragments: str) -> None:
    assert res.status == "fail", f"{res.id} passed a broken stack"
    text = "\n".join(res.violations)
    for fragment in fragments:
        assert fragment in text, f"{res.id}: no violation mentions {fragment!r}:\n{text}"


def assert_passes(res: ControlResult) -> None:
    assert res.status == "pass", f"{res.id} failed:\n" + "\n".join(res.violations)
    assert res.evidence, f"{res.id} passed without judging anything"


def set_policy(resource, key: str, doc: dict) -> None:
    resource.inputs[key] = json.dumps(doc)


def policy_doc(resource, key: str = "policy") -> dict:
    return json.loads(resource.inputs[key])

