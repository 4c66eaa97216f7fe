"""When Redis is unreachable the gateway does what it was told (fail open or fail closed), says so, and never hangs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway.conftest import MODEL, deployment, gateway_config
from tests.gateway.servers import RedisServer, free_port
from tests.gateway.test_keys_admin import admin

MESSAGES = [{"role": "user", "content": "hi"}]


def config_with_redis(sim: Any, tmp_path: Path, url: str, behaviour: str) -> dict[str, Any]:
    config = gateway_config([deployment("sim-a", sim.base_url)])
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}"}
    config["redis"] = {"url": url, "on_unavailable": behaviour, "timeout_ms": 200, "retry_after_ms": 500}
    return config


async def limited_client(gw) -> openai.AsyncOpenAI:
    _, made = await admin(gw, "POST", "/key/generate", {"rpm_limit": 1000})
    return gw.client(api_key=made["key"])


async def test_fail_closed_refuses_quickly_with_a_503(gateway_factory, sim, tmp_path) -> None:
    gw = await gateway_factory(config_with_redis(sim, tmp_path, f"redis://127.0.0.1:{free_port()}/0", "fail-closed"))
    client = await limited_client(gw)
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError, match="fail-closed") as err:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert err.value.status_code == 503
        assert time.monotonic() - started < 1.0, "bounded by redis.timeout_ms, never a hang"
    assert gw.log_buffer.getvalue().count(b'"limits_unavailable"') == 1, "logged once per outage"


async def test_fail_open_keeps_serving_when_redis_dies_and_counts_again_when_it_returns(
        gateway_factory, sim, tmp_path, redis_server: RedisServer) -> None:
    gw = await gateway_factory(config_with_redis(sim, tmp_path, redis_server.url, "fail-open"))
    _, made = await admin(gw, "POST", "/key/generate", {"rpm_limit": 2})
    client = gw.client(api_key=made["key"])
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    redis_server.stop()
    started = time.monotonic()
    for _ in range(5):  # over the limit, but nothing can count: fail-open serves
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert time.monotonic() - started < 2.0
    assert b'"limits_unavailable"' in gw.log_buffer.getvalue()
    assert b'"fail-open"' in gw.log_buffer.getvalue()


async def test_limits_survive_a_redis_that_forgot_its_scripts(gateway_factory, sim, tmp_path,
                                                               redis_server: RedisServer) -> None:
    import redis

    gw = await gateway_factory(config_with_redis(sim, tmp_path, redis_server.url, "fail-closed"))
    _, made = await admin(gw, "POST", "/key/generate", {"rpm_limit": 2})
    client = gw.client(api_key=made["key"])
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    redis.Redis(port=redis_server.port).script_flush()  # as after a Redis restart or failover
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError, match="rpm_limit 2"):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
