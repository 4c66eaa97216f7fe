"""LiteLLM's tests/test_users.py scenarios against the gateway: users made in parallel (each with a key), read by
the master key and by their own key, refused to another user's key; the proxy-wide spend user; user budgets."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests.gateway.litellm_proxy_tests.conftest import MASTER_KEY, MESSAGES, Proxy

USER_BODY = {"models": ["azure-models"], "aliases": {"mistral-7b": "gpt-3.5-turbo"}, "duration": None}


async def new_user(proxy: Proxy, **extra: object) -> dict:
    status, made = await proxy.call("POST", "/user/new", {**USER_BODY, "max_budget": None, "budget_duration": None,
                                                           **extra})
    assert status == 200, made
    return made


async def test_user_new(proxy: Proxy) -> None:
    made = await asyncio.gather(*(new_user(proxy) for _ in range(10)))
    assert len({m["user_id"] for m in made}) == 10 and all(m["key"].startswith("sk-") for m in made)
    assert made[0]["models"] == ["azure-models"] and made[0]["user_role"] == "internal_user"


async def test_user_info(proxy: Proxy) -> None:
    user = f"krrish_{time.time()}@berri.ai"
    key = (await new_user(proxy, user_id=user))["key"]
    for caller in (MASTER_KEY, key):
        status, info = await proxy.call("GET", f"/user/info?user_id={user}", key=caller)
        assert status == 200 and info["user_id"] == user and info["user_info"]["spend"] == 0, info
        assert [k["user_id"] for k in info["keys"]] == [user]
    random_key = (await new_user(proxy))["key"]
    status, _ = await proxy.call("GET", f"/user/info?user_id={user}", key=random_key)
    assert status == 403


async def test_global_proxy_budget_update(proxy: Proxy) -> None:
    path = "/user/info?user_id=litellm-proxy-budget"
    _, info = await proxy.call("GET", path)
    original = info["user_info"]["spend"]
    await proxy.client(MASTER_KEY).chat.completions.create(model="gpt-4", messages=MESSAGES)
    await proxy.flushed()
    _, info = await proxy.call("GET", path)
    assert info["user_info"]["spend"] > original
    stream = await proxy.client(MASTER_KEY).chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True)
    async for _ in stream:
        pass
    await proxy.flushed()
    _, again = await proxy.call("GET", path)
    assert again["user_info"]["spend"] > info["user_info"]["spend"]


async def test_a_users_models_and_budget_bind_all_its_keys(proxy: Proxy) -> None:
    made = await new_user(proxy, max_budget=0.0000001)
    with pytest.raises(openai.PermissionDeniedError, match="model 'gpt-4' is not available"):
        await proxy.client(made["key"]).chat.completions.create(model="gpt-4", messages=MESSAGES)
    _, second = await proxy.call("POST", "/key/generate", {"user_id": made["user_id"]})
    await proxy.client(second["key"]).chat.completions.create(model="azure-models", messages=MESSAGES)
    await proxy.flushed()
    with pytest.raises(openai.APIStatusError, match="user"):
        await proxy.client(made["key"]).chat.completions.create(model="azure-models", messages=MESSAGES)
    status, body = await proxy.call("POST", "/user/delete", {"user_ids": [made["user_id"]]})
    assert status == 200 and body["deleted_users"] == [made["user_id"]] and len(body["deleted_keys"]) == 2
    with pytest.raises(openai.AuthenticationError):
        await proxy.client(second["key"]).chat.completions.create(model="azure-models", messages=MESSAGES)


async def test_user_update_and_list(proxy: Proxy) -> None:
    made = await new_user(proxy, user_email="ana@example.com")
    status, body = await proxy.call("POST", "/user/update", {"user_email": "ana@example.com", "max_budget": 5,
                                                             "models": []})
    assert status == 200 and body["data"]["max_budget"] == 5 and body["data"]["models"] == [], body
    _, listed = await proxy.call("GET", f"/user/list?user_ids={made['user_id']}")
    assert listed["total"] == 1 and listed["users"][0]["user_email"] == "ana@example.com"
    status, body = await proxy.call("POST", "/user/update", {"user_id": made["user_id"], "password": "x"})
    assert status == 400 and body["error"]["param"] == "password"
