"""Absurd numbers never switch limits off for everyone, never stall the ledger, never break the admin API.

Each test is one defect of issue 15 (and its siblings): the limiter must tell a command Redis refused
(this call's problem) from Redis being gone (everyone's), the ledger must set a row the store refuses
aside and carry on, and every admin input is bounded with a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import openai
import orjson
import pytest
import redis

from gateway.config.governance import parse_duration
from gateway.governance.bounds import MAX_USAGE_TOKENS
from gateway.governance.ledger.spend import SpendLedger, spend_row
from gateway.governance.ledger.spool import SpendSpool, store_identity
from gateway.governance.limits.redis_limiter import RedisLimiter
from gateway.governance.limits.scopes import Scope
from gateway.governance.store.connect import open_store
from gateway.http.errors import GatewayError
from tests.gateway.conftest import MODEL, RunningGateway, deployment, gateway_config
from tests.gateway.servers import PostgresServer, RedisServer, new_database
from tests.gateway.test_keys_admin import admin

MESSAGES = [{"role": "user", "content": "hi"}]


def governed(sim: Any, tmp_path: Path, redis_url: str | None = None) -> dict[str, Any]:
    config = gateway_config([deployment("sim-a", sim.base_url)])
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                        "flush_interval": 0.05}
    if redis_url is not None:
        config["redis"] = {"url": redis_url, "on_unavailable": "fail-open", "retry_after_ms": 5000}
    return config


async def rpm_still_holds(gw: RunningGateway, rpm: int = 2) -> None:
    """A normal key is still counted: its (rpm+1)th call in the minute is refused."""
    _, made = await admin(gw, "POST", "/key/generate", {"rpm_limit": rpm})
    client = gw.client(api_key=made["key"])
    for _ in range(rpm):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)


# ---- #1: limits fail open for everyone ------------------------------------------------------------


async def test_an_absurd_max_tokens_is_a_400_and_limits_keep_counting_every_other_key(
        gateway_factory, sim, tmp_path, redis_server: RedisServer) -> None:
    gw = await gateway_factory(governed(sim, tmp_path, redis_server.url))
    _, made = await admin(gw, "POST", "/key/generate", {"tpm_limit": 100_000})
    client = gw.client(api_key=made["key"])
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, **{field: 2**62})
        assert err.value.body["param"] == field and "1 to 1000000000" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=-5)
    await rpm_still_holds(gw)
    assert b"limits_unavailable" not in gw.log_buffer.getvalue()


async def test_a_script_redis_refuses_fails_only_its_call_and_never_means_an_outage(
        redis_server: RedisServer) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    limiter = RedisLimiter(redis_server.url, fail_open=True, timeout_ms=500, retry_after_ms=5000,
                           settle_interval_ms=20, lease_requests=0, on_event=lambda e, **f: events.append((e, f)))
    await limiter.start()
    try:
        # A key of the wrong type where the script counts slots: Redis answers -WRONGTYPE (a bug's symptom).
        r = redis.Redis.from_url(redis_server.url)
        r.set("llmp:k:poisoned:pl", "not a sorted set")
        r.close()
        poisoned = Scope("k:poisoned", "this key", parallel=5)
        with pytest.raises(GatewayError) as err:
            await limiter.admit("r1", (poisoned,), 10, 0.0, 60)
        assert err.value.status == 500 and err.value.code == "limits_error"
        assert [e for e, _ in events] == ["limits_error"] and "WRONGTYPE" in events[0][1]["error"]
        healthy = Scope("k:healthy", "this key", rpm=1)
        ticket = await limiter.admit("r2", (healthy,), 10, 0.0, 60)
        assert ticket.counted, "the limiter is not in outage mode: the next call is counted"
        with pytest.raises(GatewayError) as refused:
            await limiter.admit("r3", (healthy,), 10, 0.0, 60)
        assert refused.value.status == 429
    finally:
        await limiter.stop()


async def test_reservations_and_settlements_sent_to_redis_are_bounded(redis_server: RedisServer) -> None:
    limiter = RedisLimiter(redis_server.url, fail_open=False, timeout_ms=500, retry_after_ms=5000,
                           settle_interval_ms=20, lease_requests=32, on_event=lambda e, **f: None)
    await limiter.start()
    try:
        scope = Scope("k:huge", "this key", tpm=10**12, budget=1e12, budget_seconds=parse_duration("36500d"))
        ticket = await limiter.admit("r1", (scope,), 2**62, float("nan"), 60)
        assert ticket.counted and ticket.reserved_cost == 0.0
        limiter.settle(ticket, 2**64 - 1, float("inf"))
        await limiter.flush()  # fail-closed: a flush Redis refused would raise here
        again = await limiter.admit("r2", (scope,), -(2**62), 1.0, 60)
        assert again.counted and again.reserved_tokens == 0
        slots = Scope("k:slots", "this key", parallel=2)
        held = await limiter.admit("r3", (slots,), 1, 0.0, 1e30)  # timeouts.total as large as config allows
        assert held.counted
    finally:
        await limiter.stop()


def test_durations_are_bounded_to_a_hundred_years() -> None:
    assert parse_duration("36500d") == 36500 * 86400
    for text in ("36501d", "99999999999999d", "1217mo", "9" * 40 + "s", "0d", "-1d", "1.5d"):
        with pytest.raises(ValueError):
            parse_duration(text)


# ---- #10 and #15b: admin inputs -----------------------------------------------------------------

HOSTILE = [
    ({"expires": 1e20}, "expires"),
    ({"expires": -1e20}, "expires"),
    ({"expires": "99999-01-01T00:00:00"}, "expires"),
    ({"duration": "99999999999999d"}, "duration"),
    ({"budget_duration": "99999999999999d"}, "budget_duration"),
    ({"max_budget": 1e300}, "max_budget"),
    ({"max_budget": -1}, "max_budget"),
    ({"rpm_limit": -1}, "rpm_limit"),
    ({"tpm_limit": 2**62}, "tpm_limit"),
    ({"max_parallel_requests": 10**9}, "max_parallel_requests"),
    ({"model_rpm_limit": {MODEL: -1}}, "model_rpm_limit"),
    ({"model_tpm_limit": {MODEL: 10**15}}, "model_tpm_limit"),
    ({"max_tokens": 10**10}, "max_tokens"),
    ({"max_request_bytes": 2**40}, "max_request_bytes"),
    ({"metadata": {"notes": "x" * 20_000}}, "metadata"),
    ({"key_alias": "a" * 1000}, "key_alias"),
    ({"key_alias": "a\x00b"}, "key_alias"),  # PostgreSQL text cannot hold NUL: the write would fail as a 503
    ({"team_id": 5}, "team_id"),
    ({"models": ["m"] * 2000}, "models"),
]


async def test_absurd_admin_inputs_are_400s_naming_the_field_and_lists_keep_working(
        gateway_factory, sim, tmp_path) -> None:
    gw = await gateway_factory(governed(sim, tmp_path))
    _, made = await admin(gw, "POST", "/key/generate", {"key_alias": "normal"})
    for body, field in HOSTILE:
        for path, extra in (("/key/generate", {}), ("/key/update", {"key": made["key"]})):
            status, answer = await admin(gw, "POST", path, {**extra, **body})
            assert status == 400, (path, body, answer)
            assert answer["error"]["param"] == field and field in answer["error"]["message"], answer
    for body, field in (({"rpm_limit": -1}, "rpm_limit"), ({"max_budget": 1e300}, "max_budget"),
                        ({"budget_duration": "99999999999999d"}, "budget_duration")):
        status, answer = await admin(gw, "POST", "/team/new", body)
        assert status == 400 and answer["error"]["param"] == field, answer
    status, listed = await admin(gw, "GET", "/key/list")
    assert status == 200 and listed["total_count"] == 1
    status, _ = await admin(gw, "GET", f"/key/info?key={made['key']}")
    assert status == 200


async def test_a_stored_key_out_of_bounds_is_listed_blocked_not_a_500_for_everyone(
        gateway_factory, sim, tmp_path) -> None:
    gw = await gateway_factory(governed(sim, tmp_path))
    _, good = await admin(gw, "POST", "/key/generate", {"key_alias": "good"})
    _, bad = await admin(gw, "POST", "/key/generate", {"key_alias": "bad", "rpm_limit": 5})
    # What an older gateway accepted and stored: an expiry no date can show, a negative limit.
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.execute("UPDATE llmp_keys SET doc = json_set(doc, '$.expires', 1e20, '$.limits.rpm_limit', -1), "
                   "rev = rev + 1 WHERE token = ?", (bad["token_id"],))
    status, listed = await admin(gw, "GET", "/key/list")
    assert status == 200 and listed["total_count"] == 2, listed
    shown = {k["key_alias"]: k for k in listed["data"]}
    assert shown["bad"]["blocked"] is True and "rpm_limit" in shown["bad"]["metadata"]["llmp_unreadable"]
    assert shown["good"]["blocked"] is False
    status, info = await admin(gw, "GET", f"/key/info?key={bad['key']}")
    assert status == 200 and info["info"]["blocked"] is True
    await gw.state.governance.cache.refresh(force=True)
    with pytest.raises(openai.AuthenticationError, match="blocked"):
        await gw.client(api_key=bad["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    await gw.client(api_key=good["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert b'"store_row_unreadable"' in gw.log_buffer.getvalue()
    status, fixed = await admin(gw, "POST", "/key/update", {"key": bad["key"], "blocked": False})
    assert status == 200 and fixed["blocked"] is False
    status, deleted = await admin(gw, "POST", "/key/delete", {"keys": [bad["key"]]})
    assert status == 200 and deleted["deleted_keys"] == [bad["token_id"]]


async def test_lookups_by_a_name_postgres_cannot_hold_are_400s_not_store_outages(
        gateway_factory, sim, tmp_path, pg_dsn: str) -> None:
    config = governed(sim, tmp_path)
    config["ledger"]["store"] = pg_dsn
    gw = await gateway_factory(config)
    for method, path, body, field in (
            ("GET", "/team/info?team_id=a%00b", None, "team_id"),
            ("GET", "/key/list?team_id=a%00b", None, "team_id"),
            ("GET", "/spend/report?team_id=a%00b", None, "team_id"),
            ("GET", "/key/list?team_id=" + "t" * 300, None, "team_id"),
            ("POST", "/key/delete", {"key_aliases": ["a\x00b"]}, "key_aliases"),
            ("POST", "/team/update", {"team_id": "a\x00b"}, "team_id")):
        status, answer = await admin(gw, method, path, body)
        assert status == 400 and answer["error"]["param"] == field, (path, answer)
    status, _ = await admin(gw, "GET", "/key/list")
    assert status == 200


@pytest.mark.parametrize("doc", [b"not json", b"[1, 2]", b'{"token": "t", "limits": {"rpm_limit": "many"}}',
                                 b'{"token": "t", "key_name": "k", "expires": 1e300}', b'{"token": 5}',
                                 b'{"token": "t", "key_name": "k", "surprise": 1}'])
def test_any_stored_document_reads_back_and_a_bad_one_reads_back_blocked(doc: bytes) -> None:
    from gateway.governance.store.documents import UNREADABLE, key_from_doc, team_from_doc

    seen: list[tuple[str, str, str]] = []
    key = key_from_doc(doc, lambda *a: seen.append(a))
    team = team_from_doc(doc, lambda *a: seen.append(a))
    assert key.blocked and team.blocked and UNREADABLE in key.metadata and UNREADABLE in team.metadata
    assert [kind for kind, _, _ in seen] == ["key", "team"]


# ---- #5: one absurd usage number stalls the ledger ------------------------------------------------


def rows(n: int, prefix: str) -> list[dict[str, Any]]:
    return [spend_row(f"{prefix}-id-{i}", f"{prefix}-req-{i}", "t" * 64, None, None, MODEL, "sim-a", "r", 200,
                      10, 5, 0.01) for i in range(n)]


def a_bad_row(prefix: str) -> dict[str, Any]:
    bad = rows(1, prefix + "-bad")[0]
    bad["prompt_tokens"] = 2**64 - 1  # what a broken upstream's usage, spooled unbounded, looks like
    return bad


class Events(list[tuple[str, dict[str, Any]]]):
    def __call__(self, name: str, **fields: Any) -> None:
        self.append((name, fields))


@pytest.fixture
async def pg_dsn(postgres_server: PostgresServer) -> AsyncIterator[str]:
    yield await new_database(postgres_server, "bounds")


async def ledger_ids(url: str) -> list[str]:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///"):]) as db:
            return sorted(r[0] for r in db.execute("SELECT request_id FROM llmp_spend"))
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return sorted(r[0] for r in await conn.fetch("SELECT request_id FROM llmp_spend"))
    finally:
        await conn.close()


def new_ledger(url: str, spool_dir: Path, events: Events) -> SpendLedger:
    from prometheus_client import CollectorRegistry

    store = open_store(url, 10)
    ledger = SpendLedger(SpendSpool(spool_dir, False, store_identity(url)), store, 0.05, 500, events,
                         CollectorRegistry())
    ledger.open()
    return ledger


def quarantined(spool_dir: Path) -> list[dict[str, Any]]:
    path = spool_dir / "quarantine.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def metric(ledger: SpendLedger) -> float:
    return float(ledger.quarantined._value.get())


async def test_a_killed_process_spool_with_a_bad_row_arrives_except_that_row_once_postgres(
        pg_dsn: str, tmp_path: Path) -> None:
    await replay_with_a_bad_row(pg_dsn, tmp_path)


async def test_a_killed_process_spool_with_a_bad_row_arrives_except_that_row_once_sqlite(tmp_path: Path) -> None:
    await replay_with_a_bad_row(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)


async def replay_with_a_bad_row(url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    good = rows(6, "killed")
    lines = [orjson.dumps(r) for r in good[:3]] + [orjson.dumps(a_bad_row("killed"))] + \
            [orjson.dumps(r) for r in good[3:]]
    # A segment a SIGKILLed gateway left behind (its lock died with it).
    (spool_dir / f"spend-s{store_identity(url)}-1-99999-1.spool").write_bytes(b"\n".join(lines) + b"\n")
    events = Events()
    ledger = new_ledger(url, spool_dir, events)
    await ledger.start()
    await ledger.stop()
    assert await ledger_ids(url) == sorted(r["request_id"] for r in good)
    [entry] = quarantined(spool_dir)
    assert orjson.loads(entry["record"])["request_id"] == "killed-bad-req-0"
    assert "prompt_tokens" in entry["reason"] and metric(ledger) == 1
    logged = [f for e, f in events if e == "ledger_row_quarantined"]
    assert logged and logged[0]["request_id"] == "killed-bad-req-0" and logged[0]["reason"]
    assert not list(spool_dir.glob("*.spool")), "the segment is done"
    # Restart: nothing is replayed twice, nothing quarantined twice.
    again = new_ledger(url, spool_dir, Events())
    await again.start()
    await again.stop()
    assert await ledger_ids(url) == sorted(r["request_id"] for r in good)
    assert len(quarantined(spool_dir)) == 1 and metric(again) == 0


async def test_a_batch_postgres_refuses_is_split_and_only_the_bad_row_is_set_aside(
        pg_dsn: str, tmp_path: Path) -> None:
    events = Events()
    ledger = new_ledger(pg_dsn, tmp_path / "spool", events)
    good = rows(9, "live")
    for i, row in enumerate(good):
        ledger.spool.append(row)
        if i in (2, 6):  # this process's own records go to the store as they were spooled: the store must cope
            ledger.spool.append({**a_bad_row(f"live{i}"), "completion_tokens": 2**63})
    await ledger.start()
    await ledger.stop()
    assert await ledger_ids(pg_dsn) == sorted(r["request_id"] for r in good)
    entries = quarantined(tmp_path / "spool")
    assert len(entries) == 2 and all("out of range" in e["reason"] for e in entries)
    assert metric(ledger) == 2 and not [e for e, _ in events if e == "ledger_store_unavailable"]


async def test_the_gateway_reports_quarantined_rows_in_its_metrics(gateway_factory, sim, tmp_path) -> None:
    import aiohttp

    (tmp_path / "spool").mkdir()
    lines = [orjson.dumps(r) for r in rows(2, "old")] + [orjson.dumps(a_bad_row("old"))]
    (tmp_path / "spool" / "spend-1-2-3.spool").write_bytes(b"\n".join(lines) + b"\n")  # an older version's
    gw = await gateway_factory(governed(sim, tmp_path))
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert "llmp_ledger_rows_quarantined_total 1.0" in text
    assert await ledger_ids(f"sqlite:///{tmp_path / 'ledger.db'}") == ["old-req-0", "old-req-1"]
    assert b'"ledger_row_quarantined"' in gw.log_buffer.getvalue()


def test_spend_rows_are_bounded_when_made() -> None:
    row = spend_row("id", "req", "t", None, None, MODEL, "d", "r", 200, 2**64 - 1, -5, float("nan"))
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost"]) == (MAX_USAGE_TOKENS, 0, 0.0)
    assert spend_row("id", "req", "t", None, None, MODEL, "d", "r", 200, 1, 2, float("inf"))["cost"] == 0.0


async def test_the_ledger_keeps_flushing_while_a_store_is_merely_down(tmp_path: Path) -> None:
    """The other side of the split: an unreachable store is an outage, never a reason to quarantine."""
    events = Events()
    ledger = new_ledger("postgresql://postgres@127.0.0.1:9/none", tmp_path / "spool", events)
    ledger.spool.append(rows(1, "down")[0])
    await asyncio.wait_for(ledger.flush(), 30)
    assert quarantined(tmp_path / "spool") == [] and [e for e, _ in events] == ["ledger_store_unavailable"]
    ledger.spool.close()


async def test_a_flush_returns_only_once_every_record_written_before_it_is_in_the_store(tmp_path: Path) -> None:
    """The background loop may be mid-flush (its segment taken, its insert under way) when someone asks for a flush
    (SIGTERM's final flush, a test, an admin read): that flush waits for it, so nothing written before is missing."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = new_ledger(url, tmp_path / "spool", Events())
    await ledger.store.open()
    first, second = rows(2, "race")
    inserting, release = asyncio.Event(), asyncio.Event()
    insert = ledger.store.insert_spend

    async def slow_first_insert(lines: list[bytes]) -> int:
        if not inserting.is_set():
            inserting.set()
            await release.wait()
        return await insert(lines)
    ledger.store.insert_spend = slow_first_insert  # type: ignore[method-assign]
    ledger.write(first)
    background = asyncio.create_task(ledger.flush())  # the loop's flush, stuck in its insert
    await inserting.wait()
    ledger.write(second)
    asked = asyncio.create_task(ledger.flush())
    await asyncio.sleep(0.2)
    assert not asked.done(), "a flush returned while an earlier record was still on its way to the store"
    release.set()
    await asyncio.gather(background, asked)
    assert await ledger_ids(url) == sorted([first["request_id"], second["request_id"]])
    await ledger.stop()


async def test_the_final_flush_runs_when_the_flush_loop_died_and_the_store_closes_after_its_statement(
        tmp_path: Path) -> None:
    """SIGTERM's final flush is what puts the last calls' records in the store: a flush loop that died of something
    unexpected does not skip it, and closing the store waits for a statement still running in its worker thread
    (one whose caller was cancelled) instead of closing the connection under it."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    events = Events()
    ledger = new_ledger(url, tmp_path / "spool", events)
    await ledger.start()

    async def died() -> None:
        raise RuntimeError("flush loop broke")

    assert ledger._task is not None
    ledger._task.cancel()
    ledger._task = asyncio.get_running_loop().create_task(died())
    await asyncio.sleep(0)
    for row in rows(5, "last"):
        ledger.write(row)
    await ledger.stop()
    assert await ledger_ids(url) == sorted(r["request_id"] for r in rows(5, "last"))
    assert [f["error"] for e, f in events if e == "ledger_flush_loop_failed"] == ["RuntimeError: flush loop broke"]

    store = open_store(url, 10)
    await store.open()

    def slow_insert(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS closing (n INTEGER)")
        time.sleep(0.3)
        db.execute("INSERT INTO closing VALUES (1)")

    slow = asyncio.ensure_future(store._run(slow_insert))  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)
    slow.cancel()  # its caller gives up (a flush cut by its timeout); the statement still runs in its thread
    await store.close()  # must wait for it: a close under it would fail it half way
    with pytest.raises(asyncio.CancelledError):
        await slow
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        assert db.execute("SELECT n FROM closing").fetchall() == [(1,)]


def test_the_final_flush_gets_what_is_left_of_the_shutdown_grace() -> None:
    from gateway.http.state import AppState

    state = AppState.__new__(AppState)
    state.grace_ends = 0.0
    assert state.flush_within() == 5.0  # no SIGTERM yet (a failed start): the old fixed bound
    state.grace_ends = time.monotonic() + 60
    assert 58.0 < state.flush_within() <= 59.0
    state.grace_ends = time.monotonic() + 2
    assert state.flush_within() == 5.0
