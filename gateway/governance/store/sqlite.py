"""The ledger store: virtual keys, teams and spend rows, in SQLite (default) or PostgreSQL.

Keys and teams live here durably, as JSON documents beside the few columns that are
queried; every replica holds them all in memory (`gateway.keys.KeyCache`), so the store
is never on the request path. Spend rows are keyed by a unique record id: replaying a
spool segment twice inserts nothing twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from gateway.governance.keys import Limits, Team, VirtualKey

# Spend columns and their SQL types. Rows travel as the spool's JSON lines: a batch is one JSON array, inserted
# by one statement that unpacks it inside the database (a single call, no per-row work in the gateway process).
SPEND_TYPES = {"id": "text", "ts": "double precision", "day": "text", "request_id": "text", "key_token": "text",
               "key_alias": "text", "team_id": "text", "model": "text", "deployment": "text", "region": "text",
               "status": "integer", "prompt_tokens": "bigint", "completion_tokens": "bigint",
               "cost": "double precision"}
SPEND_COLUMNS = tuple(SPEND_TYPES)
GROUPS = {"key": ("key_token", "key_alias"), "team": ("team_id",), "model": ("model",), "day": ("day",)}

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS llmp_teams (
        team_id TEXT PRIMARY KEY, team_alias TEXT, doc TEXT NOT NULL, rev BIGINT NOT NULL, created_at DOUBLE PRECISION)""",
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


SQLITE_INSERT_SPEND = (f"INSERT OR IGNORE INTO llmp_spend ({', '.join(SPEND_COLUMNS)}) SELECT "
                       + ", ".join(f"json_extract(value, '$.{c}')" for c in SPEND_COLUMNS) + " FROM json_each(?)")
POSTGRES_INSERT_SPEND = (f"INSERT INTO llmp_spend ({', '.join(SPEND_COLUMNS)}) SELECT {', '.join(SPEND_COLUMNS)} "
                         "FROM jsonb_to_recordset($1::jsonb) AS r("
                         + ", ".join(f"{c} {t}" for c, t in SPEND_TYPES.items()) + ") ON CONFLICT (id) DO NOTHING")


def json_array(lines: list[bytes]) -> str:
    return (b"[" + b",".join(lines) + b"]").decode()


class StoreError(Exception):
    """The store could not be reached or refused the operation."""


def _rev() -> int:
    # A random revision per write: the cache's fingerprint (count, sum of revisions) changes on every write.
    return secrets.randbits(31)


def key_doc(key: VirtualKey) -> bytes:
    return orjson.dumps(dataclasses.asdict(key))


def key_from_doc(doc: str | bytes) -> VirtualKey:
    d = orjson.loads(doc)
    d["limits"] = Limits(**d.get("limits") or {})
    d["models"] = tuple(d.get("models") or ())
    return VirtualKey(**d)


def team_doc(team: Team) -> bytes:
    return orjson.dumps(dataclasses.asdict(team))


def team_from_doc(doc: str | bytes) -> Team:
    d = orjson.loads(doc)
    d["limits"] = Limits(**d.get("limits") or {})
    d["models"] = tuple(d.get("models") or ())
    return Team(**d)


class LedgerStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def key_fingerprint(self) -> tuple[int, int]: ...

    async def load_keys(self) -> tuple[list[VirtualKey], list[Team]]: ...

    async def insert_key(self, key: VirtualKey) -> None: ...

    async def update_key(self, key: VirtualKey) -> None: ...

    async def get_key(self, token: str) -> tuple[VirtualKey, bool] | None: ...

    async def find_tokens_by_alias(self, aliases: list[str]) -> list[str]: ...

    async def revoke_keys(self, tokens: list[str]) -> list[str]: ...

    async def list_keys(self, team_id: str | None) -> list[tuple[VirtualKey, bool]]: ...

    async def insert_team(self, team: Team) -> None: ...

    async def update_team(self, team: Team) -> None: ...

    async def get_team(self, team_id: str) -> Team | None: ...

    async def list_teams(self) -> list[Team]: ...

    async def insert_spend(self, lines: list[bytes]) -> int:
        """Insert spend records (JSON objects, one per line of the spool), ignoring ids already present;
        the number inserted."""
        ...

    async def spend_report(self, group_by: str, start: str | None, end: str | None,
                           key_token: str | None, team_id: str | None) -> list[dict[str, Any]]: ...

    async def spend_since(self, column: str, since: float, ids: list[str]) -> dict[str, float]:
        """Spend recorded since `since` (Unix seconds) per `key_token` or `team_id` in `ids`."""
        ...


class Conflict(StoreError):
    """The row already exists (a key or team id given twice)."""


