"""What a plan is doing while it runs: its phases on stderr, as a live status line when stderr is a terminal.

A plan of the prod stack takes a minute or more on a small machine (the program under the mock engine, then real
Helm rendering every release). On a terminal the user sees which phase it is in; piped or in CI, stderr stays
empty, so logs and `--format json` captures carry only what they asked for.
"""
from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console

from infra.plan.cost import HELM_RELEASE

if TYPE_CHECKING:
    from infra.plan.run import Plan


class Progress:
    """`with Progress() as progress: progress.phase("...")`: each phase replaces the previous on one line."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.status: Any = None
        self.phases: list[str] = []

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self.status = self.console.status("starting…", spinner="dots")
            self.status.__enter__()
        return self

    def phase(self, text: str) -> None:
        self.phases.append(text)
        if self.status is not None:
            self.status.update(f"{text}…")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.status is not None:
            self.status.__exit__(kind, exc, tb)


def render_charts(plan: Plan) -> None:
    """Render every recorded Helm release once, before the controls read them: Helm's output is cached per release
    (infra/plan/manifests.py, `_helm`), whichever kinds each control then picks out of it, so the slow part of a
    plan shows as its own phase and no control renders a chart again."""
    from infra.plan.manifests import render_release

    for release in plan.of_type(HELM_RELEASE):
        render_release(release, ())
