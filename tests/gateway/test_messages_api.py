"""Anthropic's official client works against the gateway's /v1/messages, over vLLM or Anthropic upstreams."""

from __future__ import annotations

import anthropic
import pytest

from tests.gateway.conftest import KEY, MODEL, deployment, gateway_config

MESSAGES = [{"role": "user", "content": "Hello there"}]


def client(gw, key: str = KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=15)


@pytest.fixture
async def over_vllm(sim, gateway_factory):
    return sim, await gateway_factory(gateway_config([deployment("sim-a", sim.base_url)]))


async def test_messages_over_a_vllm_upstream(over_vllm) -> None:
    sim, gw = over_vllm
    reply = await client(gw).messages.create(model=MODEL, max_tokens=5, system="Be brief.", messages=MESSAGES,
                                             stop_sequences=["END"])
    sent = sim.stats.bodies[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][1] == {"role": "user", "content": "Hello there"}
    assert sent["max_tokens"] == 5 and sent["stop"] == ["END"]
    assert reply.type == "message" and reply.stop_reason == "max_tokens"
    assert reply.content[0].text.strip().startswith("The gateway")
    assert reply.usage.output_tokens == 5 and reply.usage.input_tokens > 0


async def test_streaming_messages_over_a_vllm_upstream(over_vllm) -> None:
    _, gw = over_vllm
    async with client(gw).messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text.strip().startswith("The gateway") and final.content[0].text == text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8
    [call] = gw.calls()
    assert call["endpoint"] == "messages" and call["completion_tokens"] == 8


async def test_messages_pass_through_to_an_anthropic_upstream(sim_factory, gateway_factory) -> None:
    claude = await sim_factory(name="claude", models=("claude-3-5-haiku-latest",))
    gw = await gateway_factory(gateway_config(models=[{"alias": "claude", "max_tokens": 4, "deployments": [{
        "name": "anthropic", "provider": "anthropic", "model": "claude-3-5-haiku-latest",
        "api_base": claude.base_url, "api_key": "sk-ant-FAKE-test"}]}]))
    reply = await client(gw).messages.create(model="claude", max_tokens=100, messages=MESSAGES)
    assert claude.stats.bodies[-1]["max_tokens"] == 4 and claude.stats.bodies[-1]["model"] == "claude-3-5-haiku-latest"
    assert reply.usage.output_tokens == 4 and reply.stop_reason == "max_tokens"
    async with client(gw).messages.stream(model="claude", max_tokens=3, messages=MESSAGES) as stream:
        final = await stream.get_final_message()
    assert final.usage.output_tokens == 3
    assert [c["completion_tokens"] for c in gw.calls()] == [4, 3]


async def test_the_simulator_speaks_messages_to_the_official_client(sim) -> None:
    direct = anthropic.AsyncAnthropic(base_url=sim.base_url.removesuffix("/v1"), api_key="sk-ant-FAKE", max_retries=0)
    reply = await direct.messages.create(model=MODEL, max_tokens=3, messages=MESSAGES)
    assert reply.usage.output_tokens == 3
    async with direct.messages.stream(model=MODEL, max_tokens=2, messages=MESSAGES) as stream:
        assert (await stream.get_final_message()).usage.output_tokens == 2


async def test_messages_errors_use_anthropic_shape(over_vllm) -> None:
    sim, gw = over_vllm
    with pytest.raises(anthropic.AuthenticationError):
        await client(gw, "sk-wrong").messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.BadRequestError) as err:  # an unknown model: LiteLLM's 400
        await client(gw).messages.create(model="nope", max_tokens=5, messages=MESSAGES)
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "invalid_request_error"
    sim.settings.fault = "hang_mid_stream"
    with pytest.raises(anthropic.APIStatusError):
        async with client(gw).messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
            async for _ in stream.text_stream:
                pass


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(("change", "param"), [
    ({"messages": [1]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": "http://x/cat.png"}]}]},
     "messages[0].content[0].source"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": 7}}]}]},
     "messages[0].content[0].source.media_type"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [2]}]}]},
     "messages[0].content[0].content[0]"),
    ({"tools": [1]}, "tools[0]"),
    ({"tools": [{"name": "f", "input_schema": "object"}]}, "tools[0].input_schema"),
    ({"tools": [{"name": "f", "input_schema": {}}], "tool_choice": "auto"}, "tool_choice"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"system": 42}, "system"),
    ({"system": [{"type": "text"}]}, "system[0]"),
    ({"metadata": 1}, "metadata"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"extra_body": {"temperature": "hot"}}, "temperature"),
])
async def test_malformed_messages_requests_are_400s_naming_the_field(over_vllm, change, param) -> None:
    """Each once answered a 500 (the conversion to chat raised on it); the official client sends them as given."""
    _, gw = over_vllm
    body = {"model": MODEL, "max_tokens": 5, "messages": [USER], **change}
    with pytest.raises(anthropic.BadRequestError) as err:
        await client(gw).messages.create(**body)
    assert err.value.status_code == 400 and err.value.body["error"]["type"] == "invalid_request_error"
    assert f"`{param}`" in err.value.body["error"]["message"]
    assert gw.calls()[-1]["status"] == 400
