"""Streams are relayed chunk by chunk as the upstream produces them, never buffered or coalesced."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import openai

from tests.gateway.conftest import KEY, MODEL

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_demo_mode_serves_in_one_command() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--demo", "--host", "127.0.0.1", "--port", str(port)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
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
