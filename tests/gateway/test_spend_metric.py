"""What the ledger is charged is also on /metrics, as `llmp_gateway_spend_usd_total` by model alias and team, so
Prometheus can project the month (the BudgetBurn alert) and the gateway dashboard can show it."""

from __future__ import annotations

import math

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import MAX_SPEND_SERIES, GatewayMetrics
from tests.gateway.conftest import MODEL, RunningGateway
from tests.gateway.test_keys_admin import MESSAGES, admin, gov  # noqa: F401 - the `gov` fixture

SPEND = "llmp_gateway_spend_usd"


async def scraped_spend(gw: RunningGateway) -> dict[tuple[str, str], float]:
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == SPEND:
            for sample in family.samples:
                if sample.name == SPEND + "_total":
                    out[sample.labels["model"], sample.labels["team"]] = sample.value
    return out


async def test_spend_charged_to_the_ledger_is_counted_by_model_and_team(gov) -> None:  # noqa: F811
    await admin(gov, "POST", "/team/new", {"team_id": "search"})
    _, made = await admin(gov, "POST", "/key/generate", {"team_id": "search"})
    _, loner = await admin(gov, "POST", "/key/generate", {})
    for _ in range(2):
        await gov.client(api_key=made["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    await gov.client(api_key=loner["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    await gov.logged_calls(3)
    await gov.state.governance.ledger.flush()
    _, by_team = await admin(gov, "GET", "/spend/report?group_by=team")
    ledger = {r["team_id"] or "none": r["spend"] for r in by_team["data"]}
    scraped = await scraped_spend(gov)
    assert set(scraped) == {(MODEL, "search"), (MODEL, "none")}
    assert scraped[MODEL, "search"] > 0
    for team, spend in ledger.items():
        assert scraped[MODEL, team] == pytest.approx(spend)


def test_team_labels_are_bounded_and_nothing_is_counted_for_no_charge() -> None:
    metrics = GatewayMetrics()
    for i in range(MAX_SPEND_SERIES + 50):
        metrics.charge("m", f"team-{i}", 1.0)
    metrics.charge("m", None, 0.0)
    metrics.charge("m", None, math.nan)
    series = {s.labels["team"]: s.value for f in metrics.registry.collect() if f.name == SPEND
              for s in f.samples if s.name == SPEND + "_total"}
    assert len(series) == MAX_SPEND_SERIES + 1
    assert series["other"] == 50.0 and "none" not in series
    assert sum(series.values()) == MAX_SPEND_SERIES + 50
