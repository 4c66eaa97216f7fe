"""A model restricted to another residency zone is refused with that zone's name, never forwarded."""

from __future__ import annotations

import openai
import pytest

from gateway.config.errors import ConfigError
from gateway.config.native import parse_native
from infra.config import parse
from infra.gateway_config import other_zones
from tests.gateway.conftest import MODEL, deployment, gateway_config
from tests.stacks import stack_raw

EU_ONLY = "mistral-small-24b"
MESSAGES = [{"role": "user", "content": "Bonjour"}]


def us_gateway_config(sim_url: str) -> dict:
    """A US gateway whose `other_zones` is what the Pulumi program renders for prod's us-east-1."""
    cfg = parse(stack_raw("prod"), "prod")
    us_east = next(r for r in cfg.regions if r.name == "us-east-1")
    doc = gateway_config([deployment("sim-a", sim_url, region="us-east-1", residency="us")],
                         region="us-east-1", residency="us")
    doc["other_zones"] = other_zones(cfg, us_east)
    return doc


async def test_request_for_an_eu_only_model_at_a_us_gateway_names_the_eu_zone(gateway_factory, sim) -> None:
    gw = await gateway_factory(us_gateway_config(sim.base_url))
    with pytest.raises(openai.APIStatusError) as err:
        await gw.client().chat.completions.create(model=EU_ONLY, messages=MESSAGES)
    assert err.value.status_code == 421
    assert err.value.body["code"] == "model_in_other_residency_zone" and err.value.body["param"] == "model"
    assert ("model mistral-small-24b is served only in residency zone eu: call https://eu.api.llm.example.com"
            in err.value.message)
    assert sim.stats.requests == 0, "the request must not be forwarded anywhere"
    [call] = gw.calls()
    assert call["status"] == 421 and not call["deployment"] and not call.get("prompt_hash")


async def test_streaming_request_for_an_eu_only_model_is_refused_before_any_stream(gateway_factory, sim) -> None:
    gw = await gateway_factory(us_gateway_config(sim.base_url))
    with pytest.raises(openai.APIStatusError) as err:
        await gw.client().chat.completions.create(model=EU_ONLY, messages=MESSAGES, stream=True)
    assert err.value.status_code == 421 and sim.stats.requests == 0


async def test_unknown_models_are_still_refused_and_local_models_still_answer(gateway_factory, sim) -> None:
    gw = await gateway_factory(us_gateway_config(sim.base_url))
    with pytest.raises(openai.BadRequestError, match="Invalid model name"):  # LiteLLM's 400 for an unknown model
        await gw.client().chat.completions.create(model="no-such-model", messages=MESSAGES)
    reply = await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content


@pytest.mark.parametrize("other, message", [
    ({"us": {"url": "https://us.api.example.com", "models": ["x"]}},
     "other_zones.us: is this gateway's own residency zone"),
    ({"eu": {"url": "https://eu.api.example.com", "models": [MODEL]}},
     f"other_zones.eu.models: '{MODEL}' is also a model alias served here"),
    ({"eu": {"url": "http://eu.api.example.com", "models": ["x"]}}, "is not an https origin"),
    ({"eu": {"url": "https://eu.api.example.com", "models": []}}, "other_zones.eu.models"),
])
def test_bad_other_zones_config_names_the_key_and_the_problem(other, message) -> None:
    doc = gateway_config([deployment("sim-a", "http://127.0.0.1:9/v1", region="us-east-1", residency="us")],
                         region="us-east-1", residency="us")
    doc["other_zones"] = other
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_native(doc)
