"""Where a compliance report came from: the commit and whether the checkout was clean, the program and SDK
versions, the stack, the catalog's date and when the run happened, so a reviewer can reproduce what they sign."""
from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from infra.config import ROOT

SDKS = ("pulumi", "pulumi_aws", "pulumi_kubernetes", "pulumi_policy")


@dataclass(frozen=True)
class Provenance:
    commit: str  # the full hash, or "not a git checkout"
    dirty: bool | None  # uncommitted changes to tracked or untracked files; None outside a checkout
    program_version: str
    stack: str
    catalog_as_of: str
    run_at: str  # UTC, to the second
    python: str
    sdks: tuple[tuple[str, str], ...]

    def rows(self) -> list[tuple[str, str]]:
        """(field, value) in the order a reviewer reads them."""
        dirty = "n/a" if self.dirty is None else ("yes: uncommitted changes" if self.dirty else "no")
        return [("commit", self.commit), ("uncommitted changes", dirty), ("program version", self.program_version),
                ("stack", self.stack), ("instance catalog as of", self.catalog_as_of),
                ("run at (UTC)", self.run_at), ("Python", self.python),
                *((f"{name} SDK", v) for name, v in self.sdks)]


def _git(*args: str, root: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def collect(stack: str, catalog_as_of: str, now: datetime, root: Path = ROOT) -> Provenance:
    """The provenance of a run at `now` from the checkout at `root` (the project's own, by default)."""
    head = _git("rev-parse", "HEAD", root=root)
    # `git status --porcelain` prints one line per changed or untracked path, nothing when clean
    # (https://git-scm.com/docs/git-status#_porcelain_format_version_1).
    status = _git("status", "--porcelain", root=root) if head else None
    from infra.cli import version  # the version `llmp --version` says; imported late: the CLI imports this module

    return Provenance(
        commit=head.strip() if head else "not a git checkout",
        dirty=None if status is None else bool(status.strip()),
        program_version=version(),
        stack=stack, catalog_as_of=catalog_as_of, run_at=now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        python=platform.python_version(), sdks=tuple((name, _version(name)) for name in SDKS))
