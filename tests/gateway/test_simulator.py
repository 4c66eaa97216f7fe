"""The vLLM simulator itself: errors vLLM answers, and draining on shutdown as vLLM's `--shutdown-timeout`."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import aiohttp
import openai
import pytest
import yaml

from gateway.config.loading import parse_config
from gateway.sim import SimServer
from tests.gateway.conftest import KEY, MODEL
from tests.gateway.servers import ROOT, free_port, wait_port


def direct(sim: SimServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="unused", max_retries=0, timeout=30)


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_a_model_it_does_not_serve_is_404_not_found(sim_factory) -> None:
    sim = await sim_factory()
    with pytest.raises(openai.NotFoundError) as caught:
        await direct(sim).chat.completions.create(model="not-served", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    # OpenAI's shape, `{"error": {...}}`: the client unwraps it into `body`.
    assert caught.value.body == {"message": "The model `not-served` does not exist.", "type": "NotFoundError",
                                 "param": None, "code": 404}


async def test_a_body_that_is_not_json_is_400(sim_factory) -> None:
    sim = await sim_factory()
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session, session.post(
            sim.base_url + "/chat/completions", data=b"{not json", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["message"] == "request body is not valid JSON"


async def test_draining_refuses_new_requests_and_lets_a_stream_in_flight_finish(sim_factory) -> None:
    sim = await sim_factory(tokens_per_s=20, output_tokens=20)
    client = direct(sim)
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, stream_options={"include_usage": True})
    first = await anext(aiter(stream))
    draining = asyncio.create_task(sim.drain(timeout=30))
    await asyncio.sleep(0.1)
    with pytest.raises(openai.InternalServerError) as refused:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "new"}])
    assert refused.value.status_code == 503
    assert refused.value.body == "Server is unavailable. Please try again later."  # vLLM's {"error": ...}
    assert await asyncio.to_thread(status_of, sim.base_url.removesuffix("/v1") + "/health") == 503
    assert await asyncio.to_thread(status_of, sim.base_url.removesuffix("/v1") + "/metrics") == 200
    rest = [chunk async for chunk in stream]
    assert first.choices[0].delta.role == "assistant"
    assert sum(1 for c in rest if c.choices and c.choices[0].delta.content) == 20
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == 20
    assert await draining == 0, "nothing aborted"
    assert sim.sim.admission.finished_in_drain == 1 and sim.sim.admission.refused == 2  # the call and /health


async def test_a_drain_past_its_timeout_aborts_what_is_left(sim_factory) -> None:
    sim = await sim_factory(tokens_per_s=5, output_tokens=100)  # 20 s of stream
    stream = await direct(sim).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                        stream=True)
    await anext(aiter(stream))
    assert await sim.drain(timeout=0.3) == 1
    with pytest.raises(openai.APIConnectionError):
        async for _ in stream:
            pass


def _sim_process(*args: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.sim", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_port(port, 15, proc)
    return proc, port


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    return out


async def test_the_simulator_command_serves_any_model_name_unless_given_model_names() -> None:
    # The README runs `python -m gateway.sim --port 8001` under examples/litellm.yaml, whose deployments call
    # meta-llama/Llama-3.1-8B-Instruct: without --model the simulator answers whatever name it is sent.
    proc, port = _sim_process()
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        answer = await client.chat.completions.create(model="meta-llama/Llama-3.1-8B-Instruct",
                                                      messages=[{"role": "user", "content": "hi"}])
        assert answer.model == "meta-llama/Llama-3.1-8B-Instruct"
    finally:
        assert "serving any model name" in _stop(proc)
    proc, port = _sim_process("--model", "only-this")
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.body["message"] == "The model `other` does not exist."
    finally:
        _stop(proc)


async def test_litellm_example_works_against_two_default_simulators(sim_factory, gateway_factory,
                                                                    monkeypatch) -> None:
    # gateway/examples/litellm.yaml as shipped, its two self-hosted api_bases pointed at two simulators started
    # as the README starts them (no --model): the Llama alias is answered, from either replica.
    sims = [await sim_factory(models=("sim-model",), any_model=True, name=n) for n in ("a", "b")]
    text = (ROOT / "gateway" / "examples" / "litellm.yaml").read_text()
    text = text.replace("http://127.0.0.1:8001/v1", sims[0].base_url).replace("http://127.0.0.1:8002/v1",
                                                                                sims[1].base_url)
    for name in ("VLLM_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(name, "unused-here")
    monkeypatch.setenv("LITELLM_MASTER_KEY", KEY)
    gw = await gateway_factory(parse_config(yaml.safe_load(text)))
    answer = await gw.client().chat.completions.create(model="llama-3.1-8b",
                                                       messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content and answer.model == "llama-3.1-8b"
    assert sum(s.stats.completed for s in sims) == 1
