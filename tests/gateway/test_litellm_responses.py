"""What LiteLLM clients see on the data path: model names, statuses, error bodies and x-litellm-* headers.

Each expectation is LiteLLM 1.106.2's behaviour, checked side by side against the simulator
(`litellm --config` with an `openai/` deployment) and cited to its source; LiteLLM itself is not
installed in the test environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.gateway.conftest import MODEL, deployment, gateway_config
from tests.gateway.test_keys_admin import admin, governed

MESSAGES = [{"role": "user", "content": "Say hello to the gateway"}]
ALIAS = "team-chat"  # what clients ask for; the deployment's model is MODEL
RATELIMITS = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
              "x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "29000"}


def aliased(*deployments: dict[str, Any], **model: Any) -> dict[str, Any]:
    return gateway_config(models=[{"alias": ALIAS, "deployments": list(deployments), **model}])


async def test_answers_and_every_stream_chunk_carry_the_model_name_the_client_asked_for(sim, gateway_factory):
    """LiteLLM restamps `model` with the requested name (proxy/common_request_processing.py@v1.106.2
    `_override_openai_response_model`; proxy_server.py@v1.106.2 `_restamp_streaming_chunk_model`);
    seen side by side: `"model":"my-alias"` where the upstream said `upstream-model`."""
    gw = await gateway_factory(aliased(deployment("sim-a", sim.base_url)))
    client = gw.client()
    reply = await client.chat.completions.create(model=ALIAS, messages=MESSAGES)
    assert reply.model == ALIAS and sim.stats.bodies[-1]["model"] == MODEL
    stream = await client.chat.completions.create(model=ALIAS, messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert len(chunks) > 3 and {c.model for c in chunks} == {ALIAS}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == sim.settings.output_tokens
    text = await client.completions.create(model=ALIAS, prompt="hi")
    embedded = await client.embeddings.create(model=ALIAS, input="hi")
    assert (text.model, embedded.model) == (ALIAS, ALIAS)


async def test_after_a_fallback_the_answer_names_the_model_that_answered(sim_factory, gateway_factory):
    """LiteLLM keeps the upstream's model after a fallback ("If a fallback occurred ... we preserve the actual
    model that was used", `_override_openai_response_model`@v1.106.2) and says so in its headers."""
    broken = await sim_factory(name="broken", fault="error_500")
    spare = await sim_factory(name="spare")
    gw = await gateway_factory(gateway_config(models=[
        {"alias": ALIAS, "deployments": [deployment("broken", broken.base_url)], "fallbacks": ["spare"]},
        {"alias": "spare", "deployments": [deployment("spare", spare.base_url)]}], retries={"attempts": 0}))
    raw = await gw.client().chat.completions.with_raw_response.create(model=ALIAS, messages=MESSAGES)
    assert raw.parse().model == MODEL
    assert raw.headers["x-litellm-attempted-fallbacks"] == "1" and raw.headers["x-litellm-model-group"] == "spare"
    assert raw.headers["x-litellm-model-id"] == "spare"


async def test_litellm_headers_on_answers_and_streams(sim, gateway_factory):
    """Names from ProxyBaseLLMRequestProcessing.get_custom_headers (common_request_processing.py@v1.106.2) and
    router_utils/add_retry_fallback_headers.py@v1.106.2; seen side by side on whole answers and streams alike.
    The upstream's x-ratelimit-* come along (litellm_core_utils/llm_response_utils/get_headers.py@v1.106.2)."""
    sim.settings.headers = {**RATELIMITS, "x-ratelimit-reset-tokens": "6ms", "x-upstream-secret": "internal"}
    gw = await gateway_factory(aliased(deployment("sim-a", sim.base_url)))
    client = gw.client()
    raw = await client.chat.completions.with_raw_response.create(model=ALIAS, messages=MESSAGES)
    async with client.chat.completions.with_streaming_response.create(model=ALIAS, messages=MESSAGES,
                                                                      stream=True) as streamed:
        stream_headers = streamed.headers
        assert [line async for line in streamed.iter_lines() if line][-1] == "data: [DONE]"
    for headers in (raw.headers, stream_headers):
        assert headers["x-litellm-call-id"] == headers["x-request-id"]
        assert headers["x-litellm-model-id"] == "sim-a" and headers["x-litellm-model-name"] == f"openai/{MODEL}"
        assert headers["x-litellm-model-group"] == ALIAS
        assert (headers["x-litellm-attempted-retries"], headers["x-litellm-attempted-fallbacks"]) == ("0", "0")
        assert float(headers["x-litellm-overhead-duration-ms"]) >= 0
        assert {k: headers[k] for k in RATELIMITS} == RATELIMITS
        # LiteLLM forwards four x-ratelimit-* headers by name; the rest only prefixed `llm_provider-`, which
        # this gateway does not send at all (an upstream's headers are not the caller's business).
        assert "x-ratelimit-reset-tokens" not in headers and "x-upstream-secret" not in headers


async def test_an_upstream_429_after_retries_is_a_rate_limit_error_with_its_headers(sim_factory, gateway_factory):
    """LiteLLM: 429, `{"type": "throttling_error", "param": null, "code": "429"}` (exceptions.py@v1.106.2
    RateLimitError; seen side by side), so `except openai.RateLimitError` fires as it does against OpenAI."""
    busy = await sim_factory(name="busy", fault="rate_limit_429", retry_after=0, headers=RATELIMITS)
    gw = await gateway_factory(aliased(deployment("busy", busy.base_url)))
    with pytest.raises(openai.RateLimitError) as err:
        await gw.client().chat.completions.create(model=ALIAS, messages=MESSAGES)
    assert err.value.status_code == 429 and busy.stats.requests == 3, "the first try and two retries"
    body = err.value.body
    assert (body["type"], body["param"], body["code"]) == ("throttling_error", None, "429")
    assert {k: err.value.response.headers[k] for k in RATELIMITS} == RATELIMITS
    assert err.value.response.headers["x-litellm-call-id"]