def _report_sql(group_by: str, start: str | None, end: str | None, key_token: str | None,
                team_id: str | None, mark: Any) -> tuple[str, list[Any]]:
    cols = GROUPS[group_by]
    where, args = [], []
    for clause, value in (("day >= {}", start), ("day <= {}", end), ("key_token = {}", key_token),
                          ("team_id = {}", team_id)):
        if value is not None:
            args.append(value)
            where.append(clause.format(mark(len(args))))
    sql = (f"SELECT {', '.join(cols)}, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost) "
           f"FROM llmp_spend {'WHERE ' + ' AND '.join(where) if where else ''} "
           f"GROUP BY {', '.join(cols)} ORDER BY {', '.join(cols)}")
    return sql, args


def _since_sql(column: str, since: float, ids: list[str], mark: Any) -> tuple[str, list[Any]]:
    if column not in ("key_token", "team_id"):
        raise ValueError(f"spend per {column!r}: key_token or team_id")
    # `day` first: its index narrows the scan to the window's days.
    day = time.strftime("%Y-%m-%d", time.gmtime(since))
    marks = ", ".join(mark(i + 3) for i in range(len(ids)))
    sql = (f"SELECT {column}, SUM(cost) FROM llmp_spend WHERE day >= {mark(1)} AND ts >= {mark(2)} "
           f"AND {column} IN ({marks}) GROUP BY {column}")
    return sql, [day, since, *ids]


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def _report_rows(group_by: str, rows: list[Any]) -> list[dict[str, Any]]:
    cols = GROUPS[group_by]
    out = []
    for row in rows:
        entry = dict(zip(cols, row[: len(cols)]))
        n, prompt, completion, cost = row[len(cols):]
        entry.update(requests=int(n), prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0),
                     spend=round(float(cost or 0.0), 10))
        out.append(entry)
    return out


