"""Session fixtures shared by the infra and policy tests: the shipped stacks planned once under the mock engine."""
from __future__ import annotations

from datetime import date

import pytest

from infra.plan.run import Plan, run_program
from tests.stacks import stack_raw

# The day the shipped stacks are judged on, so calendar-bound controls (version-support) give the same answer
# every day the suite runs; tests/policy/test_version_support.py moves it.
PLAN_DATE = date(2026, 11, 25)


@pytest.fixture(scope="session")
def prod_plan() -> Plan:
    return run_program(stack_raw("prod"), "prod", on=PLAN_DATE)


@pytest.fixture(scope="session")
def preview_plan() -> Plan:
    return run_program(stack_raw("preview"), "preview", on=PLAN_DATE)
