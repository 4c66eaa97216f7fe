"""The project stays clean under ruff and mypy (their settings: pyproject.toml, [tool.ruff] and [tool.mypy]).

Both run as the developer would run them, as subprocesses of this interpreter. A missing tool is a failure,
not a skip: they are test dependencies.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF_PATHS = ["infra", "gateway", "tests", "bench"]  # all of the project's Python


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.fail(f"{tool} is not installed in this environment ({sys.executable}): install the test dependencies")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)


def test_ruff_finds_nothing_in_the_project() -> None:
    done = run("ruff", "check", "--no-cache", *RUFF_PATHS)
    assert done.returncode == 0, f"ruff check {' '.join(RUFF_PATHS)}:\n{done.stdout}{done.stderr}"


def test_mypy_finds_nothing_in_the_gateway_or_the_program() -> None:
    done = run("mypy")  # `files` in [tool.mypy]: the gateway and infra
    assert done.returncode == 0, f"mypy:\n{done.stdout}{done.stderr}"
    assert "Success" in done.stdout, done.stdout
