"""OpenAI clients reach Azure OpenAI deployments: Azure's URL shape and api-version, its `api-key` header or an
Entra ID token the gateway fetches and refreshes, streams relayed, content-filter refusals passed on with their code."""

from __future__ import annotations

import aiohttp
import anthropic
import openai
import pytest

from gateway.config.clouds import AzureSettings
from gateway.config.errors import ConfigError
from gateway.config.loading import parse_config
from gateway.upstream.azure_auth import REFRESH_BEFORE, AzureAuth, AzureTokenError
from tests.gateway.conftest import KEY, gateway_config
from tests.gateway.fake_clouds import FakeAzure

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def azure():
    fake = await FakeAzure().start()
    yield fake
    await fake.stop()


def azure_deployment(fake: FakeAzure, **auth: object) -> dict[str, object]:
    dep: dict[str, object] = {"name": "azure-eastus", "provider": "azure", "model": fake.deployment,
                              "api_base": fake.base_url, "azure": {"api_version": fake.api_version}}
    if "api_key" in auth:
        dep["api_key"] = auth.pop("api_key")
    if auth:
        dep["azure"] = {**dep["azure"], **auth}  # type: ignore[dict-item]
    return dep


async def test_chat_goes_to_the_deployment_url_with_api_version_and_api_key(azure, gateway_factory) -> None:
    gw = await gateway_factory(gateway_config(models=[{"alias": "gpt-4o", "deployments": [
        azure_deployment(azure, api_key=azure.api_key)]}]))
    reply = await gw.client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [sent] = azure.requests
    assert sent["path"] == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert sent["query"] == {"api-version": "2024-10-21"}
    assert sent["headers"]["api-key"] == azure.api_key and "Authorization" not in sent["headers"]
    assert reply.choices[0].message.content == "Hi from Azure" and reply.usage.total_tokens == 12


async def test_streams_and_embeddings_use_the_same_deployment(azure, gateway_factory) -> None:
    gw = await gateway_factory(gateway_config(models=[{"alias": "gpt-4o", "deployments": [
        azure_deployment(azure, api_key=azure.api_key)]}]))
    stream = await gw.client().chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi from Azure"
    assert not [c for c in chunks if c.usage]  # metered (include_usage asked upstream), stripped for the client
    [call] = await gw.logged_calls(1)
    assert (call["prompt_tokens"], call["completion_tokens"]) == (9, 3)
    vectors = await gw.client().embeddings.create(model="gpt-4o", input="x")
    assert vectors.data[0].embedding == [0.1, 0.2]
    assert azure.requests[-1]["path"] == "/openai/deployments/gpt-4o-prod/embeddings"


async def test_a_content_filter_refusal_reaches_the_client_as_400_with_its_code(azure, gateway_factory) -> None:
    azure.content_filter = True
    gw = await gateway_factory(gateway_config(models=[{"alias": "gpt-4o", "deployments": [
        azure_deployment(azure, api_key=azure.api_key)]}]))
    with pytest.raises(openai.BadRequestError) as err:
        await gw.client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert err.value.code == "content_filter" and "content management policy" in err.value.message
    assert len(azure.requests) == 1  # the prompt's fault: not retried


async def test_a_wrong_key_fails_over_and_never_reaches_the_client(azure, gateway_factory) -> None:
    gw = await gateway_factory(gateway_config(models=[{"alias": "gpt-4o", "deployments": [
        azure_deployment(azure, api_key="azure-key-WRONG-000")]}]))
    with pytest.raises(openai.InternalServerError) as err:
        await gw.client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "http_401" in err.value.message and "azure-key-WRONG-000" not in err.value.message


async def test_client_credentials_get_an_entra_token_once_and_reuse_it(azure, gateway_factory) -> None:
    gw = await gateway_factory(gateway_config(models=[{"alias": "gpt-4o", "deployments": [azure_deployment(
        azure, tenant_id="tenant-1", client_id="app-1", client_secret="entra-secret-FAKE",
        authority_host=azure.base_url)]}]))
    for _ in range(3):
        await gw.client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [token_request] = azure.token_requests
    assert token_request == {"tenant": "tenant-1", "grant_type": "client_credentials", "client_id": "app-1",
                             "client_secret": "entra-secret-FAKE",
                             "scope": "https://cognitiveservices.azure.com/.default"}
    assert {r["headers"]["Authorization"] for r in azure.requests} == {"Bearer entra-token-0"}
    assert all("api-key" not in r["headers"] for r in azure.requests)


async def test_an_entra_token_is_refreshed_before_it_expires(azure) -> None:
    now = [1000.0]
    settings = AzureSettings(tenant_id="t", client_id="c", client_secret="entra-secret-FAKE",
                             authority_host=azure.base_url)
    auth = AzureAuth(settings, clock=lambda: now[0])
    async with aiohttp.ClientSession() as session:
        assert await auth.header(session, None) == {"Authorization": "Bearer entra-token-0"}
        now[0] += 3600 - REFRESH_BEFORE - 1  # still comfortably valid
        assert await auth.header(session, None) == {"Authorization": "Bearer entra-token-0"}
        now[0] += 2  # inside the refresh window: calls go on with the valid token while one task refreshes it
        assert {(await auth.header(session, None))["Authorization"] for _ in range(5)} == {"Bearer entra-token-0"}
        await refreshed(auth)
        assert await auth.header(session, None) == {"Authorization": "Bearer entra-token-1"}
        assert len(azure.token_requests) == 2

        bad = AzureAuth(settings.model_copy(update={"client_secret": "wrong"}))
        with pytest.raises(AzureTokenError, match="AADSTS7000215: Invalid client secret provided") as err:
            await bad.header(session, None)
        assert "wrong" not in str(err.value)


