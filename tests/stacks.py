"""Shared test helpers for the shipped stacks: fresh copies of their values, and stack files written from values."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from infra.config import ROOT, read_stack_file


def stack_raw(stack: str) -> dict[str, Any]:
    """The stack file's llm-platform:* values, as a fresh copy a test may edit."""
    return copy.deepcopy(read_stack_file(ROOT / f"Pulumi.{stack}.yaml"))


def write_stack(tmp_path: Path, raw: dict[str, Any], stack: str = "prod") -> Path:
    """A Pulumi.<stack>.yaml holding `raw` under the llm-platform namespace."""
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump({"config": {f"llm-platform:{k}": v for k, v in raw.items()}}))
    return path
