"""Records from peers merge into the store the same way on SQLite and PostgreSQL: the newest version wins whatever
order versions arrive in, a revoked key stays revoked (and a revocation is taken against a newer version), a local
write supersedes a version merged from a faster clock, writes by older gateway code are shared, and a peer pages
through every change by cursor, however many share one instant."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.governance.keys import KeyCache, Limits, Team, User, VirtualKey
from gateway.governance.store.documents import key_doc, team_doc
from gateway.governance.store.postgres import PostgresStore
from gateway.governance.store.protocol import LedgerStore, StoreError
from gateway.governance.store.replication import PAGE_BYTES, START, Cursor, PeerRecord, changed_page
from gateway.governance.store.sqlite import SqliteStore
from tests.gateway.servers import PostgresServer, new_database

TOKEN = "ab" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    opened: LedgerStore
    if request.param == "sqlite":
        opened = SqliteStore(str(tmp_path / "ledger.db"), 5)
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        opened = PostgresStore(await new_database(server, "records"), 10)
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
    records, more, _ = await store.changed_since((before, "", ""), 100)
    assert [(r.kind, r.id) for r in records] == [("team", "search")] and not more
    team = Team(team_id="search", created_at=1.0)
    assert records[0].updated_at >= before and records[0].doc == team_doc(team).decode()


async def every_change(store: LedgerStore, after: Cursor = START, limit: int = 100) -> tuple[list[PeerRecord], int]:
    """Everything after `after`, paged by the store's cursor as a peer does; and the number of pages."""
    seen: list[PeerRecord] = []
    pages = 0
    while True:
        records, more, after = await store.changed_since(after, limit)
        pages += 1
        assert pages < 100, "paging does not advance"
        seen += records
        if not more:
            return seen, pages


async def test_a_peer_pages_through_many_changes_by_cursor(store: LedgerStore) -> None:
    teams = [Team(team_id=f"team-{i:04d}", created_at=1.0) for i in range(250)]
    merged = await store.merge_records([PeerRecord("team", t.team_id, team_doc(t).decode(), False, 5.0)
                                        for t in teams])
    assert merged == 250
    seen, pages = await every_change(store)
    assert sorted(r.id for r in seen) == [t.team_id for t in teams] and pages <= 4
    # Merged again (a peer's overlap): nothing changes, no new versions offered.
    again = await store.merge_records([dataclasses.replace(r, changed_at=0.0) for r in seen])
    assert again == 0


async def test_rows_of_one_instant_are_paged_through_however_many(store: LedgerStore) -> None:
    """Migration 3 stamped every existing row `changed_at = 0`: more rows of one value than a page still all
    arrive, each once."""
    for i in range(250):
        await store.insert_team(Team(team_id=f"team-{i:04d}", created_at=1.0))
    await execute(store, "UPDATE llmp_teams SET changed_at = 0")
    seen, pages = await every_change(store)
    assert sorted(r.id for r in seen) == [f"team-{i:04d}" for i in range(250)] and pages == 3
    assert {r.changed_at for r in seen} == {0.0}


async def execute(store: LedgerStore, sql: str, *args: object) -> None:
    """A statement run on the store's database as another program (older gateway code, a migration) would."""
    if isinstance(store, SqliteStore):
        assert store._db is not None
        store._db.execute(sql.replace("$1", "?").replace("$2", "?"), args)
    else:
        assert isinstance(store, PostgresStore)
        await store._q("execute", sql, *args)


async def test_a_local_write_supersedes_a_version_merged_from_a_faster_clock(store: LedgerStore) -> None:
    """A region whose clock runs ahead (within the skew peers accept) made the newest version: the next write
    here must still be newer, or a revocation here would lose to it in every region."""
    ahead = time.time() + 200
    await store.merge_records([key_record(5, updated_at=ahead)])
    assert await store.revoke_keys([TOKEN]) == [TOKEN]
    records, _, _ = await store.changed_since(START, 100)
    assert records[0].revoked and records[0].updated_at > ahead



async def test_an_edit_here_supersedes_a_version_merged_from_a_faster_clock(store: LedgerStore) -> None:
    ahead = time.time() + 200
    await store.merge_records([PeerRecord("team", "search", team_doc(Team(team_id="search")).decode(), False, ahead)])
    await store.update_team(Team(team_id="search", team_alias="renamed here"))
    records, _, _ = await store.changed_since(START, 100)
    assert records[0].updated_at > ahead


async def test_a_revocation_is_taken_even_against_a_newer_version(store: LedgerStore) -> None:
    """Three regions: one revoked the key at version 20 while another edited it at version 30 without having heard
    of it; the revocation arriving after the edit still revokes the key (keeping the edit), and every region ends
    with the same record."""
    await store.merge_records([key_record(9, updated_at=30)])
    assert await store.merge_records([key_record(5, updated_at=20, revoked=True)]) == 1
    key, revoked = await stored_key(store)
    assert revoked and key.limits.max_budget == 9
    records, _, _ = await store.changed_since(START, 100)
    assert (records[0].revoked, records[0].updated_at) == (True, 30)
    assert TOKEN not in {k.token for k in (await store.load_keys())[0]}


