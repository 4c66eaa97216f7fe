"""Fixtures for the policy tests: each shipped stack in turn."""
from __future__ import annotations

import pytest

from infra.plan.run import Plan


@pytest.fixture(scope="session", params=["prod", "preview"])
def stack_plan(request, prod_plan, preview_plan) -> Plan:
    return {"prod": prod_plan, "preview": preview_plan}[request.param]
