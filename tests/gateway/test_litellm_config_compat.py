"""A team's LiteLLM config.yaml, clients and scripts pointed at the gateway: each setting does what it does in
LiteLLM, or the gateway says at start that it ignores it (logged once) or refuses it (naming the setting, the file
and why). Checked with LiteLLM's own example configs, the official openai client and the simulator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.config.errors import ConfigError
from gateway.config.litellm_review import markdown_table
from gateway.config.litellm_settings import SETTINGS
from gateway.config.loading import load, parse_config
from gateway.http.app import build_app
from tests.gateway.conftest import KEY
from tests.gateway.faulty_upstream import FaultyUpstream, http
from tests.gateway.test_keys_admin import admin

CONFIGS = Path(__file__).parent / "litellm_configs"
README = Path(__file__).resolve().parents[2] / "gateway" / "README.md"
MESSAGES = [{"role": "user", "content": "hi"}]

# LiteLLM's example configs (tests/gateway/litellm_configs/README.md says where each comes from), and what the
# gateway does with each: ("starts", the settings it logs as ignored) or ("refused", the setting the error names).
# azure/... and bedrock/... deployments are served (gateway/upstream/cloud_calls.py); a Bedrock entry without
# aws_region_name takes the region from the environment, which example_env clears so the outcome is fixed.
EXPECTED: dict[str, tuple[str, Any]] = {
    "_health_check_test_config.yaml": ("starts", {"general_settings.background_health_checks",
                                                  "general_settings.health_check_interval",
                                                  "litellm_settings.set_verbose", "model_list[].model_info.base_model",
                                                  "model_list[].model_info.mode"}),
    "adaptive_router_example.yaml": ("refused", "model_list[0].litellm_params.model: provider 'auto_router'"),
    "advisor_interception_config.yaml": ("refused", "litellm_settings.callbacks: not supported by the gateway"),
    "agent_session_ec2_config.yaml": ("starts", {"agent_settings"}),
    "agentcore_websearch_config.yaml": ("refused", "search_tools"),
    "aliases_config.yaml": ("refused", "model_list[0].litellm_params.model: provider 'ollama'"),
    "anthropic_custom_user_agent_config.yaml": ("starts", {"model_list_with_extra_headers",
                                                           "model_list[].litellm_params.custom_user_agent"}),
    "azure_config.yaml": ("starts", {"model_list[].litellm_params.max_retries"}),
    "azure_config_with_tpm.yaml": ("starts", set()),
    "bing_grounding_websearch_config.yaml": ("refused", "search_tools"),
    "builtin_mcp_config.yaml": ("refused", "mcp_builtin_servers"),
    "code_interpreter_interception_config.yaml": ("refused", "sandbox_tools"),
    "dev_config.yaml": ("refused", "sandbox_tools"),
    "disable_schema_update.yaml": ("starts", {"litellm_settings.callbacks",
                                              "general_settings.disable_prisma_schema_update"}),
    "enterprise_config.yaml": ("refused", "router_settings.enable_tag_filtering"),
    "guardrails_eu_ai_act.yaml": ("refused", "guardrails"),
    "langfuse_config.yaml": ("refused", "model_list[0].litellm_params: required mapping is missing"),
    "load_balancer.yaml": ("refused", "model_list[2].litellm_params.model: provider 'openrouter'"),
    "model_config.yaml": ("starts", set()),
    "multi_instance_simple_config.yaml": ("starts", {"general_settings.coordination_redis"}),
    "oai_misc_config.yaml": ("refused", "model_list[4].litellm_params.aws_region_name: required for bedrock"),
    "okta_jwt_auth_config.yaml": ("refused", "general_settings.enable_jwt_auth"),
    "opentelemetry_config.yaml": ("starts", {"general_settings.otel"}),
    "otel_test_config.yaml": ("refused", "guardrails"),
    "pass_through_config.yaml": ("refused", "general_settings.custom_auth"),
    "proxy_config.yaml": ("refused", "mcp_servers"),
    "reject_clientside_metadata_tags_config.yaml": ("refused", "general_settings.reject_clientside_metadata_tags"),
    "simple_config.yaml": ("starts", set()),
    "spend_tracking_config.yaml": ("starts", {"general_settings.use_redis_transaction_buffer",
                                              "general_settings.coordination_redis"}),
    "store_model_db_config.yaml": ("refused", "general_settings.store_model_in_db"),
    "test_pipeline_config.yaml": ("refused", "guardrails"),
    "tool_permission_example.yaml": ("refused", "guardrails"),
    "websearch_interception_config.yaml": ("refused", "search_tools"),
    "wildcard_config.yaml": ("refused", "model_list[2].litellm_params.model: provider 'vertex_ai'"),
}


def example_env(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """Every os.environ/NAME an example reads, set (a URL where the name says so), LiteLLM's master key, and no
    AWS region (a Bedrock entry would otherwise take this machine's)."""
    for name in ("AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name in re.findall(r"os\.environ/([A-Za-z0-9_]+)", text):
        monkeypatch.setenv(name, "http://127.0.0.1:9/v1" if "BASE" in name or "URL" in name else f"value-{name}")
    monkeypatch.setenv("LITELLM_MASTER_KEY", KEY)


def test_every_vendored_example_has_an_expected_outcome() -> None:
    assert set(EXPECTED) == {p.name for p in CONFIGS.glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_litellm_example_configs_start_or_are_refused_naming_the_setting(name: str, monkeypatch) -> None:
    path = CONFIGS / name
    example_env(monkeypatch, path.read_text())
    outcome, detail = EXPECTED[name]
    if outcome == "refused":
        with pytest.raises(ConfigError) as refused:
            load(path)
        message = str(refused.value)
        assert message.startswith(f"{path}: ") and detail in message, message
        return
    loaded = load(path)  # anything but a ConfigError here is a crash: the test fails with its traceback
    assert {i.path for i in loaded.ignored} == detail
    assert all(i.line().startswith(f"{i.path} ignored: ") for i in loaded.ignored)
    build_app(loaded.config, dev=True)  # the example keys are weak: --dev, as LiteLLM's own permit flag


def test_the_readme_lists_every_setting_as_the_table_says() -> None:
    text = README.read_text()
    assert markdown_table() in text, "regenerate: python -m gateway.config.litellm_review > the README table"
    assert {s.outcome for s in SETTINGS} == {"honoured", "ignored", "refused"}


# ---- behaviour, with the official openai client -------------------------------------------------------------


def doc(*entries: dict[str, Any], router: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    return {"model_list": list(entries), "router_settings": {"num_retries": 0, **(router or {})},
            "general_settings": {"master_key": KEY}, **sections}


def entry(name: str, model: str, base: str, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": model, "api_base": base, **params}}


async def test_a_bare_model_name_is_openais_and_litellm_master_key_comes_from_the_environment(
        gateway_factory, sim_factory, monkeypatch) -> None:
    sim = await sim_factory(models=("gpt-3.5-turbo",))
    monkeypatch.setenv("LITELLM_MASTER_KEY", KEY)
    config = doc(entry("gpt-3.5-turbo", "gpt-3.5-turbo", sim.base_url))
    del config["general_settings"]
    gw = await gateway_factory(parse_config(config))
    answer = await gw.client().chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)
    assert answer.choices[0].message.content
    assert sim.stats.bodies[-1]["model"] == "gpt-3.5-turbo"
    with pytest.raises(openai.AuthenticationError):
        await gw.client(api_key="sk-not-the-master-key").chat.completions.create(model="gpt-3.5-turbo",
                                                                                 messages=MESSAGES)


async def test_wildcards_send_the_clients_model_name_upstream_most_specific_pattern_first(
        gateway_factory, sim_factory) -> None:
    openai_sim = await sim_factory(models=("gpt-4o",), name="openai")
    any_sim = await sim_factory(models=("my-finetune",), name="any")
    gw = await gateway_factory(parse_config(doc(
        entry("*", "hosted_vllm/*", any_sim.base_url),  # listed first: order must not matter, specificity does
        entry("openai/*", "openai/*", openai_sim.base_url))))
    client = gw.client()
    await client.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
    assert openai_sim.stats.bodies[-1]["model"] == "gpt-4o", "LiteLLM strips the provider: openai/gpt-4o -> gpt-4o"
    await client.chat.completions.create(model="my-finetune", messages=MESSAGES)
    assert any_sim.stats.bodies[-1]["model"] == "my-finetune"
    # Matched, so sent: the upstream's own answer says it does not serve the name (its status is the status
    # mapping's to decide).
    with pytest.raises(openai.APIStatusError, match="The model `nothing-here` does not exist"):
        await client.chat.completions.create(model="openai/nothing-here", messages=MESSAGES)


async def test_model_group_alias_and_hidden_aliases_call_their_model(gateway_factory, sim) -> None:
    gw = await gateway_factory(parse_config(doc(
        entry("llama", "hosted_vllm/sim-model", sim.base_url),
        router={"model_group_alias": {"gpt-4": "llama", "old-name": {"model": "llama", "hidden": True}}})))
    client = gw.client()
    for name in ("gpt-4", "old-name"):
        await client.chat.completions.create(model=name, messages=MESSAGES)
        assert sim.stats.bodies[-1]["model"] == "sim-model"
    assert gw.state.config.model_aliases["old-name"].hidden  # kept off /v1/models, as LiteLLM does
    # LiteLLM answers a name no route serves with 400 "Invalid model name" (gateway/http/errors.py model_not_found)
    with pytest.raises(openai.BadRequestError, match="Invalid model name passed in model=gpt-5"):
        await client.chat.completions.create(model="gpt-5", messages=MESSAGES)


async def test_litellm_params_are_request_defaults_and_the_clients_value_wins(gateway_factory, sim) -> None:
    # Checked side by side with LiteLLM 1.106.2: `{**litellm_params, ..., **kwargs}` in Router._acompletion.
    gw = await gateway_factory(parse_config(doc(
        entry("llama", "hosted_vllm/sim-model", sim.base_url, temperature=0.2, max_tokens=50, seed=7))))
    client = gw.client()
    await client.chat.completions.create(model="llama", messages=MESSAGES, temperature=0.9)
    sent = sim.stats.bodies[-1]
    assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.9, 50, 7)
    await client.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=5)
    sent = sim.stats.bodies[-1]
    assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.2, 5, 7)


# vLLM's 400 for a prompt over the context window (vllm/renderers/params.py, TokenizeParams._token_len_check,
# raised as VLLMValidationError and answered as an OpenAI-shaped ErrorResponse).
VLLM_CONTEXT_ERROR = (b'{"error":{"message":"This model\'s maximum context length is 8192 tokens. However, you '
                      b'requested 16 output tokens and your prompt contains 9000 input tokens, for a total of 9016 '
                      b'tokens. Please reduce the length of the input prompt or the number of requested output '
                      b'tokens.","type":"BadRequestError","param":null,"code":400}}')


async def test_context_window_fallbacks_answer_a_prompt_over_the_context_window(gateway_factory, sim) -> None:
    # The three cases below were run side by side on LiteLLM 1.106.2 with the same configs and upstream answer:
    # it answered through `long`, then the 400 (ContextWindowExceededError), then through `other`.
    short = await FaultyUpstream([http(VLLM_CONTEXT_ERROR, b"400 Bad Request")]).start()
    try:
        models = (entry("short", "hosted_vllm/sim-model", short.base_url),
                  entry("long", "hosted_vllm/sim-model", sim.base_url),
                  entry("other", "hosted_vllm/sim-model", sim.base_url))
        gw = await gateway_factory(parse_config(doc(*models, router={
            "context_window_fallbacks": [{"short": ["long"]}], "fallbacks": [{"short": ["other"]}]})))
        before = sim.stats.requests
        answer = await gw.client().chat.completions.create(model="short", messages=MESSAGES)
        assert answer.choices[0].message.content and sim.stats.requests == before + 1
        (call,) = await gw.logged_calls(1)
        assert call["fallbacks"] == ["long"], "the context-window group, not the ordinary fallbacks"
        stream = await gw.client().chat.completions.create(model="short", messages=MESSAGES, stream=True)
        assert [chunk async for chunk in stream], "a stream falls back the same way (before its first byte)"
        assert [c["fallbacks"] for c in await gw.logged_calls(2)][1] == ["long"]

        # context_window_fallbacks set for another model only: LiteLLM answers the error (no ordinary fallback).
        gw = await gateway_factory(parse_config(doc(*models, router={
            "context_window_fallbacks": [{"other": ["long"]}], "fallbacks": [{"short": ["other"]}]})))
        with pytest.raises(openai.BadRequestError, match="maximum context length is 8192") as refused:
            await gw.client().chat.completions.create(model="short", messages=MESSAGES)
        assert refused.value.code == "context_length_exceeded"

        # None set anywhere: LiteLLM "defaults to fallbacks, if available".
        gw = await gateway_factory(parse_config(doc(*models, router={"fallbacks": [{"short": ["other"]}]})))
        await gw.client().chat.completions.create(model="short", messages=MESSAGES)
        (call,) = await gw.logged_calls(1)
        assert call["fallbacks"] == ["other"]
    finally:
        await short.stop()


async def test_fallbacks_in_the_request_body_replace_the_configured_ones_and_never_reach_the_upstream(
        gateway_factory, sim_factory) -> None:
    down = await sim_factory(name="down", fault="error_500")
    backup = await sim_factory(name="backup")
    gw = await gateway_factory(parse_config(doc(
        entry("llama", "hosted_vllm/sim-model", down.base_url),
        entry("backup", "hosted_vllm/sim-model", backup.base_url),
        entry("configured", "hosted_vllm/sim-model", down.base_url),
        router={"fallbacks": [{"llama": ["configured"]}]})))
    client = gw.client()
    answer = await client.chat.completions.create(model="llama", messages=MESSAGES,
                                                  extra_body={"fallbacks": ["backup"]})
    assert answer.choices[0].message.content
    assert "fallbacks" not in backup.stats.bodies[-1] and "fallbacks" not in down.stats.bodies[-1]
    (call,) = await gw.logged_calls(1)
    assert call["fallbacks"] == ["backup"]
    with pytest.raises(openai.BadRequestError, match="`fallbacks` must be a list of model names"):
        await client.chat.completions.create(model="llama", messages=MESSAGES,
                                             extra_body={"fallbacks": [{"model": "backup"}]})


async def test_a_virtual_key_may_not_fall_back_to_a_model_it_may_not_call(gateway_factory, sim, tmp_path) -> None:
    config = doc(entry("llama", "hosted_vllm/sim-model", sim.base_url),
                 entry("expensive", "hosted_vllm/sim-model", sim.base_url))
    config["general_settings"]["database_url"] = f"sqlite:///{tmp_path / 'ledger.db'}"
    gw = await gateway_factory(parse_config(config))
    status, made = await admin(gw, "POST", "/key/generate", {"models": ["llama"]})
    assert status == 200, made
    client = gw.client(api_key=made["key"])
    await client.chat.completions.create(model="llama", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError, match="may not call model `expensive`"):
        await client.chat.completions.create(model="llama", messages=MESSAGES,
                                             extra_body={"fallbacks": ["expensive"]})


async def test_allowed_fails_and_cooldown_time_reach_the_circuit_breaker(gateway_factory, sim_factory) -> None:
    down = await sim_factory(name="down", fault="error_500")
    gw = await gateway_factory(parse_config(doc(entry("llama", "hosted_vllm/sim-model", down.base_url),
                                                router={"allowed_fails": 1, "cooldown_time": 60})))
    client = gw.client()
    for expected in (1, 2):  # LiteLLM allows `allowed_fails` failures, and cools down on the next one
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="llama", messages=MESSAGES)
        assert down.stats.requests == expected
    with pytest.raises(openai.APIStatusError) as cooled:
        await client.chat.completions.create(model="llama", messages=MESSAGES)
    # LiteLLM 1.106.2, run side by side on this config: 2 upstream calls, then 429 "No deployments available ...
    # Try again in 60 seconds" without calling it. The status is the error mapping's; the behaviour is this:
    assert cooled.value.status_code in (429, 503) and "no healthy deployment" in cooled.value.message.lower()
    assert down.stats.requests == 2, "cooling down for cooldown_time: the replica is not called"
    breaker = gw.state.router.route("llama").deployments[0].replicas[0].breaker  # type: ignore[union-attr]
    assert (breaker.failures, breaker.cooldown) == (2, 60)


