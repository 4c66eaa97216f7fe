"""The numbers README.md states about the prod plan, taken from a fresh plan: checked by a test, rewritten by
`python -m infra.plan.readme_numbers` (add `--check` to only compare)."""
from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from infra.config import ROOT

if TYPE_CHECKING:
    from infra.plan.run import Plan

README = ROOT / "README.md"
STACK = "prod"
COMMAND = "python -m infra.plan.readme_numbers"


@dataclass(frozen=True)
class PlanNumbers:
    resources: int
    monthly_usd_min: float
    monthly_usd_max: float
    budget_usd: float


def thousands(usd: float) -> str:
    return f"${round(usd / 1000):,}k"


@dataclass(frozen=True)
class Claim:
    """One number in the README: the sentence around it (a regex whose group `n` is the number) and its value."""

    name: str
    pattern: str
    value: Callable[[PlanNumbers], str]


CLAIMS = (
    Claim("resources", r"`llmp plan --stack prod` records (?P<n>[0-9,]+) resources", lambda p: f"{p.resources:,}"),
    Claim("cost at min scale", r"resources, and costs about (?P<n>\$[0-9,]+k)/month at min scale",
          lambda p: thousands(p.monthly_usd_min)),
    Claim("cost at max scale", r"billed in full\), (?P<n>\$[0-9,]+k) at max", lambda p: thousands(p.monthly_usd_max)),
    Claim("budget", r"at its limits\), against a (?P<n>\$[0-9,]+k) budget", lambda p: thousands(p.budget_usd)),
)


def plan_numbers(stack: str = STACK) -> PlanNumbers:
    """A fresh offline plan of the stack, reduced to the numbers the README states."""
    from infra.config import read_stack
    from infra.plan.run import run_program

    raw, source = read_stack(stack)
    return numbers_of(run_program(raw, stack, source))


def numbers_of(plan: Plan) -> PlanNumbers:
    """The numbers the README states, from a plan of the prod stack already run (the tests share one)."""
    from infra.plan.cost import estimate

    cost = estimate(plan.resources, plan.config.budget.monthly_usd)
    return PlanNumbers(len(plan.resources), cost.monthly_usd_min, cost.monthly_usd_max, cost.budget_usd)


def differences(text: str, numbers: PlanNumbers) -> list[str]:
    """Each claim the README states otherwise than the plan (or no longer states at all)."""
    out = []
    for claim in CLAIMS:
        match = re.search(claim.pattern, text)
        if match is None:
            out.append(f"{claim.name}: the README no longer has the sentence /{claim.pattern}/")
        elif match["n"] != claim.value(numbers):
            out.append(f"{claim.name}: the README says {match['n']}, the plan {claim.value(numbers)}")
    return out


def rewrite(text: str, numbers: PlanNumbers) -> str:
    for claim in CLAIMS:
        match = re.search(claim.pattern, text)
        if match is not None:
            text = text[:match.start("n")] + claim.value(numbers) + text[match.end("n"):]
    return text


def main(argv: list[str]) -> int:
    numbers = plan_numbers()
    text = README.read_text()
    if "--check" in argv:
        problems = differences(text, numbers)
        print("\n".join(problems) or "README.md agrees with the plan", file=sys.stderr)
        return 1 if problems else 0
    Path(README).write_text(rewrite(text, numbers))
    print(f"README.md: {len(CLAIMS)} numbers from a fresh plan of {STACK}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