async def refreshed(auth: AzureAuth) -> None:
    """Wait for the background refresh `header` started."""
    task = auth._refreshing
    assert task is not None, "no refresh was started"
    await task


async def test_a_failed_refresh_keeps_the_valid_token_and_no_call_waits_on_entra(azure) -> None:
    now = [1000.0]
    settings = AzureSettings(tenant_id="t", client_id="c", client_secret="entra-secret-FAKE",
                             authority_host=azure.base_url)
    auth = AzureAuth(settings, clock=lambda: now[0])
    async with aiohttp.ClientSession() as session:
        assert await auth.header(session, None) == {"Authorization": "Bearer entra-token-0"}
        auth.settings = settings.model_copy(update={"client_secret": "wrong"})  # Entra now refuses the app
        now[0] += 3600 - REFRESH_BEFORE + 1
        assert await auth.header(session, None) == {"Authorization": "Bearer entra-token-0"}
        await refreshed(auth)
        assert auth.refresh_error is not None and "AADSTS7000215" in auth.refresh_error
        assert await auth.header(session, None) == {"Authorization": "Bearer entra-token-0"}
        assert auth._refreshing is None, "a failed refresh is not retried at once"
        now[0] += REFRESH_BEFORE  # expired: now a call must wait for a token, and fails with Entra's reason
        with pytest.raises(AzureTokenError, match="AADSTS7000215"):
            await auth.header(session, None)


async def test_a_given_ad_token_is_sent_as_a_bearer_token(azure, gateway_factory) -> None:
    gw = await gateway_factory(gateway_config(models=[{"alias": "gpt-4o", "deployments": [
        azure_deployment(azure, ad_token="static-ad-token")]}]))
    await gw.client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert azure.requests[0]["headers"]["Authorization"] == "Bearer static-ad-token"


def test_litellm_azure_models_map_with_litellms_parameter_names() -> None:
    config = parse_config({"model_list": [
        {"model_name": "gpt-4o", "litellm_params": {"model": "azure/gpt-4o-prod", "api_base": "https://r.openai.azure.com/",
                                                     "api_version": "2025-01-01-preview", "api_key": "k"}},
        {"model_name": "gpt-4o-entra", "litellm_params": {"model": "azure/gpt-4o-prod",
                                                           "api_base": "https://r.openai.azure.com",
                                                           "tenant_id": "t", "client_id": "c", "client_secret": "s"}},
    ]})
    keyed, entra = (m.deployments[0] for m in config.models)
    assert (keyed.provider, keyed.model, keyed.api_base, keyed.api_key) == (
        "azure", "gpt-4o-prod", "https://r.openai.azure.com", "k")
    assert keyed.azure is not None and keyed.azure.api_version == "2025-01-01-preview"
    assert entra.azure is not None and entra.azure.client_credentials and entra.azure.api_version == "2024-10-21"


@pytest.mark.parametrize(("params", "message"), [
    ({"model": "azure/gpt-4o", "api_key": "k"}, "litellm_params.api_base: required for azure"),
    ({"model": "azure/gpt-4o", "api_base": "https://r.openai.azure.com"}, "needs exactly one of 'api_key'"),
    ({"model": "azure/gpt-4o", "api_base": "https://r.openai.azure.com", "tenant_id": "t", "client_id": "c"},
     "missing ['client_secret']"),
])
def test_incomplete_azure_settings_are_refused_by_name(params, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"model_list": [{"model_name": "m", "litellm_params": params}]})
    assert message in str(err.value)


async def test_refused_client_credentials_fail_over_with_entras_reason(azure, gateway_factory) -> None:
    gw = await gateway_factory(gateway_config(models=[{"alias": "gpt-4o", "deployments": [azure_deployment(
        azure, tenant_id="tenant-1", client_id="app-1", client_secret="not-it", authority_host=azure.base_url)]}]))
    with pytest.raises(openai.InternalServerError) as err:
        await gw.client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    # The client learns the class of failure; Entra's words (tenant and client ids) reach only the call log.
    assert "azure-eastus: auth_error" in err.value.message
    assert "tenant-1" not in err.value.message and "AADSTS" not in err.value.message
    [logged] = await gw.logged_calls(1)
    assert "auth_error: Entra ID token request for tenant tenant-1 failed with 401" in logged["error"]
    assert "not-it" not in err.value.message + logged["error"] and not azure.requests


async def test_anthropic_clients_reach_azure_deployments_too(azure, gateway_factory) -> None:
    gw = await gateway_factory(gateway_config(models=[{"alias": "gpt-4o", "deployments": [
        azure_deployment(azure, api_key=azure.api_key)]}]))
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0)
    reply = await client.messages.create(model="gpt-4o", max_tokens=20, messages=[{"role": "user", "content": "Hi"}])
    assert reply.content[0].text == "Hi from Azure" and reply.usage.output_tokens == 3
    assert azure.requests[0]["path"] == "/openai/deployments/gpt-4o-prod/chat/completions"
