"""Ledger store schema migrations: a database made before migrations existed is adopted with every row intact,
on SQLite and PostgreSQL; the version table says the latest version; a newer schema is refused, by name."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import openai
import orjson
import pytest

from gateway.governance.keys import Limits, Team, User, VirtualKey
from gateway.governance.ledger.spend import spend_row
from gateway.governance.store import migrations
from gateway.governance.store.documents import key_doc, team_doc
from gateway.governance.store.migrations import SchemaTooNew, latest
from gateway.governance.store.postgres import PostgresStore
from gateway.governance.store.sqlite import SqliteStore
from tests.gateway.conftest import MODEL, deployment, gateway_config
from tests.gateway.servers import PostgresServer, new_database

# Schema v1, exactly as gateway/store.py created it before migrations existed (do not edit: it is history).
SCHEMA_V1 = [
    """CREATE TABLE IF NOT EXISTS llmp_teams (
        team_id TEXT PRIMARY KEY, team_alias TEXT, doc TEXT NOT NULL, rev BIGINT NOT NULL, created_at DOUBLE PRECISION)""",  # noqa: E501
    """CREATE TABLE IF NOT EXISTS llmp_keys (
        token TEXT PRIMARY KEY, key_alias TEXT, team_id TEXT, doc TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,
        rev BIGINT NOT NULL, created_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS llmp_keys_alias ON llmp_keys (key_alias)",
    """CREATE TABLE IF NOT EXISTS llmp_spend (
        id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, day TEXT NOT NULL, request_id TEXT, key_token TEXT,
        key_alias TEXT, team_id TEXT, model TEXT, deployment TEXT, region TEXT, status INTEGER,
        prompt_tokens BIGINT, completion_tokens BIGINT, cost DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS llmp_spend_day ON llmp_spend (day)",
]
TABLES = {"llmp_teams": "team_id", "llmp_keys": "token", "llmp_spend": "id"}
NEW_TABLES = {"llmp_users": "user_id", "llmp_team_members": "team_id, user_id"}  # version 2
NOW = 1_760_000_000.0
MESSAGES = [{"role": "user", "content": "hi"}]


def v1_rows() -> dict[str, list[tuple[Any, ...]]]:
    teams = [Team(team_id="search", team_alias="Search", models=("gpt-4o-mini",), created_at=NOW,
                  limits=Limits(max_budget=10.0, budget_duration="30d"), metadata={"owner": "ana"}),
             Team(team_id="ads", limits=Limits(rpm_limit=60), blocked=True, created_at=NOW + 1)]
    keys = [VirtualKey(token=f"{i:064x}", key_name=f"sk-llmp-...{i:04d}", key_alias=f"key-{i}",
                       team_id="search" if i % 2 else None, limits=Limits(tpm_limit=1000 * i),
                       models=("gpt-4o-mini",) if i == 1 else (), model_rpm_limit={"gpt-4o-mini": i},
                       expires=NOW + 86400 if i == 2 else None, created_at=NOW + i) for i in range(1, 4)]
    spend = [(f"rec-{i}", NOW + i, "2025-10-09", f"req-{i}", keys[i % 3].token, keys[i % 3].key_alias,
              keys[i % 3].team_id, "gpt-4o-mini", "openai", "us-east-1", 200, 10 * i, 5 * i, 0.0001 * i)
             for i in range(5)]
    return {
        "llmp_teams": [(t.team_id, t.team_alias, team_doc(t).decode(), 11 + n, t.created_at)
                       for n, t in enumerate(teams)],
        "llmp_keys": [(k.token, k.key_alias, k.team_id, key_doc(k).decode(), int(n == 2), 21 + n, k.created_at)
                      for n, k in enumerate(keys)],
        "llmp_spend": spend,
    }


def migrated(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """v1 rows as the latest schema holds them: every row kept, spend rows with no user (version 2's column), keys
    and teams versioned by their creation, offered to peers from the start (version 3's updated_at and changed_at),
    recorded as stamped at their revision (version 4's stamped_rev: the sweep does not restamp them); spend rows
    say nothing about the response cache (version 5's cache_hit and saved)."""
    out = {t: sorted(r, key=lambda row: row[0]) for t, r in rows.items()}
    out["llmp_spend"] = [(*row, None, None, None) for row in out["llmp_spend"]]  # user_id (2), cache_hit, saved (5)
    for table, rev in (("llmp_keys", 5), ("llmp_teams", 3)):  # created_at is the last column of version 1
        out[table] = [(*row, row[-1], 0.0, row[rev]) for row in out[table]]
    return out


def sqlite_rows(path: Path, tables: dict[str, str] = TABLES) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY {pk}").fetchall() for t, pk in tables.items()}
    finally:
        db.close()


def sqlite_versions(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT version FROM llmp_schema_version ORDER BY version")]
    finally:
        db.close()


def sqlite_v1(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(path, isolation_level=None)
    for statement in SCHEMA_V1:
        db.execute(statement)
    rows = v1_rows()
    for table, values in rows.items():
        db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(values[0]))})", values)
    db.close()
    return rows


async def test_a_sqlite_ledger_made_before_migrations_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    rows = sqlite_v1(path)
    store = SqliteStore(str(path), 5)
    await store.open()
    try:
        keys, teams = await store.load_keys()
        assert sorted(k.key_alias for k in keys) == ["key-1", "key-2"]  # key-3 was revoked
        assert {t.team_id for t in teams} == {"search", "ads"}
        [team] = [t for t in teams if t.team_id == "search"]
        assert team.limits.max_budget == 10.0 and team.metadata == {"owner": "ana"}
        report = await store.spend_grouped(("day",), {})
        assert report[0]["requests"] == 5 and report[0]["prompt_tokens"] == 100
        assert await store.list_users() == [] and await store.members(team_id="search") == []
    finally:
        await store.close()
    assert sqlite_rows(path) == migrated(rows)
    assert sqlite_rows(path, NEW_TABLES) == {t: [] for t in NEW_TABLES}
    assert sqlite_versions(path) == [m.version for m in migrations.MIGRATIONS] and sqlite_versions(path)[-1] == latest()
    again = SqliteStore(str(path), 5)
    await again.open()  # a second start finds nothing to do
    await again.close()
    assert sqlite_versions(path) == [m.version for m in migrations.MIGRATIONS]


async def test_a_new_sqlite_ledger_is_made_at_the_latest_version(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "new.db"), 5)
    await store.open()
    await store.close()
    assert sqlite_versions(tmp_path / "new.db")[-1] == latest()
    assert sqlite_rows(tmp_path / "new.db", {**TABLES, **NEW_TABLES}) == {t: [] for t in {**TABLES, **NEW_TABLES}}


async def test_a_pending_migration_runs_once_and_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.db"
    rows = sqlite_v1(path)
    extra = migrations.Migration(latest() + 1, "an index for the test",
                                 ("CREATE INDEX llmp_spend_key_for_test ON llmp_spend (key_token)",))
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, extra))
    for _ in range(2):  # not `IF NOT EXISTS`: a second run would fail
        store = SqliteStore(str(path), 5)
        await store.open()
        await store.close()
    assert sqlite_versions(path) == [*range(1, extra.version + 1)]
    assert sqlite_rows(path) == migrated(rows)


async def test_a_sqlite_ledger_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    sqlite_v1(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(migrations.CREATE_VERSION_TABLE)
    db.execute("INSERT INTO llmp_schema_version VALUES (?, 'from a newer gateway', ?)", (latest() + 1, NOW))
    db.close()
    before = sqlite_rows(path)
    store = SqliteStore(str(path), 5)
    with pytest.raises(SchemaTooNew, match=rf"schema is at version {latest() + 1}, newer than this gateway knows "
                                           rf"\(version {latest()}\)"):
        await store.open()
    await store.close()
    assert sqlite_rows(path) == before and sqlite_versions(path) == [latest() + 1]


# ---- PostgreSQL ---------------------------------------------------------------------------------

@pytest.fixture
async def pg_database(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh database on the test cluster: its DSN."""
    yield await new_database(postgres_server, "ledger")


async def pg_rows(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return {t: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY {pk}")] for t, pk in TABLES.items()}
    finally:
        await conn.close()


async def pg_versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [r[0] for r in await conn.fetch("SELECT version FROM llmp_schema_version ORDER BY version")]
    finally:
        await conn.close()


async def pg_v1(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in SCHEMA_V1:
            await conn.execute(statement)
        rows = v1_rows()
        for table, values in rows.items():
            marks = ", ".join(f"${i + 1}" for i in range(len(values[0])))
            await conn.executemany(f"INSERT INTO {table} VALUES ({marks})", values)
    finally:
        await conn.close()
    return rows


async def test_a_postgres_ledger_made_before_migrations_keeps_every_row(pg_database: str) -> None:
    rows = await pg_v1(pg_database)
    store = PostgresStore(pg_database, 10)
    await store.open()
    try:
        keys, teams = await store.load_keys()
        assert sorted(k.key_alias for k in keys) == ["key-1", "key-2"]
        assert {t.team_id for t in teams} == {"search", "ads"}
        report = await store.spend_grouped(("day",), {})
        assert report[0]["requests"] == 5 and report[0]["prompt_tokens"] == 100
        assert await store.list_users() == [] and await store.members(team_id="search") == []
    finally:
        await store.close()
    assert await pg_rows(pg_database) == migrated(rows)
    assert await pg_versions(pg_database) == [m.version for m in migrations.MIGRATIONS]
    assert (await pg_versions(pg_database))[-1] == latest()
    again = PostgresStore(pg_database, 10)
    await again.open()
    await again.close()
    assert await pg_versions(pg_database) == [m.version for m in migrations.MIGRATIONS]


async def test_a_postgres_ledger_newer_than_the_code_is_refused(pg_database: str) -> None:
    await pg_v1(pg_database)
    conn = await asyncpg.connect(pg_database, timeout=10)
    try:
        await conn.execute(migrations.CREATE_VERSION_TABLE)
        await conn.execute("INSERT INTO llmp_schema_version VALUES ($1, 'from a newer gateway', $2)", latest() + 1, NOW)
    finally:
        await conn.close()
    before = await pg_rows(pg_database)
    store = PostgresStore(pg_database, 10)
    with pytest.raises(SchemaTooNew, match=rf"postgresql: the ledger store's schema is at version {latest() + 1}"):
        await store.open()
    await store.close()
    assert await pg_rows(pg_database) == before and await pg_versions(pg_database) == [latest() + 1]


# ---- version 2: users, team members, spend by user ------------------------------------------------

async def users_members_and_spend_by_user(store: Any) -> None:
    """After migrating a v1 ledger: users and memberships are kept, spend rows carry a user and sum per user."""
    await store.insert_user(User(user_id="ana", user_email="ana@example.com", limits=Limits(max_budget=5.0),
                                 created_at=NOW))
    await store.put_member("search", "ana", "admin", "ana@example.com", None, NOW)
    row = spend_row("rec-u", "req-u", "f" * 64, None, "search", "gpt-4o-mini", "openai", "us-east-1", 200, 10, 5,
                    0.5, now=NOW + 10, user_id="ana")
    assert await store.insert_spend([orjson.dumps(row)]) == 1
    [ana] = await store.list_users()
    assert ana.user_email == "ana@example.com" and ana.limits.max_budget == 5.0
    assert await store.find_user_by_email("ana@example.com") == ana
    assert [m["role"] for m in await store.members(team_id="search")] == ["admin"]
    assert await store.spend_since("user_id", NOW, ["ana"]) == {"ana": 0.5}
    [by_user] = await store.spend_grouped(("user_id",), {"user_id": "ana"})
    assert by_user["requests"] == 1 and by_user["spend"] == 0.5
    assert [r["request_id"] for r in await store.spend_rows({"user_id": "ana"}, 10)] == ["req-u"]
    assert await store.remove_member("search", "ana") and not await store.remove_member("search", "ana")
    assert await store.delete_users(["ana", "nobody"]) == ["ana"] and await store.list_users() == []


async def test_a_migrated_sqlite_ledger_keeps_users_members_and_spend_by_user(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    sqlite_v1(path)
    store = SqliteStore(str(path), 5)
    await store.open()
    try:
        await users_members_and_spend_by_user(store)
    finally:
        await store.close()


async def test_a_migrated_postgres_ledger_keeps_users_members_and_spend_by_user(pg_database: str) -> None:
    await pg_v1(pg_database)
    store = PostgresStore(pg_database, 10)
    await store.open()
    try:
        await users_members_and_spend_by_user(store)
    finally:
        await store.close()


# ---- a rolling update or a rollback: older code meets a newer schema it can still read ----------------------

MIGRATIONS_NOW = migrations.MIGRATIONS


async def test_version_1_code_reads_and_writes_a_version_2_ledger(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.db"
    rows = sqlite_v1(path)
    store = SqliteStore(str(path), 5)  # today's code migrates it to version 2 ...
    await store.open()
    await store.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])  # ... and version 1 code opens it
    old = SqliteStore(str(path), 5)
    await old.open()
    try:
        keys, teams = await old.load_keys()
        assert {k.token for k in keys} and {t.team_id for t in teams} == {r[0] for r in rows["llmp_teams"]}
        row = spend_row("rec-old", "req-old", "f" * 64, None, None, "gpt-4o-mini", "openai", "us-east-1", 200, 1, 1,
                        0.1, now=NOW + 20)
        assert await old.insert_spend([orjson.dumps(row)]) == 1
    finally:
        await old.close()
    assert sqlite_versions(path) == [m.version for m in MIGRATIONS_NOW]


async def test_a_newer_ledger_unreadable_by_this_code_is_refused_and_the_gateway_is_not_ready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway_factory: Any, sim: Any) -> None:
    path = tmp_path / "ledger.db"
    sqlite_v1(path)
    breaking = migrations.Migration(latest() + 1, "a change older code cannot read",
                                    ("ALTER TABLE llmp_spend ADD COLUMN breaking_for_test TEXT",))
    with monkeypatch.context() as newer:
        newer.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, breaking))
        store = SqliteStore(str(path), 5)
        await store.open()
        await store.close()
    with pytest.raises(SchemaTooNew, match=rf"readable only by a gateway that knows version {latest() + 1}"):
        await SqliteStore(str(path), 5).open()
    config = gateway_config([deployment("sim-a", sim.base_url)])
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{path}"}
    gw = await gateway_factory(config)
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/health/readiness") as resp:
        assert resp.status == 503 and "schema is newer" in (await resp.json())["db"]
    # A virtual key is not told it is wrong (401): this replica cannot tell; the master key still works.
    with pytest.raises(openai.APIStatusError) as refused:
        await gw.client(api_key="sk-llmp-" + "0" * 32).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert refused.value.status_code == 503 and refused.value.code == "key_store_unreadable"
    await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)


# ---- version 5: spend rows say whether the response cache answered, and what it saved ----------------------------

async def cache_columns(store: Any) -> None:
    """A hit's row keeps cache_hit and saved; a row written without them (older code) reads as NULL."""
    hit = spend_row("rec-hit", "req-hit", "f" * 64, None, "search", "gpt-4o-mini", "cache", "us-east-1", 200, 10, 5,
                    0.0, now=NOW + 30, cache_hit=True, saved=0.25)
    miss = spend_row("rec-miss", "req-miss", "f" * 64, None, "search", "gpt-4o-mini", "openai", "us-east-1", 200, 10,
                     5, 0.25, now=NOW + 31, cache_hit=False)
    old = spend_row("rec-v4", "req-v4", "f" * 64, None, "search", "gpt-4o-mini", "openai", "us-east-1", 200, 1, 1,
                    0.1, now=NOW + 32)
    assert await store.insert_spend([orjson.dumps(r) for r in (hit, miss, old)]) == 3
    rows = {r["request_id"]: r for r in await store.spend_rows({"team_id": "search"}, 10)}
    assert (rows["req-hit"]["cache_hit"], rows["req-hit"]["saved"], rows["req-hit"]["cost"]) == (1, 0.25, 0.0)
    assert (rows["req-miss"]["cache_hit"], rows["req-miss"]["saved"]) == (0, None)
    assert (rows["req-v4"]["cache_hit"], rows["req-v4"]["saved"]) == (None, None)


async def test_a_migrated_sqlite_ledger_records_cache_hits_and_savings(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    sqlite_v1(path)
    store = SqliteStore(str(path), 5)
    await store.open()
    try:
        await cache_columns(store)
    finally:
        await store.close()
    assert 5 in sqlite_versions(path)


async def test_a_migrated_postgres_ledger_records_cache_hits_and_savings(pg_database: str) -> None:
    await pg_v1(pg_database)
    store = PostgresStore(pg_database, 10)
    await store.open()
    try:
        await cache_columns(store)
    finally:
        await store.close()
    assert 5 in await pg_versions(pg_database)


async def test_version_4_code_reads_and_writes_a_version_5_ledger(pg_database: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = PostgresStore(pg_database, 10)  # today's code migrates a new database to the latest version ...
    await store.open()
    await store.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS_NOW[:4])  # ... and version 4 code opens it
    old = PostgresStore(pg_database, 10)
    await old.open()
    try:
        row = spend_row("rec-v4", "req-v4", "f" * 64, None, "search", "gpt-4o-mini", "openai", "us-east-1", 200, 1,
                        1, 0.1, now=NOW)
        assert await old.insert_spend([orjson.dumps(row)]) == 1
        [report] = await old.spend_grouped(("team_id",), {"team_id": "search"})
        assert report["requests"] == 1
    finally:
        await old.close()
    assert await pg_versions(pg_database) == [m.version for m in MIGRATIONS_NOW]
