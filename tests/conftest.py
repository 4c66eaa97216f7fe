"""Session fixtures shared by the infra and policy tests: the shipped stacks planned once under the mock engine."""
from __future__ import annotations

import pytest

from infra.plan.run import Plan, run_program
from tests.stacks import stack_raw


@pytest.fixture(scope="session")
def prod_plan() -> Plan:
    return run_program(stack_raw("prod"), "prod")


@pytest.fixture(scope="session")
def preview_plan() -> Plan:
    return run_program(stack_raw("preview"), "preview")
