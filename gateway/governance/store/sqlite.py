"""The ledger store in SQLite (the default; a laptop, or one replica): WAL mode, calls in a worker thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.governance.keys import Team, User, VirtualKey
from gateway.governance.store.batches import BatchRows, SqliteBatchRows
from gateway.governance.store.documents import (
    key_doc,
    key_from_doc,
    new_rev,
    team_doc,
    team_from_doc,
    user_doc,
    user_from_doc,
)
from gateway.governance.store.migrations import (
    CREATE_READERS_TABLE,
    CREATE_VERSION_TABLE,
    CURRENT_VERSION,
    READERS,
    RECORD_READER,
    VERSION_TABLE,
    pending,
    reader_rows,
)
from gateway.governance.store.protocol import BadRows, Conflict, StoreError
from gateway.governance.store.replication import (
    SQLITE,
    TABLES,
    Cursor,
    PeerRecord,
    changed_page,
    changed_sql,
    merge_args,
    merge_order,
    merge_sql,
    stamp,
    sweep_sql,
)
from gateway.governance.store.reports import (
    MEMBER_COLUMNS,
    as_rows,
    chunks,
    grouped_rows,
    grouped_sql,
    rows_sql,
    since_sql,
)
from gateway.governance.store.schema import SQLITE_INSERT_SPEND, json_array

T = TypeVar("T")
NOW = SQLITE.now  # a version stamped by the database's clock when the write runs (replication.stamp)


class SqliteStore:
    """SQLite in WAL mode: several local processes may share the file. Calls run in a worker thread."""

    def __init__(self, path: str, timeout: float, on_event: Callable[..., None] | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self._on_event = on_event
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
        try:
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the schema to the latest version in one transaction (see `migrations`)."""
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait (`timeout`), then find it done
        try:
            db.execute(CREATE_VERSION_TABLE)
            db.execute(CREATE_READERS_TABLE)
            readers = dict(db.execute(READERS).fetchall())
            for m in pending(db.execute(CURRENT_VERSION).fetchone()[0], readers, f"sqlite:///{self.path}"):
                for statement in m.statements:
                    db.execute(statement)
                db.execute(f"INSERT INTO {VERSION_TABLE} (version, description, applied_at) VALUES (?, ?, ?)",
                           (m.version, m.description, time.time()))
            db.executemany(RECORD_READER.format("?", "?"), reader_rows())
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        self._closed = True

        def close() -> None:
            # Under the lock: a statement still running in another worker thread (one whose caller was cancelled,
            # such as a flush cut by its timeout) ends before the connection closes, never rolled back half way.
            with self._lock:
                db, self._db = self._db, None
                if db is not None:
                    db.close()

        await asyncio.to_thread(close)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
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

    def batches(self) -> BatchRows:
        return SqliteBatchRows(self)

    def _bad(self, kind: str, ident: str, reason: str) -> None:
        # Read back as blocked (see documents): one bad row never fails a list, nor loosens a limit.
        if self._on_event is not None:
            self._on_event("store_row_unreadable", kind=kind, id=ident, reason=reason, effect="blocked")

    async def key_fingerprint(self) -> tuple[int, int]:
        def q(db: sqlite3.Connection) -> tuple[int, int]:
            found = [db.execute(f"SELECT COUNT(*), COALESCE(SUM(rev), 0) FROM {table}").fetchone()
                     for table in ("llmp_keys", "llmp_teams", "llmp_users")]
            return sum(f[0] for f in found), sum(f[1] for f in found)

        return await self._run(q)

    async def load_keys(self) -> tuple[list[VirtualKey], list[Team]]:
        def q(db: sqlite3.Connection) -> tuple[list[VirtualKey], list[Team]]:
            keys = [key_from_doc(r[0], self._bad) for r in db.execute("SELECT doc FROM llmp_keys WHERE revoked = 0")]
            teams = [team_from_doc(r[0], self._bad) for r in db.execute("SELECT doc FROM llmp_teams")]
            return keys, teams

        return await self._run(q)

    async def insert_key(self, key: VirtualKey) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO llmp_keys (token, key_alias, team_id, doc, revoked, rev, created_at, updated_at, changed_at, "
            f"stamped_rev) VALUES (?1,?2,?3,?4,0,?5,?6,{NOW},{NOW},?5)",
            (key.token, key.key_alias, key.team_id, key_doc(key).decode(), new_rev(), key.created_at)))

    async def update_key(self, key: VirtualKey) -> None:
        await self._run(lambda db: db.execute(
            f"UPDATE llmp_keys SET key_alias = ?1, team_id = ?2, doc = ?3, rev = ?4, {stamp(SQLITE, 4)} "
            "WHERE token = ?5", (key.key_alias, key.team_id, key_doc(key).decode(), new_rev(), key.token)))

    async def get_key(self, token: str) -> tuple[VirtualKey, bool] | None:
        def q(db: sqlite3.Connection) -> tuple[VirtualKey, bool] | None:
            row = db.execute("SELECT doc, revoked FROM llmp_keys WHERE token = ?", (token,)).fetchone()
            return None if row is None else (key_from_doc(row[0], self._bad), bool(row[1]))

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
                cur = db.execute(f"UPDATE llmp_keys SET revoked = 1, rev = ?1, {stamp(SQLITE, 1)} "
                                 "WHERE token = ?2 AND revoked = 0", (new_rev(), token))
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
            return [(key_from_doc(r[0], self._bad), bool(r[1])) for r in rows]

        return await self._run(q)

    async def insert_team(self, team: Team) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO llmp_teams (team_id, team_alias, doc, rev, created_at, updated_at, changed_at, stamped_rev) "
            f"VALUES (?1,?2,?3,?4,?5,{NOW},{NOW},?4)",
            (team.team_id, team.team_alias, team_doc(team).decode(), new_rev(), team.created_at)))

    async def update_team(self, team: Team) -> None:
        await self._run(lambda db: db.execute(
            f"UPDATE llmp_teams SET team_alias = ?1, doc = ?2, rev = ?3, {stamp(SQLITE, 3)} WHERE team_id = ?4",
            (team.team_alias, team_doc(team).decode(), new_rev(), team.team_id)))

    async def get_team(self, team_id: str) -> Team | None:
        def q(db: sqlite3.Connection) -> Team | None:
            row = db.execute("SELECT doc FROM llmp_teams WHERE team_id = ?", (team_id,)).fetchone()
            return None if row is None else team_from_doc(row[0], self._bad)

        return await self._run(q)

    async def list_teams(self) -> list[Team]:
        return await self._run(lambda db: [team_from_doc(r[0], self._bad) for r in
                                           db.execute("SELECT doc FROM llmp_teams ORDER BY created_at")])

    async def insert_spend(self, lines: list[bytes]) -> int:
        batch = json_array(lines)

        def q(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                db.execute(SQLITE_INSERT_SPEND, (batch,))
                db.execute("COMMIT")
            except BaseException as exc:
                db.execute("ROLLBACK")
                if isinstance(exc, (sqlite3.DataError, sqlite3.IntegrityError)) or "malformed JSON" in str(exc):
                    raise BadRows(f"sqlite: {exc}") from None  # the rows, not the file: split and set aside
                raise
            return db.total_changes - before

        return await self._run(q)

    async def spend_since(self, column: str, since: float, ids: list[str]) -> dict[str, float]:
        def q(db: sqlite3.Connection) -> dict[str, float]:
            found: dict[str, float] = {}
            for chunk in chunks(ids):
                sql, args = since_sql(column, since, chunk, lambda i: "?")
                found.update((k, float(v)) for k, v in db.execute(sql, args))
            return found

        return await self._run(q)

    # ---- users and team members -----------------------------------------------------------------

    async def insert_user(self, user: User) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO llmp_users (user_id, user_email, doc, rev, created_at, updated_at, changed_at, stamped_rev) "
            f"VALUES (?1,?2,?3,?4,?5,{NOW},{NOW},?4)",
            (user.user_id, user.user_email, user_doc(user).decode(), new_rev(), user.created_at)))

    async def update_user(self, user: User) -> None:
        await self._run(lambda db: db.execute(
            f"UPDATE llmp_users SET user_email = ?1, doc = ?2, rev = ?3, {stamp(SQLITE, 3)} WHERE user_id = ?4",
            (user.user_email, user_doc(user).decode(), new_rev(), user.user_id)))

    async def get_user(self, user_id: str) -> User | None:
        def q(db: sqlite3.Connection) -> User | None:
            row = db.execute("SELECT doc FROM llmp_users WHERE user_id = ?", (user_id,)).fetchone()
            return None if row is None else user_from_doc(row[0], self._bad)

        return await self._run(q)

    async def find_user_by_email(self, email: str) -> User | None:
        def q(db: sqlite3.Connection) -> User | None:
            row = db.execute("SELECT doc FROM llmp_users WHERE user_email = ? ORDER BY created_at", (email,)).fetchone()
            return None if row is None else user_from_doc(row[0], self._bad)

        return await self._run(q)

    async def list_users(self) -> list[User]:
        return await self._run(lambda db: [user_from_doc(r[0], self._bad) for r in
                                           db.execute("SELECT doc FROM llmp_users ORDER BY created_at")])

    async def delete_users(self, user_ids: list[str]) -> list[str]:
        def q(db: sqlite3.Connection) -> list[str]:
            db.execute("BEGIN IMMEDIATE")
            try:
                done = [u for u in user_ids
                        if db.execute("DELETE FROM llmp_users WHERE user_id = ?", (u,)).rowcount]
                for u in done:
                    db.execute("DELETE FROM llmp_team_members WHERE user_id = ?", (u,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return done

        return await self._run(q)

    async def put_member(self, team_id: str, user_id: str, role: str, user_email: str | None,
                         max_budget_in_team: float | None, now: float) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO llmp_team_members (team_id, user_id, role, user_email, max_budget_in_team, created_at) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT (team_id, user_id) DO UPDATE SET role = excluded.role, "
            "user_email = excluded.user_email, max_budget_in_team = excluded.max_budget_in_team",
            (team_id, user_id, role, user_email, max_budget_in_team, now)))

    async def remove_member(self, team_id: str, user_id: str) -> bool:
        return bool(await self._run(lambda db: db.execute(
            "DELETE FROM llmp_team_members WHERE team_id = ? AND user_id = ?", (team_id, user_id)).rowcount))

    async def members(self, team_id: str | None = None, user_id: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(MEMBER_COLUMNS)} FROM llmp_team_members WHERE "
        sql += "team_id = ?" if team_id is not None else "user_id = ?"
        return await self._run(lambda db: [dict(zip(MEMBER_COLUMNS, r)) for r in db.execute(
            sql + " ORDER BY created_at, user_id", (team_id if team_id is not None else user_id,))])

    async def spend_grouped(self, columns: tuple[str, ...], filters: dict[str, str]) -> list[dict[str, Any]]:
        sql, args = grouped_sql(columns, filters, lambda i: "?")
        return await self._run(lambda db: grouped_rows(columns, db.execute(sql, args).fetchall()))

    async def spend_rows(self, filters: dict[str, str], limit: int) -> list[dict[str, Any]]:
        sql, args = rows_sql(filters, limit, lambda i: "?")
        return await self._run(lambda db: as_rows(db.execute(sql, args).fetchall()))

    # ---- records shared with peers in other regions (gateway.governance.peers) ---------------------

    async def changed_since(self, after: Cursor, limit: int) -> tuple[list[PeerRecord], bool, Cursor]:
        def q(db: sqlite3.Connection) -> tuple[list[PeerRecord], bool, Cursor]:
            for kind in TABLES:
                db.execute(sweep_sql(kind, SQLITE))
            found = {kind: [PeerRecord(kind, r[0], r[1], bool(r[2]), float(r[3]), float(r[4]))
                            for r in db.execute(changed_sql(kind, SQLITE), (*after, limit))] for kind in TABLES}
            return changed_page(found, limit, after)

        return await self._run(q)

    async def merge_records(self, records: list[PeerRecord]) -> int:
        def q(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                for record in merge_order(records):
                    sql, columns = merge_sql(record.kind, SQLITE)
                    db.execute(sql, merge_args(record, columns, new_rev()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return db.total_changes - before

        return await self._run(q) if records else 0
