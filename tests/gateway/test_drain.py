"""Issue 12's drain contract: a replica leaving mid-stream finishes its stream, and new calls go elsewhere."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway.conftest import KEY, MODEL, gateway_config
from tests.gateway.kube_api import FakeKubeApi, endpoint, endpoint_slice
from tests.gateway.servers import GatewayProcess, SimProcess
from tests.ports import free_port_on

NS = "models"
POD_A, POD_B = "127.0.0.2", "127.0.0.3"
TOKENS = 40  # the slow stream: 40 tokens at 8 a second, about 5 s


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    api = await FakeKubeApi().start()
    yield api
    await api.stop()


def replica_changes(gw: GatewayProcess) -> list[list[str]]:
    lines = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    return [line["replicas"] for line in lines if line.get("event") == "replicas_changed"]


def calls(gw: GatewayProcess) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "call"]


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.05)


def ready(gw: GatewayProcess) -> bool:
    try:
        with urllib.request.urlopen(gw.url + "/health/ready", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


async def test_a_replica_killed_mid_stream_finishes_the_stream_and_the_next_calls_go_elsewhere(
        kube: FakeKubeApi, tmp_path: Path) -> None:
    port = free_port_on(POD_A, POD_B)
    # Pod A drains as vLLM does with --shutdown-timeout: 503 to new requests, in-flight ones finish.
    pod_a = SimProcess(tmp_path, "pod-a", POD_A, port, "--model", MODEL, "--tokens-per-s", "8",
                       "--output-tokens", str(TOKENS), "--shutdown-timeout", "30")
    pod_b = SimProcess(tmp_path, "pod-b", POD_B, port, "--model", MODEL)
    url_a, url_b = f"http://{POD_A}:{port}/v1", f"http://{POD_B}:{port}/v1"
    gw = None
    try:
        await kube.put(NS, endpoint_slice("vllm-x1", "vllm", [endpoint(POD_A)], port))
        # refresh 30 s: a poll would see none of the changes below within the test's waits.
        config = gateway_config([{"name": "pool", "model": MODEL, "replicas": {"endpoint_slices": {
            "service": "vllm", "namespace": NS, "port": "http", "refresh": 30}}}],
            timeouts={"connect": 2, "first_byte": 10, "idle": 10, "total": 60})
        gw = GatewayProcess(config, tmp_path, env={"KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))})
        await asyncio.to_thread(gw.start)  # off the loop: the fake API on this loop answers its start-up list
        await until(lambda: ready(gw), "the gateway found pod A through the API")
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, timeout=60)

        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "a long answer"}], stream=True,
            stream_options={"include_usage": True})
        chunks: list[tuple[float, Any]] = []

        async def read() -> None:
            async for chunk in stream:
                chunks.append((time.monotonic(), chunk))

        reading = asyncio.create_task(read())
        await until(lambda: len(chunks) >= 2, "the stream started on pod A")

        await kube.put(NS, endpoint_slice("vllm-x1", "vllm", [endpoint(POD_A), endpoint(POD_B)], port))
        await until(lambda: [url_a, url_b] in replica_changes(gw), "pod B joined")

        # A rollout or eviction: the pod turns terminating (still serving what it has), then gets SIGTERM.
        await kube.put(NS, endpoint_slice("vllm-x1", "vllm", [
            endpoint(POD_A, ready=False, serving=True, terminating=True), endpoint(POD_B)], port))
        await until(lambda: replica_changes(gw)[-1] == [url_b], "the gateway stopped routing to pod A")
        pod_a.proc.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        assert not reading.done(), "the stream is still in flight when pod A is told to stop"

        # New calls, whatever replica their session would hash to, all go to pod B, at the first attempt.
        for i in range(6):
            answer = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-session-id": f"conversation-{i}"})
            assert answer.choices[0].message.content
        async for _ in await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "stream"}], stream=True):
            pass

        await asyncio.wait_for(reading, 60)
        content = [c for _, c in chunks if c.choices and c.choices[0].delta.content]
        assert len(content) == TOKENS, "every token of the stream arrived"
        assert [c.choices[0].finish_reason for _, c in chunks if c.choices][-1] == "stop"
        assert chunks[-1][1].usage is not None and chunks[-1][1].usage.completion_tokens == TOKENS
        assert any(at > sigterm_at for at, _ in chunks), "part of the stream came after the SIGTERM"

        assert pod_a.proc.wait(timeout=30) == 0, pod_a.output()
        assert "1 finished while draining, 0 aborted, 0 refused" in pod_a.output(), \
            "pod A drained its stream and was sent no new call"
        await kube.delete(NS, "vllm-x1")  # the pod is gone: the pool empties, nothing breaks

        await until(lambda: len(calls(gw)) == 8, "every call logged")
        logged = calls(gw)
        first = [c for c in logged if c["replica"] == url_a]
        assert len(first) == 1 and first[0]["stream"] and first[0]["status"] == 200
        later = [c for c in logged if c is not first[0]]
        assert all(c["replica"] == url_b and c["attempts"] == 1 and c["status"] == 200 for c in later), later
    finally:
        if gw is not None:
            gw.kill(signal.SIGTERM)
        pod_a.stop()
        pod_b.stop()
