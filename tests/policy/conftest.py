"""Fixtures for the policy tests: plans of the real stacks, each run once per session."""
from __future__ import annotations

import pytest

from infra.plan.run import Plan, run_program
from tests.policy.helpers import stack_raw


@pytest.fixture(scope="session")
def prod_plan() -> Plan:
    return run_program(stack_raw("prod"), "prod")


@pytest.fixture(scope="session")
def preview_plan() -> Plan:
    return run_program(stack_raw("preview"), "preview")


@pytest.fixture(scope="session", params=["prod", "preview"])
def stack_plan(request, prod_plan, preview_plan) -> Plan:
    return {"prod": prod_plan, "preview": preview_plan}[request.param]
