"""Calls passed between regions' gateways: answered by the other region's pool, and never bounced back."""

from __future__ import annotations

import asyncio
import io
import time

import openai
import pytest
from aiohttp import web

from gateway.config.native import parse_native
from gateway.http.app import build_app
from tests.gateway.conftest import KEY, MODEL, closed_port_url, deployment, gateway_config
from tests.ports import free_port


async def two_regions(east_pool: str, west_pool: str) -> tuple[list[web.AppRunner], str, dict[str, io.BytesIO]]:
    """Gateways of us-east-1 and us-west-2, each with its own pool and the other region through its gateway."""
    ports = {"us-east-1": free_port(), "us-west-2": free_port()}
    pools = {"us-east-1": east_pool, "us-west-2": west_pool}
    runners, logs = [], {}
    for region, other in (("us-east-1", "us-west-2"), ("us-west-2", "us-east-1")):
        config = gateway_config([
            deployment(f"{MODEL}-{region}", pools[region], region=region, residency="us"),
            deployment(f"{MODEL}-{other}", f"http://127.0.0.1:{ports[other]}/v1", region=other, residency="us",
                       api_key=KEY),
        ], region=region, residency="us")
        logs[region] = io.BytesIO()
        runner = web.AppRunner(build_app(parse_native(config), log_out=logs[region]), access_log=None,
                               handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", ports[region]).start()
        runners.append(runner)
    return runners, f"http://127.0.0.1:{ports['us-east-1']}/v1", logs


def calls(log: io.BytesIO) -> int:
    return sum(1 for line in log.getvalue().splitlines() if b'"event":"call"' in line.replace(b" ", b""))


async def test_a_region_whose_pool_is_down_answers_through_the_other_regions_gateway(sim) -> None:
    runners, east, _ = await two_regions(closed_port_url(), sim.base_url)
    try:
        client = openai.AsyncOpenAI(base_url=east, api_key=KEY, max_retries=0, timeout=15)
        reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_when_both_regions_pools_are_down_the_call_fails_once_instead_of_bouncing() -> None:
    runners, east, logs = await two_regions(closed_port_url(), closed_port_url())
    try:
        client = openai.AsyncOpenAI(base_url=east, api_key=KEY, max_retries=0, timeout=15)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as failure:
            await asyncio.wait_for(client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]), timeout=10)
        # West's pool refused the connection: its 500 (LiteLLM's APIConnectionError) is the last failure east saw.
        assert failure.value.status_code == 500
        assert time.monotonic() - started < 5
        # One call each: west answered from its own pool and did not pass the call back to east.
        assert (calls(logs["us-east-1"]), calls(logs["us-west-2"])) == (1, 1)
    finally:
        for runner in runners:
            await runner.cleanup()
