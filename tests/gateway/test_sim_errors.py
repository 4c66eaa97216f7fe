"""Upstream error answers in both shapes vLLM has sent: the gateway reads the message out of each."""

from __future__ import annotations

import openai
import pytest

from tests.gateway.conftest import MODEL, deployment, gateway_config

MESSAGES = [{"role": "user", "content": "hi"}]
TOO_LONG = "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens."


@pytest.mark.parametrize("legacy", [False, True], ids=["nested-error", "flat-object-error"])
async def test_an_upstream_refusal_reaches_the_client_with_its_message_in_either_shape(
        sim_factory, gateway_factory, legacy: bool) -> None:
    # vLLM answered {"object": "error", "message": ...} before its ErrorResponse became {"error": {...}}
    # (vllm/entrypoints/openai/protocol.py); replicas on an older image still do (gateway/upstream/refusals.py).
    sim = await sim_factory(fault="error_500", error_status=400, error_message=TOO_LONG, legacy_errors=legacy)
    body = await (await _raw(sim.base_url)).json()
    assert ("object" in body) is legacy and ("error" in body) is not legacy
    gw = await gateway_factory(gateway_config([deployment("a", sim.base_url)]))
    with pytest.raises(openai.BadRequestError) as err:
        await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert f"Upstream rejected the request: {TOO_LONG}" in err.value.message


@pytest.mark.parametrize("legacy", [False, True], ids=["nested-error", "flat-object-error"])
async def test_an_upstream_failure_names_its_message_in_either_shape(sim_factory, gateway_factory,
                                                                     legacy: bool) -> None:
    sim = await sim_factory(fault="error_500", error_message="engine dead: CUDA error", legacy_errors=legacy)
    gw = await gateway_factory(gateway_config([deployment("a", sim.base_url)]))
    with pytest.raises(openai.InternalServerError) as err:
        await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert "http_500: engine dead: CUDA error" in err.value.message


async def _raw(base_url: str):  # type: ignore[no-untyped-def]
    import aiohttp

    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{base_url}/chat/completions", json={"model": MODEL, "messages": MESSAGES})
        await resp.read()
        return resp
