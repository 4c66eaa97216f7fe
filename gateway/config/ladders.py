"""The `ladders:` config section: aliases served cheapest rung first (the routing is gateway/routing/ladder.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.config.model_names import is_pattern

# Why a rung's answer or failure sends the call one rung up (gateway/routing/checks.py names each).
ESCALATE_ON = ("error", "invalid_json", "length", "empty")


class _Strict(BaseModel):
    # Same rule as gateway.config.native: unknown keys are typos, refused by name.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LadderRule(_Strict):
    """Start higher up front: when the request matches, the rungs below `start_at` are skipped."""

    prompt_tokens_over: int | None = Field(None, ge=0)  # the request's size estimate (bytes / 4), over this
    tools: bool | None = None  # true: the request offers tools (`tools` or the older `functions`)
    start_at: str = Field(min_length=1)

    @model_validator(mode="after")
    def _one_condition(self) -> LadderRule:
        given = [name for name in ("prompt_tokens_over", "tools") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("a rule has exactly one condition: 'prompt_tokens_over: N' or 'tools: true'"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.tools is False:
            raise ValueError("'tools: false' matches nothing a ladder would skip for: write 'tools: true'")
        return self

    @property
    def name(self) -> str:
        """The rule's name in `skipped:<rule>` outcomes of the x-llmp-route header."""
        return "tools" if self.tools else "prompt_tokens"


class LadderPins(_Strict):
    """Callers answered by one rung only: keys by key_alias, teams by team_id (a key's pin wins over its team's)."""

    teams: dict[str, str] = {}
    keys: dict[str, str] = {}


class Ladder(_Strict):
    alias: str = Field(min_length=1)
    rungs: list[str]
    escalate_on: list[str] = list(ESCALATE_ON)
    rules: list[LadderRule] = []
    pins: LadderPins = LadderPins()

    @field_validator("rungs")
    @classmethod
    def _two_or_more(cls, rungs: list[str]) -> list[str]:
        if len(rungs) < 2:
            raise ValueError(f"a ladder needs at least two rungs, cheapest first (got {len(rungs)}); "
                             "a single model is a model alias, not a ladder")
        if len(set(rungs)) != len(rungs):
            raise ValueError("a rung is listed twice")
        return rungs

    @field_validator("escalate_on")
    @classmethod
    def _known(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in ESCALATE_ON:
                raise ValueError(f"{str(value)[:40]!r} is not a reason to escalate: use any of "
                                 f"{', '.join(ESCALATE_ON)}")
        return values


def check_ladders(ladders: Iterable[Ladder], model_aliases: set[str], other_names: Iterable[str]) -> None:
    """Cross-checks against the rest of the config (GatewayConfig._references): ValueError naming the field."""
    taken = set(other_names)
    seen: set[str] = set()
    for ladder in ladders:
        where = f"ladders[{ladder.alias}]"
        if ladder.alias in model_aliases:
            raise ValueError(f"{where}.alias: {ladder.alias!r} is also a model alias; a ladder needs a name of its own")
        if ladder.alias in taken:
            raise ValueError(f"{where}.alias: {ladder.alias!r} is also a model_aliases name")
        if ladder.alias in seen:
            raise ValueError(f"{where}.alias: {ladder.alias!r} is defined twice")
        seen.add(ladder.alias)
        for rung in ladder.rungs:
            if rung not in model_aliases:
                raise ValueError(f"{where}.rungs: {rung!r} is not a model alias (a rung is one of `models`)")
            if is_pattern(rung):
                # A wildcard alias serves the names it matches; called by its pattern, the upstream would get the `*`.
                raise ValueError(f"{where}.rungs: {rung!r} is a wildcard alias; a rung names one model (a name "
                                 "it matches, given its own entry in `models`)")
        rungs = set(ladder.rungs)
        for index, rule in enumerate(ladder.rules):
            _rung(where, f"rules[{index}].start_at", rule.start_at, rungs)
        for kind, pins in (("teams", ladder.pins.teams), ("keys", ladder.pins.keys)):
            for who, rung in pins.items():
                _rung(where, f"pins.{kind}.{who}", rung, rungs)


def _rung(where: str, field: str, value: Any, rungs: set[str]) -> None:
    if value not in rungs:
        raise ValueError(f"{where}.{field}: {value!r} is not one of this ladder's rungs ({', '.join(sorted(rungs))})")
