"""A call that falls back is charged for the model that answered: in the response-cost header and the ledger.

LiteLLM prices the deployment that served the call (litellm/cost_calculator.py@v1.106.2 `completion_cost` reads
the response's model, and Router fallbacks answer with the fallback's deployment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.gateway.conftest import deployment, gateway_config
from tests.gateway.faulty_upstream import FaultyUpstream, http
from tests.gateway.test_keys_admin import admin, ledger_holds
from tests.gateway.test_litellm_config_compat import VLLM_CONTEXT_ERROR

MESSAGES = [{"role": "user", "content": "Say hello to the gateway"}]
MINI, BIG = (0.000001, 0.000002), (0.001, 0.002)


def priced(mini_base: str, big_base: str, tmp_path: Path, **mini: Any) -> dict[str, Any]:
    config = gateway_config(models=[
        {"alias": "mini", "deployments": [deployment("mini-a", mini_base)],
         "input_cost_per_token": MINI[0], "output_cost_per_token": MINI[1], **mini},
        {"alias": "big", "deployments": [deployment("big-a", big_base)],
         "input_cost_per_token": BIG[0], "output_cost_per_token": BIG[1]}], retries={"attempts": 0})
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                        "flush_interval": 0.05}
    return config


async def charged(gw: Any, extra_body: dict[str, Any] | None = None) -> tuple[float, float]:
    """The response-cost header of one call to `mini`, and what the ledger holds for it."""
    raw = await gw.client().chat.completions.with_raw_response.create(model="mini", messages=MESSAGES,
                                                                       extra_body=extra_body)
    usage = raw.parse().usage
    expected = usage.prompt_tokens * BIG[0] + usage.completion_tokens * BIG[1]
    assert raw.headers["x-litellm-model-id"] == "big-a"
    await ledger_holds(gw, 1)
    _, report = await admin(gw, "GET", "/spend/report?group_by=day")
    return float(raw.headers["x-litellm-response-cost"]) / expected, report["data"][0]["spend"] / expected


async def test_a_body_fallback_is_charged_at_the_answering_models_price(gateway_factory, sim_factory,
                                                                         tmp_path) -> None:
    broken, big = await sim_factory(name="broken", fault="error_500"), await sim_factory(name="big")
    gw = await gateway_factory(priced(broken.base_url, big.base_url, tmp_path))
    assert await charged(gw, {"fallbacks": ["big"]}) == (pytest.approx(1.0), pytest.approx(1.0))


async def test_a_context_window_fallback_is_charged_at_the_answering_models_price(gateway_factory, sim,
                                                                                  tmp_path) -> None:
    short = await FaultyUpstream([http(VLLM_CONTEXT_ERROR, b"400 Bad Request")]).start()
    try:
        gw = await gateway_factory(priced(short.base_url, sim.base_url, tmp_path, context_window_fallbacks=["big"]))
        assert await charged(gw) == (pytest.approx(1.0), pytest.approx(1.0))
    finally:
        await short.stop()
