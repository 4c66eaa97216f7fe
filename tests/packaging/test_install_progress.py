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


# install-gateway runs requirements/install-gateway.sh (the image's builder stage runs the same script): a step there
# is one call of the script.
@pytest.mark.parametrize(("target", "least"), [("install", 4), ("install-gateway", 2)])
def test_each_install_step_says_what_it_does_before_it_runs(target: str, least: int) -> None:
    lines = recipe(target)
    steps = [i for i, line in enumerate(lines)
             if "pip install" in line or " -m venv " in line or "install-gateway.sh" in line]
    assert len(steps) >= least, lines
    for i in steps:
        assert lines[i - 1].startswith("echo ") and f'"{target}: ' in lines[i - 1], (lines[i - 1], lines[i])


def test_the_lock_install_step_says_it_takes_minutes() -> None:
    assert any("minutes on a fresh machine" in line for line in recipe("install"))
