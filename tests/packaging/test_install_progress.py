"""`make plan` on a fresh machine says what it is doing: every install step announces itself before it runs."""
from __future__ import annotations

import subprocess

import pytest

from infra.config import ROOT


def recipe(target: str) -> list[str]:
    """The command lines of a Makefile target, as make itself prints them for a dry run of a fresh machine."""
    done = subprocess.run(["make", "-n", "--always-make", "-f", "Makefile", target], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    return [line for line in done.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("target", ["install", "install-gateway"])
def test_each_install_step_says_what_it_does_before_it_runs(target: str) -> None:
    lines = recipe(target)
    steps = [i for i, line in enumerate(lines) if "pip install" in line or " -m venv " in line]
    assert len(steps) >= 4, lines
    for i in steps:
        assert lines[i - 1].startswith("echo ") and f'"{target}: ' in lines[i - 1], (lines[i - 1], lines[i])


def test_the_lock_install_step_says_it_takes_minutes() -> None:
    assert any("minutes on a fresh machine" in line for line in recipe("install"))
