"""SIGTERM drains the gateway: no new connections, streams in flight finish within `front_door.shutdown_grace`
(applied once, in total), what is left is cut, and the process exits; /health/ready says 503 meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from gateway.config.native import parse_native
from gateway.http.app import build_app
from gateway.http.handlers import Endpoints
from gateway.http.state import STATE
from gateway.server import serve
from tests.gateway.conftest import KEY, MODEL, deployment, gateway_config
from tests.gateway.servers import ROOT, free_port, wait_port

TOKENS, PACE = 30, 10.0  # the simulated stream: 30 tokens at 10 per second, about 3 s


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.sim", "--port", str(port), "--tokens-per-s", str(PACE),
                             "--output-tokens", str(TOKENS)], cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_port(port, 20, proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def start_gateway(tmp_path: Path, upstream: str, grace: float, workers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    config = gateway_config([deployment("slow", upstream)], front_door={"shutdown_grace": grace})
    config["gateway"]["timeouts"] = {"connect": 2, "first_byte": 5, "idle": 5, "total": 60}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "gw.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(path), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.close()
    wait_port(port, 30, proc)
    return proc, port


def stream_in_thread(port: int, started: threading.Event) -> dict[str, Any]:
    """Runs one stream in a thread: the text it got, and how it ended."""
    result: dict[str, Any] = {"text": "", "error": None, "finished": False}

    def run() -> None:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
        try:
            stream = client.chat.completions.create(model=MODEL, stream=True,
                                                    messages=[{"role": "user", "content": "tell me"}])
            for chunk in stream:
                started.set()
                if chunk.choices and chunk.choices[0].delta.content:
                    result["text"] += chunk.choices[0].delta.content
                if chunk.choices and chunk.choices[0].finish_reason:
                    result["finished"] = True
        except Exception as exc:  # noqa: BLE001 - what the client saw is the result
            result["error"] = exc
        finally:
            started.set()

    result["thread"] = threading.Thread(target=run, daemon=True)
    result["thread"].start()
    return result


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def terminate_mid_stream(tmp_path: Path, upstream: str, grace: float, workers: int = 1) -> tuple[dict[str, Any], float]:
    proc, port = start_gateway(tmp_path, upstream, grace, workers)
    try:
        started = threading.Event()
        result = stream_in_thread(port, started)
        assert started.wait(20), "the stream never started"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is not None or refused(port), "new connections are still accepted while draining"
        proc.wait(timeout=grace + 15)
        exited = time.monotonic() - signalled
        result["thread"].join(timeout=10)
        return result, exited
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stream_in_flight_at_sigterm_finishes_within_the_grace(tmp_path: Path, slow_sim: str, workers: int) -> None:
    result, exited = terminate_mid_stream(tmp_path, slow_sim, grace=15, workers=workers)
    assert result["error"] is None and result["finished"], result  # the last chunk, finish_reason included
    assert result["text"].strip().startswith("The gateway")
    assert exited < 10  # it left once the 3 s stream was done, without waiting out the 15 s grace


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stream_longer_than_the_grace_is_cut_and_the_process_exits(tmp_path: Path, slow_sim: str,
                                                                      workers: int) -> None:
    # The grace applies once: aiohttp's shutdown_timeout applied twice would let this 3 s stream finish.
    result, exited = terminate_mid_stream(tmp_path, slow_sim, grace=1, workers=workers)
    assert result["error"] is not None or not result["finished"], result
    assert exited < 1 + 5, exited  # the grace, the 1 s unwind, then clean-up and exit


async def test_ready_answers_503_from_the_start_of_shutdown_while_live_stays_200(sim_factory) -> None:
    sim = await sim_factory(name="slow", tokens_per_s=PACE, output_tokens=TOKENS)
    config = gateway_config([deployment("slow", sim.base_url)], front_door={"shutdown_grace": 10})
    config["gateway"]["timeouts"] = {"connect": 2, "first_byte": 5, "idle": 5, "total": 60}
    app = build_app(parse_native(config), log_out=__import__("io").BytesIO())
    port = free_port()
    serving = asyncio.create_task(serve(app, "127.0.0.1", port, False))
    endpoints = Endpoints(app[STATE])
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=30)
    for _ in range(100):
        if not refused(port):
            break
        await asyncio.sleep(0.05)
    assert (await endpoints.ready(None)).status == 200  # type: ignore[arg-type]
    stream = await client.chat.completions.create(model=MODEL, stream=True,
                                                  messages=[{"role": "user", "content": "tell me"}])
    words, finished = [], False
    async for chunk in stream:
        finished = finished or bool(chunk.choices and chunk.choices[0].finish_reason)
        if chunk.choices and chunk.choices[0].delta.content:
            words.append(chunk.choices[0].delta.content)
        if len(words) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler, installed by serve(), starts the drain
            await asyncio.sleep(0.2)
            ready = await endpoints.ready(None)  # type: ignore[arg-type]
            assert ready.status == 503 and b'"draining":true' in ready.body  # type: ignore[operator]
            assert (await endpoints.live(None)).status == 200  # type: ignore[arg-type]
            assert refused(port)
    assert finished and len(words) > 1  # the stream in flight still finished
    await asyncio.wait_for(serving, 10)
