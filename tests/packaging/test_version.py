"""`llmp --version` prints the installed distribution's version."""
from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from infra.cli import main
from tests.packaging.deps import project


def test_version_is_the_installed_distributions(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"llmp {version('llm-platform')}\n"
    assert version("llm-platform") == project()["version"]


def test_the_installed_llmp_command_prints_it() -> None:
    llmp = Path(sys.executable).parent / "llmp"
    out = subprocess.run([str(llmp), "--version"], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == f"llmp {project()['version']}"
