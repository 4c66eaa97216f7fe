"""LiteLLM's tests/test_openai_endpoints.py scenarios against the gateway: chat, completions, embeddings and images
with a generated key and with a new user's key."""

from __future__ import annotations

from tests.gateway.litellm_proxy_tests.conftest import MESSAGES, Proxy

MODELS = {"models": ["gpt-4", "text-embedding-ada-002", "dall-e-2"], "duration": None}


async def keys(proxy: Proxy) -> list[str]:
    _, made = await proxy.call("POST", "/key/generate", MODELS)
    _, user = await proxy.call("POST", "/user/new", MODELS)
    return [made["key"], user["key"]]


async def test_chat_completion(proxy: Proxy) -> None:
    for key in await keys(proxy):
        status, reply = await proxy.call("POST", "/chat/completions", {"model": "gpt-4", "messages": MESSAGES}, key)
        assert status == 200 and reply["choices"][0]["message"]["content"], reply


async def test_completion(proxy: Proxy) -> None:
    for key in await keys(proxy):
        status, reply = await proxy.call("POST", "/completions", {"model": "gpt-4", "prompt": "Hello!"}, key)
        assert status == 200, reply


async def test_embeddings(proxy: Proxy) -> None:
    for key in await keys(proxy):
        status, reply = await proxy.call("POST", "/embeddings", {"model": "text-embedding-ada-002",
                                                                 "input": ["hello world"]}, key)
        assert status == 200 and reply["data"][0]["embedding"], reply


async def test_image_generation(proxy: Proxy) -> None:
    for key in await keys(proxy):
        status, reply = await proxy.call("POST", "/images/generations", {"model": "dall-e-2",
                                                                         "prompt": "A cute baby sea otter"}, key)
        assert status == 200, reply
