"""Runs infra/__main__.py in-process under Pulumi's mock engine and returns what it would create."""
from __future__ import annotations

import asyncio
import logging
import runpy
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import wait_for_rpcs

from infra.config import StackConfig, parse, to_pulumi_config
from infra.plan.mocks import PlanMocks, PlannedResource

PROGRAM = Path(__file__).resolve().parent.parent / "__main__.py"
PROJECT = "llm-platform"


class ProgramError(Exception):
    """The program itself failed under the mock engine (a bug, not a config mistake)."""


@dataclass
class Plan:
    stack: str
    config: StackConfig
    resources: list[PlannedResource]
    # The day the plan is judged on: controls with a calendar (version-support) read it, so a test can fix it.
    date: date = field(default_factory=lambda: datetime.now(UTC).date())

    def of_type(self, typ: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == typ]


async def _settle() -> None:
    """After a registration failed, let every registration that does not depend on it finish, as
    `pulumi up --continue-on-error` does, so the record is what such an update would leave behind."""
    manager = pulumi_settings.SETTINGS.rpc_manager
    for _ in range(10_000):  # each round clears at least one failed RPC
        manager.unhandled_exception = None
        try:
            await wait_for_rpcs()
            return
        except Exception:  # noqa: BLE001 a dependent of the failed resource failed too: keep settling
            continue


class _Errors(logging.Handler):
    """Pulumi logs failures inside apply() callbacks instead of raising; collect them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_program(raw: dict[str, Any], stack: str, source: str = "<config>", on: date | None = None,
                mocks: PlanMocks | None = None, observe: pulumi.ResourceTransformation | None = None,
                preview: bool = False) -> Plan:
    """Validate `raw` (llm-platform:* values), then run the program on it under mocks (`mocks` records
    what was created, and may play a cloud that refuses some of it; `observe` sees every resource's
    options, which the mock engine does not record); `on` is the plan's date (default: today); `preview`
    runs it as `pulumi preview` does (outputs a mock leaves unknown stay unknown, applies on them do not run)."""
    cfg = parse(raw, stack, source)  # raises ConfigError before anything runs
    # The engine runs on the thread's current loop; give it one of its own, whatever ran before.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        plan = _run(raw, cfg, stack, mocks or PlanMocks(), observe, preview)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    if on is not None:
        plan.date = on
    return plan


def _run(raw: dict[str, Any], cfg: StackConfig, stack: str, mocks: PlanMocks,
         observe: pulumi.ResourceTransformation | None, preview: bool) -> Plan:
    errors = _Errors()
    logger = logging.getLogger(f"llm-platform.plan.{stack}")
    logger.addHandler(errors)
    logger.propagate = False
    pulumi.runtime.set_all_config(to_pulumi_config(raw))
    pulumi_mocks.set_mocks(mocks, project=PROJECT, stack=stack, preview=preview, logger=logger)
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()
    try:
        def program() -> None:
            if observe is not None:
                pulumi.runtime.register_stack_transformation(observe)
            runpy.run_path(str(PROGRAM))

        pulumi_mocks._sync_await(pulumi_mocks.run_pulumi_func(program))
    except Exception as exc:  # re-raised with the program named
        pulumi_mocks._sync_await(_settle())
        raise ProgramError(f"the Pulumi program failed under the mock engine: {exc}") from exc
    if errors.messages:
        raise ProgramError("the Pulumi program failed under the mock engine:\n" + "\n".join(errors.messages))
    return Plan(stack=stack, config=cfg, resources=mocks.resources)
