"""Fixtures for the Pulumi program's tests: stack configs and plans run under Pulumi's mock engine."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from infra.config import ROOT, read_stack_file
from infra.plan.run import Plan, run_program


def stack_raw(stack: str) -> dict[str, Any]:
    return copy.deepcopy(read_stack_file(ROOT / f"Pulumi.{stack}.yaml"))


@pytest.fixture(scope="session")
def prod_plan() -> Plan:
    return run_program(stack_raw("prod"), "prod")


@pytest.fixture(scope="session")
def preview_plan() -> Plan:
    return run_program(stack_raw("preview"), "preview")


@pytest.fixture
def prod_raw() -> dict[str, Any]:
    return stack_raw("prod")


def write_stack(tmp_path: Path, raw: dict[str, Any], stack: str = "prod") -> Path:
    """A Pulumi.<stack>.yaml holding `raw` under the llm-platform namespace."""
    import yaml

    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump({"config": {f"llm-platform:{k}": v for k, v in raw.items()}}))
    return path
