"""Two gateway processes sharing one real Redis: RPM, TPM and budgets hold for the pair; revocation reaches both."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway.conftest import KEY, MODEL, deployment, gateway_config
from tests.gateway.servers import GatewayProcess, RedisServer

PROMPT = [{"role": "user", "content": "Count the tokens of this sentence, please, for the budget test."}]
IN_PRICE, OUT_PRICE = 0.001, 0.002
REFRESH = 0.5


def replica_config(sim: Any, tmp_path: Path, name: str, redis_url: str) -> dict[str, Any]:
    config = gateway_config([deployment("sim-a", sim.base_url)])
    config["models"][0].update(input_cost_per_token=IN_PRICE, output_cost_per_token=OUT_PRICE)
    # One key store (the SQLite file stands in for the cluster's PostgreSQL), one spool per replica.
    config["ledger"] = {"spool_dir": str(tmp_path / f"spool-{name}"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                        "flush_interval": 0.2}
    config["redis"] = {"url": redis_url, "timeout_ms": 500}
    config["keys"] = {"refresh_seconds": REFRESH}
    return config


@pytest.fixture
async def pair(sim, tmp_path, redis_server: RedisServer):
    a = GatewayProcess(replica_config(sim, tmp_path, "a", redis_server.url), tmp_path, "a")
    b = GatewayProcess(replica_config(sim, tmp_path, "b", redis_server.url), tmp_path, "b")
    try:
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        yield a, b
    finally:
        for gw in (a, b):
            gw.kill()


def client(gw: GatewayProcess, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=15)


async def new_key(a: GatewayProcess, b: GatewayProcess, **fields: Any) -> str:
    status, made = await asyncio.to_thread(a.admin, "POST", "/key/generate", fields, KEY)
    assert status == 200, made
    # Wait until replica b has loaded the key (its cache refreshes every REFRESH seconds).
    deadline = time.monotonic() + 10
    while True:
        status, _ = await asyncio.to_thread(b.admin, "GET", "/v1/models", None, made["key"])
        if status == 200:
            return made["key"]
        assert time.monotonic() < deadline, "replica b never saw the new key"
        await asyncio.sleep(0.1)


async def away_from_minute_boundary() -> None:
    # RPM and TPM windows are calendar minutes: a burst straddling one would count in two windows.
    if time.time() % 60 > 50:
        await asyncio.sleep(61 - time.time() % 60)


async def burst(a: GatewayProcess, b: GatewayProcess, key: str, n: int,
                **kwargs: Any) -> tuple[list[Any], list[Exception]]:
    clients = [client(a, key), client(b, key)]
    results = await asyncio.gather(*(clients[i % 2].chat.completions.create(model=MODEL, messages=PROMPT, **kwargs)
                                     for i in range(n)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    # Rate limits answer 429, budgets 422 (LiteLLM's budget_exceeded_status_code, governance/gate.py).
    assert all(isinstance(e, (openai.RateLimitError, openai.UnprocessableEntityError)) for e in errors), errors[:3]
    return ok, errors


def reservation(max_tokens: int) -> int:
    """What the gateway reserves for one of these requests: body bytes / 4 + max_tokens."""
    import math

    import orjson

    body = orjson.dumps({"messages": PROMPT, "model": MODEL, "max_tokens": max_tokens})
    return math.ceil((len(body) + 16) / 4) + max_tokens  # +16: slack for the client's own field order and spacing


async def test_rpm_limit_holds_exactly_for_two_replicas(pair) -> None:
    a, b = pair
    key = await new_key(a, b, rpm_limit=25)
    await away_from_minute_boundary()
    ok, refused = await burst(a, b, key, 60)
    assert len(ok) == 25, "RPM is checked and counted atomically in Redis: no overshoot across replicas"
    assert "rpm_limit 25" in str(refused[0])
    served_by = {r._request_id for r in ok}
    assert len(served_by) == 25


async def test_tpm_limit_holds_for_two_replicas_within_one_request(pair) -> None:
    a, b = pair
    limit = 400
    key = await new_key(a, b, tpm_limit=limit)
    await away_from_minute_boundary()
    used = 0
    refused = 0
    for _ in range(6):  # waves: settlements bring reservations down to actual use between them
        ok, errors = await burst(a, b, key, 16, max_tokens=8)
        used += sum(r.usage.total_tokens for r in ok)
        refused += len(errors)
        await asyncio.sleep(0.1)
    assert refused > 0
    bound = reservation(8)
    assert limit - bound <= used <= limit + bound, f"{used} tokens for tpm_limit {limit} (bound: one request, {bound})"


async def test_budget_holds_for_two_replicas_within_one_request(pair) -> None:
    a, b = pair
    budget = 0.5
    key = await new_key(a, b, max_budget=budget, budget_duration="1d")
    spent = 0.0
    for _ in range(6):
        ok, errors = await burst(a, b, key, 16, max_tokens=8)
        spent += sum(r.usage.prompt_tokens * IN_PRICE + r.usage.completion_tokens * OUT_PRICE for r in ok)
        await asyncio.sleep(0.1)
    one_request = reservation(8) * OUT_PRICE  # an upper bound of one request's reserved cost
    assert errors and "max_budget 0.5" in str(errors[0])
    assert budget - one_request <= spent <= budget + one_request, spent


async def test_revoked_key_is_refused_by_every_replica_within_the_refresh_time(pair) -> None:
    a, b = pair
    key = await new_key(a, b)
    for gw in (a, b):
        await client(gw, key).chat.completions.create(model=MODEL, messages=PROMPT)
    status, _ = await asyncio.to_thread(a.admin, "POST", "/key/delete", {"keys": [key]}, KEY)
    revoked_at = time.monotonic()
    assert status == 200
    with pytest.raises(openai.AuthenticationError):  # the replica that revoked it: at once
        await client(a, key).chat.completions.create(model=MODEL, messages=PROMPT)
    while True:
        try:
            await client(b, key).chat.completions.create(model=MODEL, messages=PROMPT)
        except openai.AuthenticationError:
            break
        assert time.monotonic() - revoked_at < REFRESH + 1.0, "replica b still accepts the revoked key"
        await asyncio.sleep(0.05)
    assert time.monotonic() - revoked_at <= REFRESH + 1.0


async def test_parallel_limit_holds_exactly_for_two_replicas_and_slots_are_freed(pair, sim) -> None:
    a, b = pair
    key = await new_key(a, b, max_parallel_requests=3)
    sim.settings.ttft = 0.4  # calls stay in flight long enough to overlap
    ok, refused = await burst(a, b, key, 10)
    assert len(ok) == 3 and "max_parallel_requests 3" in str(refused[0])
    sim.settings.ttft = 0.0
    await asyncio.sleep(0.1)  # settlements are batched every 20 ms
    ok, refused = await burst(a, b, key, 3)
    assert len(ok) == 3 and not refused, "finished calls gave their slots back on both replicas"
