"""Budget counters that were lost (a Redis without persistence restarted, a gateway with in-process counters
restarted) are raised back to the ledger's spend: a budget cannot be spent twice."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import openai
import pytest
import redis

from gateway.governance.limits.in_process import LocalLimiter
from gateway.governance.limits.redis_limiter import RedisLimiter
from gateway.governance.limits.scopes import window_name
from tests.gateway.conftest import MODEL
from tests.gateway.servers import RedisServer
from tests.gateway.test_keys_admin import admin, governed

MESSAGES = [{"role": "user", "content": "Spend a little of the budget, please."}]


def config(sim: Any, tmp_path: Any, sync_seconds: float, redis_url: str | None = None) -> dict[str, Any]:
    doc = governed(sim, tmp_path)
    doc["ledger"]["budget_sync_seconds"] = sync_seconds
    if redis_url:
        doc["redis"] = {"url": redis_url, "on_unavailable": "fail-closed", "timeout_ms": 2000}
    return doc


async def spend_to_refusal(client: openai.AsyncOpenAI) -> int:
    for answered in range(200):
        try:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        except openai.UnprocessableEntityError as exc:  # LiteLLM's budget_exceeded_status_code, 422
            assert "max_budget" in str(exc)
            return answered
    pytest.fail("the budget never refused a call")


async def ledger_has(tmp_path: Any, rows: int) -> None:
    for _ in range(100):
        with sqlite3.connect(tmp_path / "ledger.db") as db:
            found = db.execute("SELECT COUNT(*) FROM llmp_spend WHERE key_token != 'master'").fetchone()[0]
        if found >= rows:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the ledger holds {found} rows, expected {rows}")


def spent(tmp_path: Any) -> float:
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        return db.execute("SELECT SUM(cost) FROM llmp_spend WHERE key_token != 'master'").fetchone()[0]


BUDGET = 0.3
ONE_CALL = 0.05  # over what one of these calls reserves: ~100 body bytes / 4 at 0.001 + 8 tokens at 0.002


@pytest.mark.parametrize("sync_seconds", [0.2, 0])
async def test_a_redis_that_lost_its_counters_gets_the_ledger_spend_back(gateway_factory, sim, tmp_path,
                                                                         redis_server: RedisServer,
                                                                         sync_seconds: float) -> None:
    gw = await gateway_factory(config(sim, tmp_path, sync_seconds, redis_server.url))
    _, made = await admin(gw, "POST", "/key/generate", {"max_budget": BUDGET, "budget_duration": "1d"})
    client = gw.client(api_key=made["key"])
    answered = await spend_to_refusal(client)
    assert answered >= 3
    await ledger_has(tmp_path, answered)
    redis.Redis(port=redis_server.port).flushall()  # as a Redis without persistence after a restart
    await asyncio.sleep(0.6)
    again = await spend_to_refusal(client)
    await ledger_has(tmp_path, answered + again)
    if sync_seconds:
        assert spent(tmp_path) <= BUDGET + ONE_CALL, f"{again} more calls after the sync ({answered} before)"
        assert b'"budget_sync_failed"' not in gw.log_buffer.getvalue()
    else:
        assert spent(tmp_path) > BUDGET + ONE_CALL, "without the sync the budget starts again from zero"


@pytest.mark.parametrize("sync_seconds", [60, 0])
async def test_a_restarted_gateway_with_in_process_counters_keeps_the_budget(gateway_factory, sim, tmp_path,
                                                                             sync_seconds: float) -> None:
    first = await gateway_factory(config(sim, tmp_path, sync_seconds))
    _, made = await admin(first, "POST", "/key/generate", {"max_budget": BUDGET, "budget_duration": "30d"})
    answered = await spend_to_refusal(first.client(api_key=made["key"]))
    assert answered >= 3
    await first.runner.cleanup()  # SIGTERM path: the ledger is flushed
    second = await gateway_factory(config(sim, tmp_path, sync_seconds))
    again = await spend_to_refusal(second.client(api_key=made["key"]))
    await ledger_has(tmp_path, answered + again)
    if sync_seconds:  # synced once at start, before the first call
        assert spent(tmp_path) <= BUDGET + ONE_CALL, f"{again} more calls after the restart ({answered} before)"
    else:
        assert spent(tmp_path) > BUDGET + ONE_CALL


async def test_spend_summed_over_last_window_is_not_carried_into_the_new_one() -> None:
    """At a window boundary the ledger's window (the gateway's clock when the sync began) and the counter's window
    (the limiter's clock when it raises) can differ: the raise is keyed by the window the amount was summed over."""
    day = 86400
    new_window = (int(time.time()) // day) * day
    limiter = LocalLimiter(clock=lambda: new_window + 0.5)  # the limiter's clock is already in the new window
    await limiter.raise_spend([("k:abc", day, 5.0, float(new_window - day))])
    spend = limiter._scopes["k:abc"].spend
    assert spend.get(window_name(new_window, day), 0.0) == 0.0, "last window's spend counted in the new one"
    assert spend[window_name(new_window - day, day)] == 5.0


async def test_redis_keys_a_raise_by_the_window_its_amount_was_summed_over(redis_server: RedisServer) -> None:
    """Redis's clock is in the current window; a raise summed over the last one lands in the last one's counter."""
    limiter = RedisLimiter(redis_server.url, fail_open=False, timeout_ms=1000, retry_after_ms=0,
                           settle_interval_ms=50, lease_requests=0, on_event=lambda *a, **k: None,
                           prefix=f"window{time.monotonic_ns()}")
    await limiter.start()
    try:
        day = 86400
        current = (int(time.time()) // day) * day
        await limiter.raise_spend([("k:abc", day, 5.0, float(current - day))])
        r = redis.Redis.from_url(redis_server.url)
        try:
            assert r.get(f"{limiter.prefix}:k:abc:spend:{window_name(current, day)}") is None
            assert float(r.get(f"{limiter.prefix}:k:abc:spend:{window_name(current - day, day)}")) == 5.0
        finally:
            r.close()
    finally:
        await limiter.stop()