async def test_a_virtual_key_falls_back_to_models_the_governance_layer_allows(gateway_factory, sim_factory,
                                                                             tmp_path) -> None:
    down = await sim_factory(name="down", fault="error_500")
    backup = await sim_factory(name="backup")
    config = doc(entry("llama", "hosted_vllm/sim-model", down.base_url),
                 entry("backup", "hosted_vllm/sim-model", backup.base_url))
    config["general_settings"]["database_url"] = f"sqlite:///{tmp_path / 'ledger.db'}"
    gw = await gateway_factory(parse_config(config))
    status, made = await admin(gw, "POST", "/key/generate", {"models": ["llama", "backup"]})
    assert status == 200, made
    client = gw.client(api_key=made["key"])
    # The Proxy asks the governance layer (Governance.may_call, set at start): the key's lists allow `backup`.
    assert gw.state.proxy.may_call == gw.state.governance.may_call
    answer = await client.chat.completions.create(model="llama", messages=MESSAGES,
                                                  extra_body={"fallbacks": ["backup"]})
    assert answer.choices[0].message.content and backup.stats.requests == 1
    # Unset (no governance layer to ask), a virtual key's body fallbacks are refused, never tried unchecked.
    gw.state.proxy.may_call = None
    with pytest.raises(openai.PermissionDeniedError, match="may not call model `backup`"):
        await client.chat.completions.create(model="llama", messages=MESSAGES, extra_body={"fallbacks": ["backup"]})


def test_a_wildcard_route_rebuilt_without_its_match_still_sends_the_clients_name() -> None:
    # The governance gate copies a route to pin it to a residency zone (governance/gate.py `_pinned`), which
    # drops the wildcard's match: the name sent upstream is then rebuilt from the client's.
    from gateway.upstream.routing import ModelRoute, Router

    router = Router(parse_config(doc(entry("openai/*", "openai/*", "http://127.0.0.1:9/v1"))))
    matched = router.route("openai/gpt-4o")
    assert matched is not None and matched.parts == ("gpt-4o",)
    copy = ModelRoute(matched.alias, matched.max_tokens, [], matched.deployments)
    assert copy.upstream_model(copy.deployments[0], "openai/gpt-4o") == "gpt-4o"
