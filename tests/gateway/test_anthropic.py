"""OpenAI clients reach Anthropic Messages upstreams: requests, answers and streams translated."""

from __future__ import annotations

import openai
import pytest

from tests.gateway.conftest import gateway_config

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello Claude"}]


@pytest.fixture
async def claude(sim_factory, gateway_factory):
    sim = await sim_factory(name="claude", models=("claude-3-5-haiku-latest",))
    config = gateway_config(models=[{"alias": "claude", "max_tokens": 6, "deployments": [{
        "name": "anthropic", "provider": "anthropic", "model": "claude-3-5-haiku-latest",
        "api_base": sim.base_url, "api_key": "sk-ant-FAKE-test"}]}])
    return sim, await gateway_factory(config)


async def test_chat_is_translated_to_messages_and_back(claude) -> None:
    sim, gw = claude
    reply = await gw.client().chat.completions.create(model="claude", messages=MESSAGES, stop="END", temperature=0.2)
    sent = sim.stats.bodies[-1]
    assert sent["system"] == "You are terse." and sent["messages"] == [{"role": "user", "content": "Hello Claude"}]
    assert sent["max_tokens"] == 6 and sent["stop_sequences"] == ["END"] and sent["temperature"] == 0.2
    assert sim.stats.headers[-1]["x-api-key"] == "sk-ant-FAKE-test"
    assert sim.stats.headers[-1]["anthropic-version"] == "2023-06-01"
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content.strip().startswith("The gateway")
    assert reply.usage.completion_tokens == 6 and reply.usage.prompt_tokens > 0


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streaming_messages_become_chat_chunks(claude, include_usage) -> None:
    _sim, gw = claude
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await gw.client().chat.completions.create(model="claude", messages=MESSAGES, stream=True, **kwargs)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip().startswith("The gateway")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage = [c.usage for c in chunks if c.usage]
    assert (len(usage) == 1 and usage[0].completion_tokens == 6) if include_usage else not usage
    [call] = gw.calls()
    assert call["completion_tokens"] == 6 and call["prompt_tokens"] > 0


async def test_anthropic_overload_falls_back_and_errors_are_openai_shaped(claude) -> None:
    sim, gw = claude
    sim.settings.fault = "error_500"
    with pytest.raises(openai.InternalServerError) as err:
        await gw.client().chat.completions.create(model="claude", messages=MESSAGES)
    assert err.value.status_code == 500 and "simulated engine failure" in err.value.message  # the upstream's status


async def test_embeddings_are_not_offered_by_anthropic_deployments(claude) -> None:
    _, gw = claude
    with pytest.raises(openai.InternalServerError) as err:
        await gw.client().embeddings.create(model="claude", input="x")
    assert "no deployment offers the embeddings endpoint" in err.value.message


@pytest.mark.parametrize(("change", "param"), [
    ({"messages": [1]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": "f"}]}]}, "messages[0].tool_calls[0].function"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"tools": [1]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tool_choice": 3}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": "f"}}, "tool_choice.function"),
    ({"stop": 5}, "stop"),
    ({"user": {"id": 1}}, "user"),
])
async def test_malformed_chat_requests_to_an_anthropic_deployment_are_400s_naming_the_field(claude, change,
                                                                                           param) -> None:
    """Each once answered a 500: the conversion to a Messages request raised on it."""
    _, gw = claude
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(openai.BadRequestError) as err:
        await gw.client().chat.completions.create(**body)
    assert err.value.status_code == 400 and err.value.body["param"] == param
    assert gw.calls()[-1]["status"] == 400
