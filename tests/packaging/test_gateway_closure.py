"""The gateway runs without the infra part: nothing it imports, nor `llmp`'s gateway path, reaches Pulumi.

Each check runs in a fresh interpreter whose import system refuses the infra part's modules, as a host with
only `llm-platform[gateway]` installed would.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.packaging.deps import ROOT

# The infra part's modules, and grpc, which only the Pulumi SDKs bring.
BLOCKED = ("pulumi", "pulumi_aws", "pulumi_kubernetes", "pulumi_policy", "rich", "grpc")

_BLOCKER = f"""
import importlib.abc, sys

class NoInfraPart(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: infra part)", name=name)
        return None

sys.meta_path.insert(0, NoInfraPart())
"""


def run_without_infra(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCKER + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_every_gateway_module_and_llmp_gateway_path_import_without_the_infra_part() -> None:
    result = run_without_infra("""
        import contextlib, io, importlib, pkgutil
        import gateway
        # __main__ modules run their command when imported; their imports are gateway.cli's, imported here
        names = [m.name for m in pkgutil.walk_packages(gateway.__path__, "gateway.")
                 if not m.name.endswith("__main__")]
        assert len(names) > 20, names
        for name in names:
            importlib.import_module(name)
        from infra.cli import main
        for argv in (["gateway", "--help"], ["keys", "--help"], ["--version"]):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    main(argv)
                except SystemExit as exc:
                    assert exc.code in (0, None), (argv, exc.code)
            assert out.getvalue(), argv
        leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED_NAMES)
        assert not leaked, leaked
        print("imported", len(names), "gateway modules")
    """.replace("BLOCKED_NAMES", repr(BLOCKED)))
    assert result.returncode == 0, result.stderr
    assert "gateway modules" in result.stdout


def test_the_blocker_does_stop_an_infra_import() -> None:
    """Proves the check above can fail: the Pulumi program itself cannot load under it."""
    result = run_without_infra("import infra.platform")
    assert result.returncode != 0
    assert "blocked: infra part" in result.stderr


def test_llmp_plan_without_the_infra_part_says_which_extra_to_install() -> None:
    result = run_without_infra("""
        from infra.cli import EXIT_CONFIG, main
        sys.exit(0 if main(["plan", "--stack", "prod"]) == EXIT_CONFIG else 1)
    """)
    assert result.returncode == 0, result.stderr
    assert "llmp plan: needs the infra part" in result.stderr
    assert "pip install 'llm-platform[infra]'" in result.stderr
