"""Streams are relayed chunk by chunk as the upstream produces them, never buffered or coalesced."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time

import aiohttp
import openai
import pytest

from tests.gateway.conftest import KEY, MODEL, deployment, gateway_config
from tests.gateway.faulty_upstream import FaultyUpstream, delta, stream, usage_event
from tests.gateway.test_keys_admin import admin
from tests.ports import free_port

MESSAGES = [{"role": "user", "content": "count slowly"}]


async def test_each_chunk_reaches_the_client_when_the_upstream_sends_it(sim, gateway) -> None:
    sim.settings.tokens_per_s = 20  # one token every 50 ms
    sim.settings.output_tokens = 6
    started = time.monotonic()
    arrivals = []
    stream = await gateway.client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 6, "one client chunk per upstream token"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.02, f"chunks were coalesced: gaps {gaps}"
    assert arrivals[0] < arrivals[-1] - 0.15, "the first token arrived long before the last was generated"


async def test_stream_headers_disable_proxy_buffering(gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                             json={"model": MODEL, "messages": MESSAGES, "stream": True}) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers["X-Accel-Buffering"] == "no"
            assert float(resp.headers["x-gateway-overhead-ms"]) >= 0
            body = await resp.read()
    assert body.endswith(b"data: [DONE]\n\n")


async def test_demo_mode_serves_in_one_command() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LLMP_MASTER_KEY"}  # the demo key, not the caller's own
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--demo", "--host", "127.0.0.1", "--port", str(port)],
                            stderr=subprocess.PIPE, text=True, env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        banner = ""
        deadline = time.monotonic() + 15
        while "Ctrl-C" not in banner and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stderr.readline)
            if not line:
                break
            banner += line
        assert "Authorization: Bearer sk-llmp-local-EXAMPLE" in banner, banner
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                                    api_key="sk-llmp-local-EXAMPLE-demo-key-0000000000000000", max_retries=0)
        stream = await client.chat.completions.create(model="demo-llama", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert "gateway" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


async def raw_gateway(gateway_factory, script, tmp_path=None, **gateway):
    """A gateway in front of a raw upstream answering `script`; governed (a spend ledger) when tmp_path is given."""
    upstream = await FaultyUpstream(script).start()
    config = gateway_config([deployment("raw", upstream.base_url)], **gateway)
    if tmp_path is not None:
        config["models"][0].update(input_cost_per_token=0.001, output_cost_per_token=0.002)
        config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                            "flush_interval": 0.05}
    return upstream, await gateway_factory(config)


async def test_an_event_larger_than_the_read_buffer_is_relayed_whole(gateway_factory) -> None:
    # 600 KiB in one event (a long tool-call argument): the official client takes it; readline's 512 KiB did not.
    text = "x" * (600 * 1024)
    upstream, gw = await raw_gateway(gateway_factory, stream(delta(text), usage_event(
        {"prompt_tokens": 3, "completion_tokens": 4})))
    try:
        chunks = [c async for c in await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES,
                                                                               stream=True)]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        [call] = await gw.logged_calls(1)
        assert (call["status"], call["prompt_tokens"], call["completion_tokens"]) == (200, 3, 4)
    finally:
        await upstream.stop()


async def test_a_plain_string_error_mid_stream_reaches_the_client_and_the_stream_is_charged(gateway_factory) -> None:
    # TGI's shape: {"error": "..."}; it used to crash the relay (a string has no .get).
    upstream, gw = await raw_gateway(gateway_factory, stream(delta("some text"), b'data: {"error": "overloaded"}\n\n'))
    try:
        received = []
        with pytest.raises(openai.APIError, match="overloaded"):
            async for chunk in await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                received.append(chunk)
        assert received
        [call] = await gw.logged_calls(1)
        assert call["status"] == 502 and "overloaded" in call["error"]
        assert call["prompt_tokens"] > 0 and call["completion_tokens"] >= 1, "what was streamed is accounted"
    finally:
        await upstream.stop()


@pytest.mark.parametrize("usage", [{"prompt_tokens": -5, "completion_tokens": -7}, "many", [1, 2],
                                   {"prompt_tokens": 2**64, "completion_tokens": 1}, {"prompt_tokens": True}])
async def test_usage_the_gateway_cannot_trust_is_estimated_and_the_call_is_still_accounted(
        gateway_factory, tmp_path, usage) -> None:
    upstream, gw = await raw_gateway(gateway_factory, stream(delta("four words of text"), usage_event(usage)),
                                     tmp_path)
    try:
        _, made = await admin(gw, "POST", "/key/generate", {"max_parallel_requests": 1})
        client = gw.client(api_key=made["key"])
        for _ in range(2):  # a parallel slot leaked by the first call would refuse the second
            chunks = [c async for c in await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                                            stream=True)]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "four words of text"
        calls = await gw.logged_calls(2)
        for call in calls:
            assert call["status"] == 200 and call["prompt_tokens"] > 0 and call["completion_tokens"] == 5
            assert "usage unreadable" in call["error"]
    finally:
        await upstream.stop()
