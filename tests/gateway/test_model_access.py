"""Which models a virtual key may call, and what such calls cost: a key's, team's and user's `models` lists read as
LiteLLM reads them (wildcards, `*`, a model_group_alias and its target), a body `fallbacks` list held to the same
lists, prices and budgets for every name that reaches a model, /v1/models and the metrics under the names clients
call. Checked with the official openai client, the simulator and the SQLite ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.config.errors import ConfigError
from gateway.config.loading import parse_config
from gateway.governance.ledger.prices import Prices
from gateway.governance.model_access import may_use
from tests.gateway.conftest import KEY
from tests.gateway.test_keys_admin import admin

MESSAGES = [{"role": "user", "content": "hi"}]


# LiteLLM 1.106.2, litellm/proxy/auth/auth_checks.py: `_can_object_call_model` and `check_model_access_helper`.
@pytest.mark.parametrize(("models", "name", "group", "in_team", "allowed"), [
    ((), "anything", None, False, True),  # an empty list allows every model
    (("*",), "anything", None, False, True),
    (("all-proxy-models",), "anything", None, False, True),
    (("all-team-models",), "anything", None, True, True),  # every proxy model; the team's list still applies
    (("all-team-models",), "anything", None, False, False),  # no team: the sentinel names no model
    (("llama",), "llama", "llama", False, True),
    (("llama",), "gpt-4", "llama", False, True),  # a model_group_alias: its target is allowed, so is the alias
    (("gpt-4",), "gpt-4", "llama", False, True),
    (("gpt-4",), "llama", "llama", False, False),  # the alias does not open its target's own name
    (("openai/*",), "openai/gpt-4o", "openai/*", False, True),  # `is_model_allowed_by_pattern`: ^openai/.*$
    (("openai/*",), "anthropic/claude-3", "anthropic/*", False, False),
    (("openai/*",), "openai", None, False, False),  # matched whole, as LiteLLM's anchored pattern
    (("gpt-4o*",), "gpt-4o-mini", None, False, True),
    (("gpt-4.1*",), "gpt-401", None, False, False),  # a dot is a dot here (LiteLLM leaves it a regex dot)
])
def test_model_lists_are_read_as_litellm_reads_them(models, name, group, in_team, allowed) -> None:
    assert may_use(models, name, group, in_team) is allowed


def config(sim: Any, down: Any, tmp_path: Path, **gateway: Any) -> dict[str, Any]:
    """llama (down when asked), a wildcard `openai/*`, a backup, and model_aliases gpt-4 -> llama, old -> llama
    (hidden); priced, with a SQLite ledger."""
    def model(alias: str, base: str, upstream: str = "sim-model") -> dict[str, Any]:
        return {"alias": alias, "input_cost_per_token": 0.001, "output_cost_per_token": 0.002,
                "deployments": [{"name": alias.replace("/*", "-any"), "model": upstream, "api_base": base}]}

    return {"version": 1,
            "gateway": {"master_key": KEY, "retries": {"attempts": 0}, **gateway},
            "models": [model("llama", down.base_url), model("openai/*", sim.base_url, "*"),
                       model("backup", sim.base_url)],
            "model_aliases": {"gpt-4": {"model": "llama"}, "old": {"model": "llama", "hidden": True}},
            "ledger": {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                       "flush_interval": 0.05}}


async def key_for(gw: Any, models: list[str], **fields: Any) -> openai.AsyncOpenAI:
    status, made = await admin(gw, "POST", "/key/generate", {"models": models, **fields})
    assert status == 200, made
    return gw.client(api_key=made["key"])


async def test_a_keys_models_list_takes_wildcards_and_model_group_aliases(gateway_factory, sim_factory,
                                                                        tmp_path) -> None:
    sim = await sim_factory(models=("sim-model", "gpt-4o"))
    gw = await gateway_factory(parse_config(config(sim, sim, tmp_path)))
    wildcard = await key_for(gw, ["openai/*"])
    await wildcard.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
    assert sim.stats.bodies[-1]["model"] == "gpt-4o"
    with pytest.raises(openai.PermissionDeniedError, match="'llama' is not available for this API key"):
        await wildcard.chat.completions.create(model="llama", messages=MESSAGES)
    target = await key_for(gw, ["llama"])
    await target.chat.completions.create(model="gpt-4", messages=MESSAGES)  # the alias of a model it may call
    alias_only = await key_for(gw, ["gpt-4"])
    await alias_only.chat.completions.create(model="gpt-4", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError):
        await alias_only.chat.completions.create(model="llama", messages=MESSAGES)


async def test_a_key_falls_back_only_to_models_it_may_call(gateway_factory, sim_factory, tmp_path) -> None:
    sim = await sim_factory(models=("sim-model", "gpt-4o"), name="up")
    down = await sim_factory(name="down", fault="error_500")
    gw = await gateway_factory(parse_config(config(sim, down, tmp_path)))
    narrow = await key_for(gw, ["llama"])
    with pytest.raises(openai.PermissionDeniedError, match="may not call model `backup`"):
        await narrow.chat.completions.create(model="llama", messages=MESSAGES, extra_body={"fallbacks": ["backup"]})
    assert down.stats.requests == 0, "refused before any upstream call"
    wide = await key_for(gw, ["llama", "openai/*"])
    answer = await wide.chat.completions.create(model="llama", messages=MESSAGES,
                                                extra_body={"fallbacks": ["openai/gpt-4o"]})
    assert answer.choices[0].message.content and sim.stats.bodies[-1]["model"] == "gpt-4o"
    assert down.stats.requests == 1


def test_alias_and_wildcard_names_cost_what_their_model_costs(sim, tmp_path) -> None:
    prices = Prices(parse_config(config(sim, sim, tmp_path)))
    assert prices.ceiling("gpt-4") == prices.ceiling("llama") == (0.001, 0.002)
    assert prices.ceiling("openai/gpt-4o") == (0.001, 0.002)
    assert prices.cost("old", "", 1000, 500) == pytest.approx(2.0)
    assert prices.ceiling("nothing-serves-this") == (0.0, 0.0)


async def test_a_budget_holds_for_calls_by_alias_name_with_the_configured_budget_status(
        gateway_factory, sim_factory, tmp_path) -> None:
    sim = await sim_factory(models=("sim-model", "gpt-4o"))
    gw = await gateway_factory(parse_config(config(sim, sim, tmp_path, budget_exceeded_status=429)))
    client = await key_for(gw, [], max_budget=0.02)
    for _ in range(30):
        try:
            await client.chat.completions.create(model="gpt-4", messages=MESSAGES, max_tokens=8)
        except openai.RateLimitError as refused:  # 429: the config's status, LiteLLM's budget_exceeded_status_code
            body = refused.body
            break
    else:
        pytest.fail("calls by an alias name never reached the budget: they were not charged")
    assert isinstance(body, dict) and (body["type"], body["code"]) == ("budget_exceeded", "429")


async def test_per_model_limits_hold_for_every_name_that_reaches_the_model(gateway_factory, sim_factory,
                                                                           tmp_path) -> None:
    # LiteLLM reads a key's model_rpm_limit under the model group the name resolved to
    # (parallel_request_limiter_v3.py@v1.106.2, `get_key_model_rpm_limit(..., model_name=model.group)`).
    sim = await sim_factory(models=("sim-model", "gpt-4o", "gpt-4o-mini"))
    gw = await gateway_factory(parse_config(config(sim, sim, tmp_path)))
    client = await key_for(gw, [], model_rpm_limit={"llama": 1, "openai/*": 1})
    for first, other in (("llama", "gpt-4"), ("openai/gpt-4o", "openai/gpt-4o-mini")):
        await client.chat.completions.create(model=first, messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model=other, messages=MESSAGES)
    await client.chat.completions.create(model="backup", messages=MESSAGES)  # another model, its own limits


def test_litellm_budget_exceeded_status_code_is_honoured_and_checked() -> None:
    entry = {"model_name": "m", "litellm_params": {"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:9/v1"}}
    config = parse_config({"model_list": [entry], "litellm_settings": {"budget_exceeded_status_code": 429}})
    assert config.gateway.budget_exceeded_status == 429
    assert parse_config({"model_list": [entry]}).gateway.budget_exceeded_status == 422  # LiteLLM's default
    with pytest.raises(ConfigError, match=r"litellm_settings\.budget_exceeded_status_code: 200 is not an HTTP error"):
        parse_config({"model_list": [entry], "litellm_settings": {"budget_exceeded_status_code": 200}})


async def test_v1_models_lists_aliases_that_are_not_hidden_as_the_key_may_see_them(gateway_factory, sim,
                                                                                 tmp_path) -> None:
    gw = await gateway_factory(parse_config(config(sim, sim, tmp_path)))
    listed = [m.id async for m in gw.client().models.list()]
    assert listed == ["llama", "openai/*", "backup", "gpt-4"]  # `old` is hidden, as LiteLLM hides it
    narrow = await key_for(gw, ["llama"])
    assert [m.id async for m in narrow.models.list()] == ["llama", "gpt-4"]
    assert (await narrow.models.retrieve("gpt-4")).id == "gpt-4"


async def test_v1_models_lists_only_what_the_keys_user_may_call(gateway_factory, sim, tmp_path) -> None:
    gw = await gateway_factory(parse_config(config(sim, sim, tmp_path)))
    status, made = await admin(gw, "POST", "/user/new", {"user_id": "ana", "models": ["backup"]})
    assert status == 200, made
    client = await key_for(gw, [], user_id="ana")
    assert [m.id async for m in client.models.list()] == ["backup"]
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("llama")


async def test_metrics_name_calls_as_the_client_called_them_within_configured_names(gateway_factory, sim_factory,
                                                                                   tmp_path) -> None:
    sim = await sim_factory(models=("sim-model", "gpt-4o", "gpt-4o-mini"))
    gw = await gateway_factory(parse_config(config(sim, sim, tmp_path)))
    client = gw.client()
    for name in ("gpt-4", "openai/gpt-4o", "openai/gpt-4o-mini"):
        await client.chat.completions.create(model=name, messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="made-up-name", messages=MESSAGES)
    await gw.logged_calls(4)
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert 'llmp_gateway_requests_total{deployment="llama",model="gpt-4",status="200"} 1.0' in text
    assert 'llmp_gateway_requests_total{deployment="openai-any",model="openai/*",status="200"} 2.0' in text
    assert 'model="unknown",status="400"' in text and "made-up-name" not in text


async def test_a_key_pinned_to_a_zone_names_no_body_fallback_on_a_gateway_serving_every_zone(
        gateway_factory, sim_factory, tmp_path) -> None:
    # Such a key's calls use only its zone's deployments, without fallback aliases (governance/gate.py `_pinned`):
    # a fallback named in the body would reach deployments no zone filter has seen.
    sim = await sim_factory(models=("sim-model", "gpt-4o"))
    cfg = config(sim, sim, tmp_path)
    for model in cfg["models"]:
        model["deployments"][0]["residency"] = "eu"
    gw = await gateway_factory(parse_config(cfg))
    pinned = await key_for(gw, [], residency="eu")
    await pinned.chat.completions.create(model="llama", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError, match="may not call model `backup`"):
        await pinned.chat.completions.create(model="llama", messages=MESSAGES, extra_body={"fallbacks": ["backup"]})