async def test_a_revocation_by_older_gateway_code_reaches_peers(store: LedgerStore) -> None:
    """A version 1-3 gateway (a rolling update, a rollback) revokes with `SET revoked = 1, rev = ?` and stamps no
    version: the sweep before the next listing stamps it, so peers hear of it."""
    await store.merge_records([key_record(5, updated_at=20)])
    _, _, cursor = await store.changed_since(START, 100)
    await execute(store, "UPDATE llmp_keys SET revoked = 1, rev = $1 WHERE token = $2 AND revoked = 0", 12345, TOKEN)
    records, _, _ = await store.changed_since(cursor, 100)
    assert [(r.id, r.revoked) for r in records] == [(TOKEN, True)] and records[0].updated_at > 20
    # Stamped once: not offered again.
    assert (await store.changed_since((records[0].changed_at, "key", TOKEN), 100))[0] == []
    # A key an older gateway inserted (no version at all) is offered too.
    await execute(store, "INSERT INTO llmp_keys (token, doc, revoked, rev) VALUES ($1, $2, 0, 7)", "cd" * 32,
                  key_doc(VirtualKey(token="cd" * 32, key_name="sk-llmp-...cdcd")).decode())
    records, _, _ = await store.changed_since(cursor, 100)
    assert "cd" * 32 in {r.id for r in records}


def test_a_page_is_cut_by_the_size_of_its_documents() -> None:
    big = "x" * (PAGE_BYTES // 3)
    found = {"team": [PeerRecord("team", f"t{i}", big, False, 1.0, float(i)) for i in range(5)], "key": [], "user": []}
    page, more, cursor = changed_page(found, 100, START)  # type: ignore[arg-type]
    assert [r.id for r in page] == ["t0", "t1", "t2"] and more and cursor == (2.0, "team", "t2")
    huge = {"team": [PeerRecord("team", "t0", "x" * (2 * PAGE_BYTES), False, 1.0, 1.0)], "key": [], "user": []}
    page, more, _ = changed_page(huge, 100, START)  # type: ignore[arg-type]
    assert len(page) == 1 and not more, "a record larger than a page still goes, alone"


class NoStore:
    """The local store, down: every read fails as a real one does (StoreError)."""

    async def key_fingerprint(self) -> tuple[int, int]:
        raise StoreError("down")

    async def load_keys(self) -> tuple[list[VirtualKey], list[Team]]:
        raise StoreError("down")

    async def list_users(self) -> list[User]:
        raise StoreError("down")


def test_a_revocation_held_in_memory_is_not_undone_by_a_stale_peer() -> None:
    """Three regions while the local store is down: region b sends the revocation, region c (not yet told) still
    sends the live key, in either order and in the same round: the key stays refused."""
    cache = KeyCache(NoStore(), 5, lambda *a, **k: None)
    key = VirtualKey(token=TOKEN, key_name="sk-llmp-...abab")
    cache.by_hash = {TOKEN: key}
    assert cache.hold_peer_keys([(key, True)]) == 1
    assert cache.hold_peer_keys([(key, False)]) == 0 and TOKEN not in cache.by_hash
    assert cache.hold_peer_keys([(key, False), (key, True)]) == 0 and TOKEN not in cache.by_hash


async def test_a_postgresql_write_is_stamped_when_it_runs_not_when_it_was_asked_for(
        postgres_server: PostgresServer) -> None:
    """A write that waited for a pool connection must not carry an earlier time than it commits with: a peer whose
    cursor already passed that time would never see it (the reach-back covers the statement, not the wait)."""
    store = PostgresStore(await new_database(postgres_server, "stamp"), 10)
    await store.open()
    try:
        await store.insert_team(Team(team_id="search"))
        held = [await store._pool.acquire() for _ in range(4)]  # the pool's max_size: the write waits
        write = asyncio.create_task(store.update_team(Team(team_id="search", team_alias="waited")))
        await asyncio.sleep(0.5)
        released = time.time()
        for conn in held:
            await store._pool.release(conn)
        await write
        records, _, _ = await store.changed_since(START, 10)
        assert records[0].changed_at >= released - 0.05 and records[0].updated_at >= released - 0.05
    finally:
        await store.close()


async def test_postgresql_breaks_a_version_tie_by_bytes_as_sqlite_does(postgres_server: PostgresServer) -> None:
    """Two versions of one instant are ordered by their documents byte-wise on both databases, whatever the
    database's collation: under a language collation ('a' before 'B') PostgreSQL would pick the other version
    than SQLite and the regions would never agree."""
    import asyncpg

    name = f"icu_{time.monotonic_ns()}"
    conn = await asyncpg.connect(postgres_server.url, timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                           "LOCALE 'C.UTF-8'")
    finally:
        await conn.close()
    store = PostgresStore(postgres_server.url.rsplit("/", 1)[0] + "/" + name, 10)
    await store.open()
    try:
        assert await store._q("fetchval", "SELECT 'a' < 'B'"), "the database orders by language"
        upper, lower = (PeerRecord("team", "t", team_doc(Team(team_id="t", team_alias=alias)).decode(), False, 7.0)
                        for alias in ("B", "a"))
        assert lower.doc.encode() > upper.doc.encode()
        await store.merge_records([lower])
        assert await store.merge_records([upper]) == 0, "the byte-wise larger document stays"
        found = await store.get_team("t")
        assert found is not None and found.team_alias == "a"
    finally:
        await store.close()
