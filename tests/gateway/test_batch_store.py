"""The Batch API's rows in the ledger store, on SQLite and PostgreSQL alike: one lease holder per batch, a line
answered and charged once however often it is finished, lists scoped to their owner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.governance.ledger.spend import spend_row
from gateway.governance.store.batches import LeaseLost
from gateway.governance.store.postgres import PostgresStore
from gateway.governance.store.sqlite import SqliteStore
from tests.gateway.servers import PostgresServer, new_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    """Two stores on one database: two gateway replicas."""
    if request.param == "sqlite":
        pair: tuple[Any, Any] = (SqliteStore(str(tmp_path / "l.db"), 10), SqliteStore(str(tmp_path / "l.db"), 10))
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        dsn = await new_database(server, "batches")
        pair = (PostgresStore(dsn, 10), PostgresStore(dsn, 10))
    for store in pair:
        await store.open()
    yield pair
    for store in pair:
        await store.close()


def batch(ident: str, key: str, team: str | None, created: float) -> dict[str, Any]:
    return {"id": ident, "key_token": key, "team_id": team, "status": "validating", "created_at": created,
            "doc": orjson.dumps({"id": ident}).decode()}


async def test_one_replica_holds_a_batch_until_its_lease_expires(stores: tuple[Any, Any]) -> None:
    a, b = (s.batches() for s in stores)
    await a.insert_batch(batch("batch_1", "k1", None, 1.0))
    assert await a.claimable(100.0, 10) == ["batch_1"]
    won = await asyncio.gather(a.claim("batch_1", "replica-a", 100.0, 130.0),
                               b.claim("batch_1", "replica-b", 100.0, 130.0))
    assert sorted(won) == [False, True]  # claimed at once: exactly one wins
    holder, other = ("replica-a", "replica-b") if won[0] else ("replica-b", "replica-a")
    assert await a.claimable(120.0, 10) == []
    assert await b.claim("batch_1", holder, 120.0, 150.0)  # renewed by its holder
    assert not await b.claim("batch_1", other, 140.0, 170.0)  # not taken while renewed
    assert await b.claim("batch_1", other, 151.0, 181.0)  # taken over once expired
    assert not await a.claim("batch_1", holder, 152.0, 182.0)  # the old holder has lost it
    await a.release("batch_1", other)
    assert await a.claimable(153.0, 10) == ["batch_1"]


async def test_a_line_is_answered_and_charged_once_however_often_it_is_finished(stores: tuple[Any, Any]) -> None:
    a, b = (s.batches() for s in stores)
    await a.insert_batch(batch("batch_2", "k1", "t1", 1.0))
    assert await a.claim("batch_2", "replica-a", 100.0, 130.0)
    spend = orjson.dumps(spend_row("batch-x1", "batch_2:c1", "k1", None, "t1", "m", "d", "r", 200, 10, 2, 0.5))
    first = await asyncio.gather(a.finish_line("batch_2", "c1", 1, True, '{"n": 1}', spend, "replica-a"),
                                 b.finish_line("batch_2", "c1", 1, True, '{"n": 2}', spend, "replica-a"))
    assert sorted(first) == [False, True]
    assert await a.finish_line("batch_2", "c2", 2, False, '{"e": 1}', None, "replica-a")
    assert await a.done_lines("batch_2") == {"c1", "c2"}
    assert await a.line_counts("batch_2") == (1, 1)
    assert len(await a.results("batch_2", True)) == 1 and await a.results("batch_2", False) == [(2, '{"e": 1}')]
    rows = await stores[0].spend_rows({"request_id": "batch_2:c1"}, 10)
    assert len(rows) == 1 and rows[0]["cost"] == pytest.approx(0.5)


async def test_a_replica_that_lost_the_lease_writes_no_line_and_charges_nothing(stores: tuple[Any, Any]) -> None:
    """A replica paused (SIGSTOP, a long GC, a network partition) past its lease, then resumed, still has lines in
    flight: once another holds the lease, their answers are not written, so none lands after the holder finalized."""
    a, b = (s.batches() for s in stores)
    await a.insert_batch(batch("batch_f", "k1", "t1", 1.0))
    assert await a.claim("batch_f", "paused", 100.0, 130.0)
    assert await b.claim("batch_f", "survivor", 131.0, 161.0)  # the paused one's lease expired: taken over
    spend = orjson.dumps(spend_row("batch-f1", "batch_f:c1", "k1", None, "t1", "m", "d", "r", 200, 10, 2, 0.5))
    with pytest.raises(LeaseLost):
        await a.finish_line("batch_f", "c1", 1, True, '{"late": true}', spend, "paused")
    assert await a.done_lines("batch_f") == set()
    assert await stores[0].spend_rows({"request_id": "batch_f:c1"}, 10) == []
    assert await b.finish_line("batch_f", "c1", 1, True, '{"n": 1}', spend, "survivor")
    assert await a.results("batch_f", True) == [(1, '{"n": 1}')]


async def test_results_are_read_a_page_at_a_time_in_file_order(stores: tuple[Any, Any]) -> None:
    a = stores[0].batches()
    await a.insert_batch(batch("batch_p", "k1", None, 1.0))
    assert await a.claim("batch_p", "r", 100.0, 130.0)
    for n in (5, 1, 4, 2, 3):
        assert await a.finish_line("batch_p", f"c{n}", n, n != 4, f'"{n}"', None, "r")
    assert await a.results("batch_p", True, 0, 2) == [(1, '"1"'), (2, '"2"')]
    assert await a.results("batch_p", True, 2, 2) == [(3, '"3"'), (5, '"5"')]
    assert await a.results("batch_p", True, 5, 2) == []
    assert await a.results("batch_p", False) == [(4, '"4"')]


async def test_leases_are_timed_by_the_stores_clock(stores: tuple[Any, Any]) -> None:
    a, b = (s.batches() for s in stores)
    before = time.time()
    now = [await a.clock(), await b.clock()]
    assert before - 5 < min(now) <= max(now) < time.time() + 5


async def test_a_batch_moves_only_from_the_statuses_named(stores: tuple[Any, Any]) -> None:
    a = stores[0].batches()
    await a.insert_batch(batch("batch_3", "k1", None, 1.0))
    assert await a.set_batch("batch_3", "cancelling", '{"s": "cancelling"}', ("validating", "in_progress"))
    assert not await a.set_batch("batch_3", "in_progress", '{"s": "in_progress"}', ("validating",))
    row = await a.get_batch("batch_3")
    assert row["status"] == "cancelling" and row["doc"] == '{"s": "cancelling"}'
    assert await a.status_counts() == {"cancelling": 1}


async def test_lists_show_the_owner_and_its_team_newest_first_after_a_cursor(stores: tuple[Any, Any]) -> None:
    a = stores[0].batches()
    for i, (key, team) in enumerate([("k1", "t1"), ("k2", "t1"), ("k3", "t2"), ("k1", "t1")]):
        await a.insert_batch(batch(f"batch_{i}", key, team, float(i)))
        await a.insert_file({"id": f"file-{i}", "key_token": key, "team_id": team, "purpose": "batch",
                             "filename": "f", "bytes": 1, "created_at": float(i)})
    assert [r["id"] for r in await a.list_batches(("k2", "t1"), None, 10)] == ["batch_3", "batch_1", "batch_0"]
    assert [r["id"] for r in await a.list_batches(("k2", "t1"), "batch_3", 1)] == ["batch_1"]
    assert [r["id"] for r in await a.list_batches(("k3", "t2"), None, 10)] == ["batch_2"]
    assert [r["id"] for r in await a.list_batches(("k9", None), None, 10)] == []
    assert len(await a.list_batches(None, None, 10)) == 4  # the master key
    assert [r["id"] for r in await a.list_files(("k3", "t2"), "batch", None, 10)] == ["file-2"]
    assert await a.delete_file("file-2") and not await a.delete_file("file-2")
    assert await a.get_file("file-2") is None