async def test_the_last_failure_decides_the_status_after_a_fallback(sim_factory, gateway_factory):
    """A 500 on the model, then a 429 on its fallback: the client sees the fallback's 429, LiteLLM's last error."""
    broken = await sim_factory(name="broken", fault="error_500")
    busy = await sim_factory(name="busy", fault="rate_limit_429", retry_after=0)
    gw = await gateway_factory(gateway_config(models=[
        {"alias": ALIAS, "deployments": [deployment("broken", broken.base_url)], "fallbacks": ["busy"]},
        {"alias": "busy", "deployments": [deployment("busy", busy.base_url)]}], retries={"attempts": 0}))
    with pytest.raises(openai.RateLimitError, match=r"broken: http_500.*busy: http_429"):
        await gw.client().chat.completions.create(model=ALIAS, messages=MESSAGES)
    broken.settings.fault, busy.settings.fault = "rate_limit_429", "error_500"
    with pytest.raises(openai.InternalServerError) as err:
        await gw.client().chat.completions.create(model=ALIAS, messages=MESSAGES)
    assert err.value.status_code == 500 and err.value.body["type"] == "internal_server_error"


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_an_upstream_5xx_keeps_its_status(sim, gateway_factory, status):
    """exception_mapping_utils.py@v1.106.2: 502 BadGatewayError, 503 ServiceUnavailableError, 504 Timeout with
    `exception_status_code=504`; handle_llm_api_exception answers each exception's status_code."""
    sim.settings.fault = "error_500"
    sim.settings.error_status = status
    gw = await gateway_factory(aliased(deployment("sim-a", sim.base_url)))
    with pytest.raises(openai.InternalServerError) as err:
        await gw.client().chat.completions.create(model=ALIAS, messages=MESSAGES)
    assert err.value.status_code == status and err.value.body["code"] == str(status)


async def test_errors_never_carry_the_provider_key(sim, gateway_factory):
    sim.settings.fault = "error_500"
    sim.settings.error_message = "bad key sk-provider-SECRET-0123456789 in Authorization"
    gw = await gateway_factory(aliased(deployment("sim-a", sim.base_url, api_key="sk-provider-SECRET-0123456789")))
    with pytest.raises(openai.InternalServerError) as err:
        await gw.client().chat.completions.create(model=ALIAS, messages=MESSAGES)
    assert "SECRET" not in orjson.dumps(err.value.body).decode() and "SECRET" not in str(err.value.response.headers)


async def test_a_key_asking_for_a_model_it_may_not_use_gets_litellms_403(sim, gateway_factory, tmp_path: Path):
    """proxy/auth/auth_checks.py@v1.106.2 `_can_object_call_model`: ModelAccessDeniedProxyException, code 403,
    type key_model_access_denied, param "model", message MODEL_ACCESS_DENIED_CLIENT_MESSAGE
    (proxy/auth/model_access_denied.py@v1.106.2). (LiteLLM once answered 401 here; 1.106.2 answers 403.)"""
    gw = await gateway_factory(governed(sim, tmp_path))
    _, made = await admin(gw, "POST", "/key/generate", {"models": ["other-model"]})
    with pytest.raises(openai.PermissionDeniedError) as err:
        await gw.client(api_key=made["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert err.value.body == {
        "message": f"The requested model '{MODEL}' is not available for this API key, or the model name is invalid. "
                   "Check the models available to you and try again.",
        "type": "key_model_access_denied", "param": "model", "code": "403"}
    assert sim.stats.requests == 0


async def test_a_key_over_its_budget_gets_litellms_budget_exceeded(sim, gateway_factory, tmp_path: Path):
    """LiteLLM: BudgetExceededError -> ProxyException(type="budget_exceeded", param=None,
    code=litellm.budget_exceeded_status_code) (proxy/auth/auth_exception_handler.py@v1.106.2), and
    `budget_exceeded_status_code: int = 422` (litellm/__init__.py@v1.106.2; it was 400, then 429, in older
    releases); the message starts "Budget has been exceeded!" (auth_checks.py@v1.106.2)."""
    gw = await gateway_factory(governed(sim, tmp_path))
    _, made = await admin(gw, "POST", "/key/generate", {"max_budget": 0.05})
    client = gw.client(api_key=made["key"])
    answered = 0
    for _ in range(30):
        try:
            raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        except openai.UnprocessableEntityError as err:
            assert err.status_code == 422
            body = err.body
            break
        assert raw.headers["x-litellm-key-max-budget"] == "0.05"
        usage = raw.parse().usage
        assert usage is not None
        assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(
            usage.prompt_tokens * 0.001 + usage.completion_tokens * 0.002)
        answered += 1
    else:
        pytest.fail("the budget never refused a call")
    assert answered >= 1 and isinstance(body, dict)
    assert (body["type"], body["param"], body["code"]) == ("budget_exceeded", None, "422")
    assert body["message"].startswith("Budget has been exceeded! ") and "max_budget 0.05" in body["message"]
