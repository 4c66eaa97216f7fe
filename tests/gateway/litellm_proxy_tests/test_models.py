"""LiteLLM's tests/test_models.py scenarios against the gateway: /model/info shows a key the models it may call,
one deployment by id, and /model_group/info a user's models."""

from __future__ import annotations

from tests.gateway.litellm_proxy_tests.conftest import MODEL_NAMES, Proxy


async def test_get_models(proxy: Proxy) -> None:
    _, made = await proxy.call("POST", "/key/generate", {"models": ["gpt-4"], "duration": None})
    status, info = await proxy.call("GET", "/model/info", key=made["key"])
    assert status == 200 and [m["model_name"] for m in info["data"]] == ["gpt-4"]
    _, everything = await proxy.call("GET", "/model/info")
    assert sorted({m["model_name"] for m in everything["data"]}) == sorted(MODEL_NAMES)
    assert "api_key" not in str(everything), "credentials never shown"


async def test_get_specific_model(proxy: Proxy) -> None:
    _, made = await proxy.call("POST", "/key/generate", {"models": ["gpt-4"], "duration": None})
    _, info = await proxy.call("GET", "/model/info", key=made["key"])
    [entry] = info["data"]
    model_id = entry["model_info"]["id"]
    _, one = await proxy.call("GET", f"/model/info?litellm_model_id={model_id}", key=made["key"])
    assert one["data"] == [entry]


async def test_get_personal_models_for_user(proxy: Proxy) -> None:
    _, user = await proxy.call("POST", "/user/new", {"models": ["gpt-3.5-turbo"]})
    status, groups = await proxy.call("GET", "/model_group/info", key=user["key"])
    assert status == 200 and [g["model_group"] for g in groups["data"]] == ["gpt-3.5-turbo"]


async def test_get_models_multiple_tests(proxy: Proxy) -> None:
    _, made = await proxy.call("POST", "/key/generate", {"models": [], "duration": None})
    status, models = await proxy.call("GET", "/models", key=made["key"])
    assert status == 200 and len(models["data"]) > 0


async def test_get_models_only_access_groups(proxy: Proxy) -> None:
    # LiteLLM lists access groups only (proxy/auth/model_checks.py@v1.106.2); none is configured here.
    _, made = await proxy.call("POST", "/key/generate", {"models": [], "duration": None})
    _, models = await proxy.call("GET", "/models?only_model_access_groups=True", key=made["key"])
    assert models["data"] == []
