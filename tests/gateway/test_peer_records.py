"""Records from peers merge into the store the same way on SQLite and PostgreSQL: the newest version wins whatever
order versions arrive in, a revoked key stays revoked, and a peer pages through every change by cursor."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.governance.keys import Limits, Team, VirtualKey
from gateway.governance.store.documents import key_doc, team_doc
from gateway.governance.store.postgres import PostgresStore
from gateway.governance.store.protocol import LedgerStore
from gateway.governance.store.replication import PeerRecord
from gateway.governance.store.sqlite import SqliteStore
from tests.gateway.servers import PostgresServer

TOKEN = "ab" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    opened: LedgerStore
    if request.param == "sqlite":
        opened = SqliteStore(str(tmp_path / "ledger.db"), 5)
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        name = f"records_{time.monotonic_ns()}"
        conn = await asyncpg.connect(server.url, timeout=10)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        opened = PostgresStore(server.url.rsplit("/", 1)[0] + "/" + name, 10)
    await opened.open()
    yield opened
    await opened.close()


def key_record(budget: float, updated_at: float, revoked: bool = False) -> PeerRecord:
    key = VirtualKey(token=TOKEN, key_name="sk-llmp-...abcd", key_alias="shared", limits=Limits(max_budget=budget),
                     created_at=1.0)
    return PeerRecord("key", TOKEN, key_doc(key).decode(), revoked, updated_at)


async def stored_key(store: LedgerStore) -> tuple[VirtualKey, bool]:
    found = await store.get_key(TOKEN)
    assert found is not None
    return found


async def test_the_newest_version_wins_in_any_order(store: LedgerStore) -> None:
    assert await store.merge_records([key_record(5, updated_at=20)]) == 1
    assert await store.merge_records([key_record(1, updated_at=10)]) == 0  # older: nothing changes
    assert (await stored_key(store))[0].limits.max_budget == 5
    assert await store.merge_records([key_record(7, updated_at=30)]) == 1
    assert (await stored_key(store))[0].limits.max_budget == 7
    assert await store.merge_records([key_record(7, updated_at=30)]) == 0  # the same version again


async def test_a_revoked_key_stays_revoked_and_a_revocation_wins_a_tie(store: LedgerStore) -> None:
    await store.merge_records([key_record(5, updated_at=20)])
    assert await store.merge_records([key_record(5, updated_at=20, revoked=True)]) == 1
    # An edit made elsewhere after the revocation, by a region that had not heard of it: the key stays revoked.
    assert await store.merge_records([key_record(9, updated_at=40)]) == 1
    key, revoked = await stored_key(store)
    assert revoked and key.limits.max_budget == 9
    assert TOKEN not in {k.token for k in (await store.load_keys())[0]}


async def test_local_writes_are_versions_a_peer_pulls(store: LedgerStore) -> None:
    before = time.time() - 1
    await store.insert_team(Team(team_id="search", created_at=1.0))
    await store.revoke_keys([TOKEN])  # nothing to revoke: no version made
    records, more = await store.changed_since(before, 100)
    assert [(r.kind, r.id) for r in records] == [("team", "search")] and not more
    team = Team(team_id="search", created_at=1.0)
    assert records[0].updated_at >= before and records[0].doc == team_doc(team).decode()


async def test_a_peer_pages_through_many_changes_by_cursor(store: LedgerStore) -> None:
    teams = [Team(team_id=f"team-{i:04d}", created_at=1.0) for i in range(250)]
    merged = await store.merge_records([PeerRecord("team", t.team_id, team_doc(t).decode(), False, 5.0)
                                        for t in teams])
    assert merged == 250
    seen: set[str] = set()
    since, pages = 0.0, 0
    while True:
        records, more = await store.changed_since(since, 100)
        pages += 1
        seen |= {r.id for r in records}
        if not more:
            break
        since = max(r.changed_at for r in records)
    assert seen == {t.team_id for t in teams} and pages <= 4
    # Merged again (a peer's overlap): nothing changes, no new versions offered.
    again = await store.merge_records([dataclasses.replace(r, changed_at=0.0) for r in
                                       (await store.changed_since(0.0, 1000))[0]])
    assert again == 0
