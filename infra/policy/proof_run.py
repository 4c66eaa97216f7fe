"""Runs the tests that prove the controls (their proof lists) in a pytest subprocess and reads each one's outcome
from its JUnit XML, for `llmp report --with-tests`."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from infra.config import ROOT

PASSED, FAILED, SKIPPED, NOT_RUN = "passed", "failed", "skipped", "not run"


class ProofRunError(Exception):
    """The proof tests could not be run at all (no checkout, pytest missing, no result written)."""


def _node_id(case: ET.Element) -> str:
    """A <testcase>'s pytest node id: pytest writes classname "tests.policy.test_x" (module path, dotted, plus
    the class for methods) and name "test_y[param]" (_pytest/junitxml.py, `mangle_test_address`)."""
    parts = str(case.get("classname", "")).split(".")
    name = str(case.get("name", "")).partition("[")[0]
    for i in range(len(parts), 0, -1):  # the longest dotted prefix naming a test module; classes follow it
        if parts[i - 1].startswith("test_"):
            return "/".join(parts[:i]) + ".py::" + "::".join([*parts[i:], name])
    return "/".join(parts) + ".py::" + name


def outcomes(junit_xml: str) -> dict[str, str]:
    """node id -> passed | failed | skipped; a parametrized test fails when any of its cases does, and is skipped
    (not proven: the report shows it red) when none failed and any was skipped."""
    rank = {PASSED: 0, SKIPPED: 1, FAILED: 2}
    result: dict[str, str] = {}
    for case in ET.fromstring(junit_xml).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = FAILED
        elif case.find("skipped") is not None:
            outcome = SKIPPED
        else:
            outcome = PASSED
        node = _node_id(case)
        previous = result.get(node)
        if previous is None or rank[outcome] > rank[previous]:
            result[node] = outcome
    return result


def run_proofs(test_ids: Iterable[str], root: Path = ROOT, timeout: float = 3600) -> dict[str, str]:
    """Run exactly `test_ids` (pytest node ids relative to `root`) once; node id -> outcome, NOT_RUN for an id
    pytest did not report."""
    ids = sorted(set(test_ids))
    missing = [i for i in ids if not (root / i.partition("::")[0]).is_file()]
    if missing:
        raise ProofRunError(f"the proof tests are not in {root} (run from a checkout of the project): "
                            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    with tempfile.TemporaryDirectory(prefix="llmp-proofs-") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *ids]
        try:
            done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ProofRunError(f"the proof tests did not finish within {timeout:.0f}s") from None
        # pytest exits 0 (all passed) or 1 (some failed) after a run; other codes mean it could not run them
        # (https://docs.pytest.org/en/stable/reference/exit-codes.html).
        if done.returncode not in (0, 1) or not junit.is_file():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise ProofRunError(f"pytest could not run the proof tests (exit {done.returncode}):\n{tail}")
        found = outcomes(junit.read_text())
    return {i: found.get(i, NOT_RUN) for i in ids}
