"""README.md says what the program does: its numbers about the prod plan are a fresh plan's, and its tables name
every `llmp` command and every stack config key."""
from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from gateway import keys_cli
from infra.cli import parser
from infra.config import StackConfig
from infra.plan.readme_numbers import CLAIMS, COMMAND, README, PlanNumbers, differences, numbers_of, rewrite
from infra.plan.run import Plan


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_every_number_the_readme_states_about_the_prod_plan_is_the_plans(prod_plan: Plan) -> None:
    # The session's prod plan (tests/conftest.py), the same program and stack file `plan_numbers` runs.
    problems = differences(README.read_text(), numbers_of(prod_plan))
    assert not problems, "README.md and a fresh plan disagree:\n  " + "\n  ".join(problems) + \
        f"\nregenerate them with: {COMMAND}"


def test_a_number_that_drifted_is_caught_and_rewritten() -> None:
    numbers = PlanNumbers(resources=1234, monthly_usd_min=206_400.0, monthly_usd_max=207_196.0, budget_usd=5e5)
    text = README.read_text()
    assert len(differences(text, numbers)) >= 3
    fixed = rewrite(text, numbers)
    assert differences(fixed, numbers) == [] and "records 1,234 resources" in fixed and "$207k at max" in fixed
    assert len(fixed.splitlines()) == len(text.splitlines()) and len(CLAIMS) == 4


def test_every_llmp_command_is_in_the_readmes_command_table() -> None:
    rows = "\n".join(table_rows(README.read_text()))
    sub = next(a for a in parser()._actions if a.dest == "command")
    commands: list[str] = list(sub.choices)  # type: ignore[arg-type]
    missing = [c for c in commands if f"`llmp {c}" not in rows]
    keys_row = next((r for r in table_rows(README.read_text()) if r.startswith("| `llmp keys ")), "")
    keys = next(a for a in keys_cli.parser()._actions if a.dest == "command")
    missing += [f"keys {c}" for c in keys.choices if not re.search(rf"[ |]{re.escape(c)}[\\ `]", keys_row)]
    assert not missing, f"llmp commands missing from README.md's tables: {missing}"


def _fields(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for inner in _models_in(info.annotation):
            names |= _fields(inner)
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def test_every_stack_config_key_is_in_the_readmes_stack_config_table() -> None:
    rows = table_rows(README.read_text())
    missing = []
    for top, info in StackConfig.model_fields.items():
        if top == "stack":  # the stack's name, not a key of its file
            continue
        own = [r for r in rows if re.match(rf"\| `{re.escape(top)}[`.\[]", r)]
        if not own:
            missing.append(top)
            continue
        text = "\n".join(own)
        missing += [f"{top}: {name}" for model in _models_in(info.annotation) for name in sorted(_fields(model))
                    if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert not missing, f"stack config keys missing from README.md's table: {missing}"
