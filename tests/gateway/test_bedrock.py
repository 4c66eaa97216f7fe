"""OpenAI clients reach Amazon Bedrock through the Converse API: signed with the gateway's own AWS credentials,
requests and answers translated, ConverseStream's binary events relayed as OpenAI chunks, errors mapped."""

from __future__ import annotations

import asyncio
import importlib
import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import anthropic
import openai
import pytest
from botocore.credentials import Credentials, RefreshableCredentials

from gateway.config.errors import ConfigError
from gateway.config.loading import parse_config
from gateway.upstream import cloud_calls
from gateway.upstream.aws_signing import AwsCredentials, NoAwsCredentials
from tests.gateway.conftest import KEY, gateway_config
from tests.gateway.fake_clouds import ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, FakeBedrock, event, frame, text_events

MODEL_ID = "us.anthropic.claude-3-5-haiku-20241022-v1:0"  # a cross-region inference profile id
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment leg of botocore's chain, as a laptop has it (a cluster has IRSA's web identity)."""
    for name in ("AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


@pytest.fixture
async def bedrock(aws_env, gateway_factory):
    fake = await FakeBedrock().start()
    config = gateway_config(models=[{"alias": "claude", "max_tokens": 64, "deployments": [{
        "name": "bedrock-us", "provider": "bedrock", "model": MODEL_ID, "region": "us-east-1",
        "api_base": fake.base_url}]}])
    yield fake, await gateway_factory(config)
    await fake.stop()


async def test_chat_is_signed_translated_to_converse_and_back(bedrock) -> None:
    fake, gw = bedrock
    reply = await gw.client().chat.completions.create(model="claude", messages=MESSAGES, stop=["END"],
                                                      temperature=0.3, top_p=0.9, max_tokens=500)
    assert fake.signature_problems == []
    [sent] = fake.requests
    assert sent["path"] == "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    assert sent["body"] == {"system": [{"text": "Be brief."}],
                            "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
                            "inferenceConfig": {"maxTokens": 64, "temperature": 0.3, "topP": 0.9,
                                                "stopSequences": ["END"]}}
    assert reply.choices[0].message.content == "Hello from Bedrock" and reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (12, 4, 16)
    [call] = await gw.logged_calls(1)
    assert (call["deployment"], call["prompt_tokens"], call["completion_tokens"]) == ("bedrock-us", 12, 4)


async def test_tools_and_tool_results_round_trip(bedrock) -> None:
    fake, gw = bedrock
    fake.answer = {"output": {"message": {"role": "assistant", "content": [
        {"text": "Checking."}, {"toolUse": {"toolUseId": "tu-1", "name": "weather", "input": {"city": "Oslo"}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 30, "outputTokens": 9, "totalTokens": 39}}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "weather", "description": "Weather now", "parameters": schema}}]
    reply = await gw.client().chat.completions.create(model="claude", messages=MESSAGES, tools=tools,
                                                      tool_choice="required")
    [call] = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, call.function.arguments) == ("tu-1", "weather", '{"city":"Oslo"}')
    assert fake.requests[0]["body"]["toolConfig"] == {"tools": [{"toolSpec": {
        "name": "weather", "description": "Weather now",
        "inputSchema": {"json": schema}}}],
        "toolChoice": {"any": {}}}

    follow_up = [*MESSAGES, reply.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "tu-1", "content": "12C"},
                 {"role": "user", "content": "And tomorrow?"}]
    await gw.client().chat.completions.create(model="claude", messages=follow_up, tools=tools)
    turns = fake.requests[1]["body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]  # Converse's turns alternate
    assert turns[1]["content"] == [{"text": "Checking."}, {"toolUse": {"toolUseId": "tu-1", "name": "weather",
                                                                         "input": {"city": "Oslo"}}}]
    assert turns[2]["content"] == [{"toolResult": {"toolUseId": "tu-1", "content": [{"text": "12C"}]}},
                                   {"text": "And tomorrow?"}]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_converse_stream_events_become_chat_chunks_with_usage(bedrock, include_usage) -> None:
    fake, gw = bedrock
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await gw.client().chat.completions.create(model="claude", messages=MESSAGES, stream=True, **kwargs)
    chunks = [c async for c in stream]
    assert fake.signature_problems == [] and fake.requests[0]["operation"] == "converse-stream"
    assert fake.requests[0]["headers"]["Accept"] == "application/vnd.amazon.eventstream"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = [c.usage for c in chunks if c.usage]
    assert ([(u.prompt_tokens, u.completion_tokens) for u in usage] == [(11, 3)]) if include_usage else not usage
    [call] = await gw.logged_calls(1)
    assert (call["prompt_tokens"], call["completion_tokens"]) == (11, 3)


async def test_streamed_tool_use_arrives_as_tool_call_deltas(bedrock) -> None:
    fake, gw = bedrock
    fake.stream = [event("messageStart", {"role": "assistant"}),
                   event("contentBlockStart", {"contentBlockIndex": 0, "start": {
                       "toolUse": {"toolUseId": "tu-9", "name": "weather"}}}),
                   event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '{"city":'}}}),
                   event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '"Oslo"}'}}}),
                   event("contentBlockStop", {"contentBlockIndex": 0}),
                   event("messageStop", {"stopReason": "tool_use"}),
                   event("metadata", {"usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12}})]
    stream = await gw.client().chat.completions.create(model="claude", messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].id == "tu-9" and calls[0].function.name == "weather"
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city":"Oslo"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(("exception", "error_class", "status"), [
    # LiteLLM's mapping by status (litellm/litellm_core_utils/exception_mapping_utils.py): 400 -> BadRequestError.
    ("ValidationException", openai.BadRequestError, 400),
    # Retried first; nothing else left, the last failure's status reaches the client as LiteLLM relays it
    # (429 -> RateLimitError), and the message names what Bedrock said.
    ("ThrottlingException", openai.RateLimitError, 429),
    ("ModelErrorException", openai.InternalServerError, 503),
    ("ServiceUnavailableException", openai.InternalServerError, 503),
])
async def test_bedrock_errors_map_to_openai_client_errors(bedrock, exception, error_class, status) -> None:
    fake, gw = bedrock
    fake.error = (exception, "Bedrock says no")
    with pytest.raises(error_class) as err:
        await gw.client().chat.completions.create(model="claude", messages=MESSAGES)
    assert err.value.status_code == status
    assert f"{exception}: Bedrock says no" in err.value.message
    if status == 400:
        assert err.value.code == "ValidationException" and len(fake.requests) == 1  # the request's fault: no retry
    else:
        assert len(fake.requests) == 3  # the first try and the two retries


async def test_an_exception_inside_the_stream_ends_it_with_an_error_event(bedrock) -> None:
    fake, gw = bedrock
    fake.stream = [*text_events(["Hel"])[:2], frame({":message-type": "exception", ":exception-type":
                                                    "throttlingException", ":content-type": "application/json"},
                                                   b'{"message":"slow down"}')]
    stream = await gw.client().chat.completions.create(model="claude", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="ThrottlingException: slow down"):
        [c async for c in stream]


async def test_a_corrupt_frame_is_refused_by_botocores_parser(bedrock) -> None:
    fake, gw = bedrock
    good = text_events(["Hel"])
    broken = bytearray(good[1])
    broken[-1] ^= 0xFF  # message CRC no longer matches
    fake.stream = [good[0], bytes(broken)]
    stream = await gw.client().chat.completions.create(model="claude", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="upstream closed the stream before its end"):
        [c async for c in stream]


async def test_image_urls_bedrock_cannot_fetch_are_refused_by_name(bedrock) -> None:
    _, gw = bedrock
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as err:
        await gw.client().chat.completions.create(model="claude", messages=[{"role": "user", "content": content}])
    assert err.value.param == "messages[0].content[1].image_url"


async def test_embeddings_are_not_offered_by_bedrock_deployments(bedrock) -> None:
    _, gw = bedrock
    with pytest.raises(openai.InternalServerError, match="no deployment offers the embeddings endpoint"):
        await gw.client().embeddings.create(model="claude", input="x")


async def test_expiring_role_credentials_are_refreshed_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    refreshed_in: list[int] = []

    def refresh() -> dict[str, str]:
        refreshed_in.append(threading.get_ident())
        expiry = datetime.now(UTC) + timedelta(hours=1)
        return {"access_key": "AKIDNEW", "secret_key": "new", "token": "t2", "expiry_time": expiry.isoformat()}

    soon = datetime.now(UTC) + timedelta(minutes=5)  # inside botocore's 15-minute advisory window
    expiring = RefreshableCredentials("AKIDOLD", "old", "t1", soon, refresh, "assume-role-with-web-identity")
    source = AwsCredentials(chain=lambda: expiring)
    frozen = await source.frozen()
    assert frozen.access_key == "AKIDNEW" and refreshed_in and refreshed_in[0] != loop_thread
    assert (await source.frozen()).access_key == "AKIDNEW" and len(refreshed_in) == 1  # fresh now: no I/O

    with pytest.raises(NoAwsCredentials):
        await AwsCredentials(chain=lambda: None).frozen()
    static = AwsCredentials(chain=lambda: Credentials("AKIDSTATIC", "s"))
    assert (await asyncio.wait_for(static.frozen(), 1)).access_key == "AKIDSTATIC"


def test_litellm_bedrock_models_map_to_converse_deployments() -> None:
    config = parse_config({"model_list": [
        {"model_name": "claude", "litellm_params": {"model": f"bedrock/converse/{MODEL_ID}",
                                                     "aws_region_name": "us-west-2"}},
        {"model_name": "nova", "litellm_params": {"model": "bedrock/amazon.nova-lite-v1:0",
                                                   "aws_region_name": "eu-central-1",
                                                   "aws_bedrock_runtime_endpoint": "http://127.0.0.1:9"}},
    ]})
    claude, nova = (m.deployments[0] for m in config.models)
    assert (claude.provider, claude.model, claude.region, claude.residency) == ("bedrock", MODEL_ID, "us-west-2", "us")
    assert claude.api_base == "https://bedrock-runtime.us-west-2.amazonaws.com" and claude.api_key is None
    assert (nova.model, nova.api_base, nova.aws_region) == ("amazon.nova-lite-v1:0", "http://127.0.0.1:9",
                                                            "eu-central-1")


def test_litellm_bedrock_region_comes_from_the_environment_as_in_litellm(monkeypatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-3")  # what EKS sets in every pod
    entry = {"model_name": "m", "litellm_params": {"model": "bedrock/amazon.nova-lite-v1:0"}}
    config = parse_config({"model_list": [entry]})
    assert config.models[0].deployments[0].aws_region == "eu-west-3"


@pytest.mark.parametrize(("params", "message"), [
    ({"model": "bedrock/amazon.nova-lite-v1:0"}, "litellm_params.aws_region_name: required for bedrock"),
    ({"model": "bedrock/invoke/anthropic.claude-v2", "aws_region_name": "us-east-1"},
     "is not served through the Converse API"),
    ({"model": "bedrock/amazon.nova-lite-v1:0", "aws_region_name": "us-east-1", "aws_access_key_id": "AKID"},
     "litellm_params.aws_access_key_id: not supported by the gateway: the gateway signs Bedrock calls with its "
     "own AWS credentials"),
])
def test_bedrock_settings_the_gateway_cannot_honour_are_refused_by_name(params, message, monkeypatch) -> None:
    for name in ("AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=message):
        parse_config({"model_list": [{"model_name": "m", "litellm_params": params}]})


def test_native_bedrock_deployment_takes_no_key_and_needs_a_region() -> None:
    base = {"name": "b", "provider": "bedrock", "model": MODEL_ID}
    for extra, message in [({}, "needs 'region'"), ({"region": "us-east-1", "api_key": "k"}, "takes no 'api_key'")]:
        with pytest.raises(ConfigError, match=message):
            parse_config(gateway_config(models=[{"alias": "m", "deployments": [{**base, **extra}]}]))


async def test_without_aws_credentials_the_call_fails_over_with_a_named_reason(aws_env, monkeypatch,
                                                                              gateway_factory) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to find on this machine
    fake = await FakeBedrock().start()
    try:
        gw = await gateway_factory(gateway_config(models=[{"alias": "claude", "deployments": [{
            "name": "bedrock-us", "provider": "bedrock", "model": MODEL_ID, "region": "us-east-1",
            "api_base": fake.base_url}]}]))
        with pytest.raises(openai.InternalServerError) as err:
            await gw.client().chat.completions.create(model="claude", messages=MESSAGES)
        assert "bedrock-us: auth_error" in err.value.message and "credentials" not in err.value.message
        [logged] = await gw.logged_calls(1)
        assert "auth_error: no AWS credentials found" in logged["error"] and not fake.requests
    finally:
        await fake.stop()


async def test_an_event_over_the_stream_event_bound_fails_by_name(aws_env, gateway_factory) -> None:
    fake = await FakeBedrock().start()
    fake.stream = [event("messageStart", {"role": "assistant"}),
                   event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x" * 5000}})]
    try:
        gw = await gateway_factory(gateway_config(
            models=[{"alias": "claude", "deployments": [{"name": "bedrock-us", "provider": "bedrock",
                                                         "model": MODEL_ID, "region": "us-east-1",
                                                         "api_base": fake.base_url}]}],
            upstream_limits={"sse_event_bytes": 1024}))
        stream = await gw.client().chat.completions.create(model="claude", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="sse_event_bytes"):
            [c async for c in stream]
    finally:
        await fake.stop()


async def test_anthropic_clients_reach_bedrock_through_converse(bedrock) -> None:
    fake, gw = bedrock
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0)
    reply = await client.messages.create(model="claude", max_tokens=20, system="Be brief.",
                                         messages=[{"role": "user", "content": "Hi"}])
    assert fake.requests[0]["body"]["system"] == [{"text": "Be brief."}]
    assert fake.requests[0]["body"]["inferenceConfig"]["maxTokens"] == 20
    assert reply.content[0].text == "Hello from Bedrock" and reply.stop_reason == "end_turn"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (12, 4)

    async with client.messages.stream(model="claude", max_tokens=20,
                                      messages=[{"role": "user", "content": "Hi"}]) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello" and final.usage.output_tokens == 3 and final.stop_reason == "end_turn"
    assert fake.requests[1]["operation"] == "converse-stream" and fake.signature_problems == []


async def test_an_access_denied_answer_names_no_account_or_role_to_the_client(bedrock) -> None:
    """Bedrock's 403 AccessDeniedException quotes the caller's role ARN and account: the client gets the class of
    failure, the call log the text."""
    fake, gw = bedrock
    arn = "arn:aws:sts::123456789012:assumed-role/llmp-gateway/i-0abc"
    fake.error = ("AccessDeniedException", f"User: {arn} is not authorized to perform: bedrock:InvokeModel")
    with pytest.raises(openai.APIStatusError) as err:
        await gw.client().chat.completions.create(model="claude", messages=MESSAGES)
    assert "bedrock-us: http_403" in err.value.message and "123456789012" not in err.value.message
    [logged] = await gw.logged_calls(1)
    assert "AccessDeniedException: User: arn:aws:sts::123456789012:" in logged["error"]


async def test_botocore_is_imported_at_start_in_a_thread_only_when_bedrock_is_configured(aws_env, gateway_factory,
                                                                                       monkeypatch) -> None:
    # Importing botocore's signer takes ~0.3 s: on the first Bedrock call it would stall the event loop.
    imported_in: list[tuple[str, int]] = []

    def import_module(name: str) -> Any:
        imported_in.append((name, threading.get_ident()))
        return importlib.import_module(name)

    monkeypatch.setattr(cloud_calls, "importlib", SimpleNamespace(import_module=import_module))
    plain = await gateway_factory(gateway_config(models=[{"alias": "m", "deployments": [
        {"name": "a", "model": "m", "api_base": "http://127.0.0.1:9/v1"}]}]))
    assert imported_in == [] and plain.state.proxy.cloud.aws is None
    gw = await gateway_factory(gateway_config(models=[{"alias": "claude", "deployments": [{
        "name": "bedrock-us", "provider": "bedrock", "model": MODEL_ID, "region": "us-east-1",
        "api_base": "http://127.0.0.1:9"}]}]))
    assert [name for name, _ in imported_in] == ["gateway.upstream.aws_signing"]
    assert imported_in[0][1] != threading.get_ident(), "imported in a thread, not on the event loop"
    assert gw.state.proxy.cloud.aws is not None, "ready before the first call"