class SqliteStore:
    """SQLite in WAL mode: several local processes may share the file. Calls run in a worker thread."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._lock = threading.Lock()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable against process crashes, cheap commits
        for statement in SCHEMA:
            db.execute(statement)
        self._db = db

    async def close(self) -> None:
        self._closed = True
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    async def _run(self, fn: Any, *args: Any) -> Any:
        def call() -> Any:
            with self._lock:
                if self._closed:
                    raise StoreError("store is closed")
                try:
                    if self._db is None:
                        # Opened lazily again after a failed start (a replica starting beside
                        # another may find the file locked while that one creates the schema).
                        self._open()
                    return fn(self._db, *args)
                except sqlite3.IntegrityError as exc:
                    raise Conflict(str(exc)) from None
                except sqlite3.Error as exc:
                    raise StoreError(f"sqlite: {exc}") from None

        return await asyncio.to_thread(call)

    async def key_fingerprint(self) -> tuple[int, int]:
        def q(db: sqlite3.Connection) -> tuple[int, int]:
            a = db.execute("SELECT COUNT(*), COALESCE(SUM(rev), 0) FROM llmp_keys").fetchone()
            b = db.execute("SELECT COUNT(*), COALESCE(SUM(rev), 0) FROM llmp_teams").fetchone()
            return a[0] + b[0], a[1] + b[1]

        return await self._run(q)

    async def load_keys(self) -> tuple[list[VirtualKey], list[Team]]:
        def q(db: sqlite3.Connection) -> tuple[list[VirtualKey], list[Team]]:
            keys = [key_from_doc(r[0]) for r in db.execute("SELECT doc FROM llmp_keys WHERE revoked = 0")]
            teams = [team_from_doc(r[0]) for r in db.execute("SELECT doc FROM llmp_teams")]
            return keys, teams

        return await self._run(q)

    async def insert_key(self, key: VirtualKey) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO llmp_keys (token, key_alias, team_id, doc, revoked, rev, created_at) VALUES (?,?,?,?,0,?,?)",
            (key.token, key.key_alias, key.team_id, key_doc(key).decode(), _rev(), key.created_at)))

    async def update_key(self, key: VirtualKey) -> None:
        await self._run(lambda db: db.execute(
            "UPDATE llmp_keys SET key_alias = ?, team_id = ?, doc = ?, rev = ? WHERE token = ?",
            (key.key_alias, key.team_id, key_doc(key).decode(), _rev(), key.token)))

    async def get_key(self, token: str) -> tuple[VirtualKey, bool] | None:
        def q(db: sqlite3.Connection) -> tuple[VirtualKey, bool] | None:
            row = db.execute("SELECT doc, revoked FROM llmp_keys WHERE token = ?", (token,)).fetchone()
            return None if row is None else (key_from_doc(row[0]), bool(row[1]))

        return await self._run(q)

    async def find_tokens_by_alias(self, aliases: list[str]) -> list[str]:
        def q(db: sqlite3.Connection) -> list[str]:
            marks = ",".join("?" * len(aliases))
            return [r[0] for r in db.execute(
                f"SELECT token FROM llmp_keys WHERE revoked = 0 AND key_alias IN ({marks})", aliases)]

        return await self._run(q) if aliases else []

    async def revoke_keys(self, tokens: list[str]) -> list[str]:
        def q(db: sqlite3.Connection) -> list[str]:
            done = []
            for token in tokens:
                cur = db.execute("UPDATE llmp_keys SET revoked = 1, rev = ? WHERE token = ? AND revoked = 0",
                                 (_rev(), token))
                if cur.rowcount:
                    done.append(token)
            return done

        return await self._run(q)

    async def list_keys(self, team_id: str | None) -> list[tuple[VirtualKey, bool]]:
        def q(db: sqlite3.Connection) -> list[tuple[VirtualKey, bool]]:
            if team_id is None:
                rows = db.execute("SELECT doc, revoked FROM llmp_keys ORDER BY created_at")
            else:
                rows = db.execute("SELECT doc, revoked FROM llmp_keys WHERE team_id = ? ORDER BY created_at",
                                  (team_id,))
            return [(key_from_doc(r[0]), bool(r[1])) for r in rows]

        return await self._run(q)

    async def insert_team(self, team: Team) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO llmp_teams (team_id, team_alias, doc, rev, created_at) VALUES (?,?,?,?,?)",
            (team.team_id, team.team_alias, team_doc(team).decode(), _rev(), team.created_at)))

    async def update_team(self, team: Team) -> None:
        await self._run(lambda db: db.execute(
            "UPDATE llmp_teams SET team_alias = ?, doc = ?, rev = ? WHERE team_id = ?",
            (team.team_alias, team_doc(team).decode(), _rev(), team.team_id)))

    async def get_team(self, team_id: str) -> Team | None:
        def q(db: sqlite3.Connection) -> Team | None:
            row = db.execute("SELECT doc FROM llmp_teams WHERE team_id = ?", (team_id,)).fetchone()
            return None if row is None else team_from_doc(row[0])

        return await self._run(q)

    async def list_teams(self) -> list[Team]:
        return await self._run(lambda db: [team_from_doc(r[0]) for r in
                                           db.execute("SELECT doc FROM llmp_teams ORDER BY created_at")])

    async def insert_spend(self, lines: list[bytes]) -> int:
        batch = json_array(lines)

        def q(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                db.execute(SQLITE_INSERT_SPEND, (batch,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return db.total_changes - before

        return await self._run(q)

    async def spend_report(self, group_by: str, start: str | None, end: str | None,
                           key_token: str | None, team_id: str | None) -> list[dict[str, Any]]:
        sql, args = _report_sql(group_by, start, end, key_token, team_id, lambda i: "?")
        return await self._run(lambda db: _report_rows(group_by, db.execute(sql, args).fetchall()))

    async def spend_since(self, column: str, since: float, ids: list[str]) -> dict[str, float]:
        def q(db: sqlite3.Connection) -> dict[str, float]:
            found: dict[str, float] = {}
            for chunk in _chunks(ids):
                sql, args = _since_sql(column, since, chunk, lambda i: "?")
                found.update((k, float(v)) for k, v in db.execute(sql, args))
            return found

        return await self._run(q)


class PostgresStore:
    """PostgreSQL through an asyncpg pool; every call bounded by the store timeout."""

    def __init__(self, dsn: str, timeout: float) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._pool: Any = None

    async def open(self) -> None:
        import asyncpg

        try:
            pool = await asyncio.wait_for(
                asyncpg.create_pool(self.dsn, min_size=1, max_size=4, command_timeout=self.timeout), self.timeout)
            async with pool.acquire() as conn:
                async with conn.transaction():
                    # Replicas starting together must not race on CREATE TABLE IF NOT EXISTS.
                    await conn.execute("SELECT pg_advisory_xact_lock(770501)")
                    for statement in SCHEMA:
                        await conn.execute(statement)
            self._pool = pool
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except TimeoutError:
                pool.terminate()

    async def _ready(self) -> Any:
        # Opened lazily again after a failed start: the store may come up after the gateway.
        if self._pool is None:
            await self.open()
        return self._pool

    async def _q(self, method: str, sql: str, *args: Any) -> Any:
        import asyncpg

        await self._ready()
        try:
            async with asyncio.timeout(self.timeout):
                return await getattr(self._pool, method)(sql, *args)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(str(exc)) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from None

    async def key_fingerprint(self) -> tuple[int, int]:
        row = await self._q("fetchrow", "SELECT (SELECT COUNT(*) FROM llmp_keys) + (SELECT COUNT(*) FROM llmp_teams),"
                            " (SELECT COALESCE(SUM(rev), 0) FROM llmp_keys) + (SELECT COALESCE(SUM(rev), 0) FROM llmp_teams)")
        return int(row[0]), int(row[1])

    async def load_keys(self) -> tuple[list[VirtualKey], list[Team]]:
        keys = await self._q("fetch", "SELECT doc FROM llmp_keys WHERE revoked = 0")
        teams = await self._q("fetch", "SELECT doc FROM llmp_teams")
        return [key_from_doc(r[0]) for r in keys], [team_from_doc(r[0]) for r in teams]

    async def insert_key(self, key: VirtualKey) -> None:
        await self._q("execute", "INSERT INTO llmp_keys (token, key_alias, team_id, doc, revoked, rev, created_at) "
                      "VALUES ($1,$2,$3,$4,0,$5,$6)", key.token, key.key_alias, key.team_id, key_doc(key).decode(),
                      _rev(), key.created_at)

    async def update_key(self, key: VirtualKey) -> None:
        await self._q("execute", "UPDATE llmp_keys SET key_alias = $1, team_id = $2, doc = $3, rev = $4 "
                      "WHERE token = $5", key.key_alias, key.team_id, key_doc(key).decode(), _rev(), key.token)

    async def get_key(self, token: str) -> tuple[VirtualKey, bool] | None:
        row = await self._q("fetchrow", "SELECT doc, revoked FROM llmp_keys WHERE token = $1", token)
        return None if row is None else (key_from_doc(row[0]), bool(row[1]))

    async def find_tokens_by_alias(self, aliases: list[str]) -> list[str]:
        rows = await self._q("fetch", "SELECT token FROM llmp_keys WHERE revoked = 0 AND key_alias = ANY($1)",
                             aliases)
        return [r[0] for r in rows]

    async def revoke_keys(self, tokens: list[str]) -> list[str]:
        done = []
        for token in tokens:
            row = await self._q("fetchrow", "UPDATE llmp_keys SET revoked = 1, rev = $1 WHERE token = $2 "
                                "AND revoked = 0 RETURNING token", _rev(), token)
            if row is not None:
                done.append(token)
        return done

    async def list_keys(self, team_id: str | None) -> list[tuple[VirtualKey, bool]]:
        if team_id is None:
            rows = await self._q("fetch", "SELECT doc, revoked FROM llmp_keys ORDER BY created_at")
        else:
            rows = await self._q("fetch", "SELECT doc, revoked FROM llmp_keys WHERE team_id = $1 "
                                 "ORDER BY created_at", team_id)
        return [(key_from_doc(r[0]), bool(r[1])) for r in rows]

    async def insert_team(self, team: Team) -> None:
        await self._q("execute", "INSERT INTO llmp_teams (team_id, team_alias, doc, rev, created_at) "
                      "VALUES ($1,$2,$3,$4,$5)", team.team_id, team.team_alias, team_doc(team).decode(), _rev(),
                      team.created_at)

    async def update_team(self, team: Team) -> None:
        await self._q("execute", "UPDATE llmp_teams SET team_alias = $1, doc = $2, rev = $3 WHERE team_id = $4",
                      team.team_alias, team_doc(team).decode(), _rev(), team.team_id)

    async def get_team(self, team_id: str) -> Team | None:
        row = await self._q("fetchrow", "SELECT doc FROM llmp_teams WHERE team_id = $1", team_id)
        return None if row is None else team_from_doc(row[0])

    async def list_teams(self) -> list[Team]:
        return [team_from_doc(r[0]) for r in await self._q("fetch", "SELECT doc FROM llmp_teams ORDER BY created_at")]

    async def insert_spend(self, lines: list[bytes]) -> int:
        import asyncpg

        await self._ready()
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._pool.execute(POSTGRES_INSERT_SPEND, json_array(lines))
            return int(status.split()[-1])  # "INSERT 0 <rows>"
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from None

    async def spend_report(self, group_by: str, start: str | None, end: str | None,
                           key_token: str | None, team_id: str | None) -> list[dict[str, Any]]:
        sql, args = _report_sql(group_by, start, end, key_token, team_id, lambda i: f"${i}")
        return _report_rows(group_by, await self._q("fetch", sql, *args))

    async def spend_since(self, column: str, since: float, ids: list[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        for chunk in _chunks(ids):
            sql, args = _since_sql(column, since, chunk, lambda i: f"${i}")
            found.update((r[0], float(r[1])) for r in await self._q("fetch", sql, *args))
        return found


def open_store(url: str, timeout: float) -> LedgerStore:
    """`sqlite:///relative/or//absolute/path` or `postgresql://...` (not yet connected: call `open`)."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///"):], timeout)
    return PostgresStore(url, timeout)

