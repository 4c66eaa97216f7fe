"""Images and moderations pass through to OpenAI-compatible upstreams, governed and metered like chat;
audio is refused with its reason (gateway/http/passthrough.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway.conftest import KEY, MODEL, deployment, gateway_config
from tests.gateway.test_keys_admin import admin, governed

ALIAS = "team-images"


def with_alias(config: dict[str, Any], sim: Any) -> dict[str, Any]:
    config["models"].append({"alias": ALIAS, "deployments": [deployment("sim-img", sim.base_url)],
                             "input_cost_per_token": 0.00001, "output_cost_per_token": 0.00004,
                             "output_cost_per_image": 0.04})  # used only when an answer reports no usage
    return config


def dall_e(sim: Any, tmp_path: Path, price: float | None) -> dict[str, Any]:
    """A dall-e-3 deployment (answers without usage), with a per-image price or none."""
    config = governed(sim, tmp_path)
    config["models"].append({"alias": "dall-e-3", "deployments": [{"name": "sim-dall-e", "model": "dall-e-3",
                                                                   "api_base": sim.base_url}],
                             "input_cost_per_token": 0.00001, "output_cost_per_image": price})
    return config


async def test_images_without_usage_are_charged_per_image(sim_factory, gateway_factory, tmp_path: Path) -> None:
    """dall-e-2/3 report no usage: each image costs the model's `output_cost_per_image`, as LiteLLM prices
    images (`output_cost_per_image * len(response.data)`, litellm/llms/recraft/cost_calculator.py@v1.106.2)."""
    sim = await sim_factory(models=(MODEL, "dall-e-3"))
    gw = await gateway_factory(dall_e(sim, tmp_path, 0.04))
    _, made = await admin(gw, "POST", "/key/generate", {"max_budget": 1})
    raw = await gw.client(api_key=made["key"]).images.with_raw_response.generate(model="dall-e-3", prompt="a fox",
                                                                                  n=2)
    assert raw.parse().usage is None
    [call] = await gw.logged_calls(1)
    assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(2 * 0.04 + call["prompt_tokens"] * 0.00001)


async def test_a_key_with_a_budget_may_not_generate_images_that_cannot_be_priced(sim_factory, gateway_factory,
                                                                                 tmp_path: Path) -> None:
    sim = await sim_factory(models=(MODEL, "dall-e-3"))
    gw = await gateway_factory(dall_e(sim, tmp_path, None))
    _, budgeted = await admin(gw, "POST", "/key/generate", {"max_budget": 1})
    with pytest.raises(openai.BadRequestError, match=r"no per-image price \(models\[dall-e-3\]\.output_cost_per_"):
        await gw.client(api_key=budgeted["key"]).images.generate(model="dall-e-3", prompt="a fox")
    assert sim.stats.requests == 0
    _, unbounded = await admin(gw, "POST", "/key/generate", {})
    await gw.client(api_key=unbounded["key"]).images.generate(model="dall-e-3", prompt="a fox")


async def test_image_generation_passes_through_and_is_charged_from_the_upstreams_usage(sim, gateway_factory,
                                                                                         tmp_path: Path) -> None:
    """gpt-image-1 reports `usage.input_tokens` / `output_tokens`; LiteLLM prices it per token
    (model_prices_and_context_window.json@v1.106.2: `input_cost_per_token`, `output_cost_per_image_token`)."""
    gw = await gateway_factory(with_alias(governed(sim, tmp_path), sim))
    _, made = await admin(gw, "POST", "/key/generate", {"max_budget": 1})
    client = gw.client(api_key=made["key"])
    raw = await client.images.with_raw_response.generate(model=ALIAS, prompt="a lighthouse at dusk", n=2)
    images = raw.parse()
    assert [d.b64_json for d in images.data or []] == ["iVBORw0KGgo="] * 2
    assert images.usage is not None and images.usage.output_tokens == 544
    assert sim.stats.bodies[-1] == {"model": MODEL, "prompt": "a lighthouse at dusk", "n": 2}
    expected = images.usage.input_tokens * 0.00001 + 544 * 0.00004
    assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(expected)
    [call] = await gw.logged_calls(1)
    assert (call["endpoint"], call["prompt_tokens"], call["completion_tokens"]) == (
        "images", images.usage.input_tokens, 544)
    with pytest.raises(openai.BadRequestError, match="`stream` is not supported"):
        await client.images.generate(model=ALIAS, prompt="x", stream=True)  # type: ignore[call-overload]
    with pytest.raises(openai.BadRequestError, match="`prompt` is required"):
        await client.post("/images/generations", body={"model": ALIAS}, cast_to=dict)


async def test_a_key_may_only_generate_images_with_its_models(sim, gateway_factory, tmp_path: Path) -> None:
    gw = await gateway_factory(with_alias(governed(sim, tmp_path), sim))
    _, made = await admin(gw, "POST", "/key/generate", {"models": [MODEL]})
    with pytest.raises(openai.PermissionDeniedError, match="not available for this API key"):
        await gw.client(api_key=made["key"]).images.generate(model=ALIAS, prompt="x")
    assert sim.stats.requests == 0


async def test_moderations_pass_through_with_the_asked_model_name(sim, gateway_factory) -> None:
    models = [{"alias": "mod", "deployments": [deployment("m", sim.base_url)]}]
    gw = await gateway_factory(gateway_config(models=models))
    moderation = await gw.client().moderations.create(model="mod", input=["one", "two"])
    assert moderation.model == "mod" and [r.flagged for r in moderation.results] == [False, False]
    assert sim.stats.bodies[-1]["model"] == MODEL
    # Without /v1, as LiteLLM also serves it.
    plain = await openai.AsyncOpenAI(base_url=gw.url, api_key=KEY, max_retries=0).moderations.create(
        model="mod", input="one")
    assert plain.model == "mod"


async def test_audio_is_refused_with_its_reason_rather_than_answered_unmetered(gateway) -> None:
    client = gateway.client()
    with pytest.raises(openai.APIStatusError, match="priced per second or per character") as err:
        await client.audio.speech.create(model=MODEL, voice="alloy", input="hello")
    assert err.value.status_code == 501
    with pytest.raises(openai.APIStatusError) as err:
        await client.audio.transcriptions.create(model=MODEL, file=("a.wav", b"RIFF0000WAVE", "audio/wav"))
    assert err.value.status_code == 501 and err.value.body["code"] == "endpoint_not_supported"
