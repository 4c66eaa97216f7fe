"""The Batch API's rows in the ledger store (llmp_files, llmp_batches, llmp_batch_lines), on SQLite and PostgreSQL.

One SQL text per operation, written with `?` and numbered for asyncpg (`$1`...). The guarantees the runner
(gateway/batch/runner.py) builds on: a line's result and its spend row go in together or not at all, keyed unique
by (batch_id, custom_id), so a line is answered and charged once however often it is run; a batch is run by the
one replica holding its unexpired lease (a conditional UPDATE: of two replicas claiming at once, one wins); a line
is written only by the lease's holder (a fence: a replica paused past its lease, then resumed, writes nothing, so
nothing lands after the new holder finalized the batch); and leases are timed by the store's clock, never by a
replica's own (two replicas' clocks apart by more than a lease would otherwise take each other's batches).
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any, Protocol

from gateway.governance.store.schema import POSTGRES_INSERT_SPEND, SQLITE_INSERT_SPEND, json_array

Owner = tuple[str, str | None] | None  # (key token, team id) whose rows a caller sees; None: all (the master key)
FILE_COLUMNS = ("id", "key_token", "team_id", "purpose", "filename", "bytes", "created_at")
BATCH_COLUMNS = ("id", "key_token", "team_id", "status", "created_at", "lease_owner", "lease_until", "doc")
_OWNED = "(key_token = ? OR (team_id IS NOT NULL AND team_id = ?))"
_AFTER = "(created_at {op} (SELECT created_at FROM {t} WHERE id = ?) OR (created_at = (SELECT created_at FROM {t} " \
         "WHERE id = ?) AND id {op} ?))"

INSERT_FILE = f"INSERT INTO llmp_files ({', '.join(FILE_COLUMNS)}) VALUES (?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING"
GET_FILE = f"SELECT {', '.join(FILE_COLUMNS)} FROM llmp_files WHERE id = ?"
DELETE_FILE = "DELETE FROM llmp_files WHERE id = ?"
INSERT_BATCH = f"INSERT INTO llmp_batches ({', '.join(BATCH_COLUMNS)}) VALUES (?,?,?,?,?,NULL,NULL,?)"
GET_BATCH = f"SELECT {', '.join(BATCH_COLUMNS)} FROM llmp_batches WHERE id = ?"
LIVE = ("validating", "in_progress", "finalizing", "cancelling")
CLAIMABLE = ("SELECT id FROM llmp_batches WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling') "
             "AND (lease_owner IS NULL OR lease_until < ?) ORDER BY created_at LIMIT ?")
CLAIM = ("UPDATE llmp_batches SET lease_owner = ?, lease_until = ? WHERE id = ? AND "
         "(lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)")
RELEASE = "UPDATE llmp_batches SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?"
DONE_LINES = "SELECT custom_id FROM llmp_batch_lines WHERE batch_id = ?"
# The fence, read in the line's transaction: on PostgreSQL `FOR SHARE` holds the batch row until the commit, so a
# claim (an UPDATE of it) waits for the line to be in, or the line's SELECT sees the claim and writes nothing
# (https://www.postgresql.org/docs/current/explicit-locking.html#LOCKING-ROWS). SQLite's BEGIN IMMEDIATE already
# serializes every writer.
HOLDER = "SELECT 1 FROM llmp_batches WHERE id = ? AND lease_owner = ?"
SQLITE_CLOCK = "SELECT (julianday('now') - 2440587.5) * 86400.0"  # Unix seconds (https://sqlite.org/lang_datefunc.html)
POSTGRES_CLOCK = "SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8"
INSERT_LINE = ("INSERT INTO llmp_batch_lines (batch_id, custom_id, line_no, ok, result) VALUES (?,?,?,?,?) "
               "ON CONFLICT (batch_id, custom_id) DO NOTHING")
COUNTS = "SELECT ok, COUNT(*) FROM llmp_batch_lines WHERE batch_id = ? GROUP BY ok"
STATUS_COUNTS = "SELECT status, COUNT(*) FROM llmp_batches GROUP BY status"
# A page of results in file order after a line number: output files are assembled a page at a time.
RESULTS = ("SELECT line_no, result FROM llmp_batch_lines WHERE batch_id = ? AND ok = ? AND line_no > ? "
           "ORDER BY line_no LIMIT ?")


class LeaseLost(Exception):
    """The batch's lease is no longer this replica's: another took it over; what this one ran is not written."""


def numbered(sql: str) -> str:
    """`?` placeholders as asyncpg's `$1, $2, ...`."""
    n = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(n)}", sql)


def _set_batch(statuses: tuple[str, ...]) -> str:
    return (f"UPDATE llmp_batches SET status = ?, doc = ? WHERE id = ? AND status IN "
            f"({', '.join(repr(s) for s in statuses)})")


def _list(table: str, columns: tuple[str, ...], owner: Owner, after: str | None, limit: int,
          extra: tuple[str, Any] | None = None, newest_first: bool = True) -> tuple[str, list[Any]]:
    where, args = [], []
    if owner is not None:
        where.append(_OWNED)
        args += [owner[0], owner[1]]
    if after is not None:
        where.append(_AFTER.format(t=table, op="<" if newest_first else ">"))
        args += [after, after, after]
    if extra is not None:
        where.append(extra[0])
        args.append(extra[1])
    sql = f"SELECT {', '.join(columns)} FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
    order = "DESC" if newest_first else "ASC"
    return sql + f" ORDER BY created_at {order}, id {order} LIMIT ?", [*args, limit]


class BatchRows(Protocol):
    async def insert_file(self, row: dict[str, Any]) -> None: ...
    async def get_file(self, file_id: str) -> dict[str, Any] | None: ...
    async def list_files(self, owner: Owner, purpose: str | None, after: str | None, limit: int,
                         newest_first: bool = True) -> list[dict[str, Any]]: ...
    async def delete_file(self, file_id: str) -> bool: ...
    async def insert_batch(self, row: dict[str, Any]) -> None: ...
    async def get_batch(self, batch_id: str) -> dict[str, Any] | None: ...
    async def list_batches(self, owner: Owner, after: str | None, limit: int) -> list[dict[str, Any]]: ...
    async def set_batch(self, batch_id: str, status: str, doc: str, only_from: tuple[str, ...]) -> bool:
        """Move a batch to `status` (its object `doc`) if it is in one of `only_from`; whether it was."""
        ...
    async def clock(self) -> float:
        """The store's time (Unix seconds): the one clock every replica times leases by."""
        ...
    async def claimable(self, now: float, limit: int) -> list[str]: ...
    async def claim(self, batch_id: str, owner: str, now: float, until: float) -> bool:
        """Take (or renew) the lease if it is free, expired or ours; whether we hold it now."""
        ...
    async def release(self, batch_id: str, owner: str) -> None: ...
    async def done_lines(self, batch_id: str) -> set[str]: ...
    async def finish_line(self, batch_id: str, custom_id: str, line_no: int, ok: bool, result: str,
                          spend: bytes | None, owner: str) -> bool:
        """The line's result and its spend row (if any) in one transaction if `owner` holds the batch's lease (else
        LeaseLost); False if the line was already done."""
        ...
    async def line_counts(self, batch_id: str) -> tuple[int, int]: ...
    async def results(self, batch_id: str, ok: bool, after: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        """(line number, result) of the lines answered (ok) or failed, in file order, after line `after`."""
        ...
    async def status_counts(self) -> dict[str, int]: ...


class _BatchQueries:
    """The queries both databases run alike; a subclass gives `_all` (rows), `_count` (rows changed), its clock's
    SQL and `finish_line` (one transaction, written each database's way)."""

    CLOCK = ""

    async def _all(self, sql: str, *args: Any) -> list[Any]:
        raise NotImplementedError

    async def _count(self, sql: str, *args: Any) -> int:
        raise NotImplementedError

    async def clock(self) -> float:
        return float((await self._all(self.CLOCK))[0][0])

    async def insert_file(self, row: dict[str, Any]) -> None:
        await self._count(INSERT_FILE, *(row[c] for c in FILE_COLUMNS))

    async def get_file(self, file_id: str) -> dict[str, Any] | None:
        rows = await self._all(GET_FILE, file_id)
        return dict(zip(FILE_COLUMNS, rows[0])) if rows else None

    async def list_files(self, owner: Owner, purpose: str | None, after: str | None, limit: int,
                         newest_first: bool = True) -> list[dict[str, Any]]:
        sql, args = _list("llmp_files", FILE_COLUMNS, owner, after, limit,
                          ("purpose = ?", purpose) if purpose else None, newest_first)
        return [dict(zip(FILE_COLUMNS, r)) for r in await self._all(sql, *args)]

    async def delete_file(self, file_id: str) -> bool:
        return bool(await self._count(DELETE_FILE, file_id))

    async def insert_batch(self, row: dict[str, Any]) -> None:
        await self._count(INSERT_BATCH, *(row[c] for c in BATCH_COLUMNS if c not in ("lease_owner", "lease_until")))

    async def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        rows = await self._all(GET_BATCH, batch_id)
        return dict(zip(BATCH_COLUMNS, rows[0])) if rows else None

    async def list_batches(self, owner: Owner, after: str | None, limit: int) -> list[dict[str, Any]]:
        sql, args = _list("llmp_batches", BATCH_COLUMNS, owner, after, limit)
        return [dict(zip(BATCH_COLUMNS, r)) for r in await self._all(sql, *args)]

    async def set_batch(self, batch_id: str, status: str, doc: str, only_from: tuple[str, ...]) -> bool:
        return bool(await self._count(_set_batch(only_from), status, doc, batch_id))

    async def claimable(self, now: float, limit: int) -> list[str]:
        return [r[0] for r in await self._all(CLAIMABLE, now, limit)]

    async def claim(self, batch_id: str, owner: str, now: float, until: float) -> bool:
        # Under READ COMMITTED a second UPDATE of the row waits for the first, then re-checks this WHERE against the
        # row the first committed (https://www.postgresql.org/docs/current/transaction-iso.html#XACT-READ-COMMITTED):
        # the lease just taken is neither free, ours nor expired, so the second claim updates nothing.
        return bool(await self._count(CLAIM, owner, until, batch_id, owner, now))

    async def release(self, batch_id: str, owner: str) -> None:
        await self._count(RELEASE, batch_id, owner)

    async def done_lines(self, batch_id: str) -> set[str]:
        return {r[0] for r in await self._all(DONE_LINES, batch_id)}

    async def line_counts(self, batch_id: str) -> tuple[int, int]:
        found = dict(await self._all(COUNTS, batch_id))
        return int(found.get(1, 0)), int(found.get(0, 0))

    async def results(self, batch_id: str, ok: bool, after: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        return [(int(r[0]), r[1]) for r in await self._all(RESULTS, batch_id, int(ok), after, limit)]

    async def status_counts(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in await self._all(STATUS_COUNTS)}


class SqliteBatchRows(_BatchQueries):
    CLOCK = SQLITE_CLOCK

    def __init__(self, store: Any) -> None:
        self._run = store._run  # the SqliteStore's worker-thread call, errors mapped to StoreError

    async def _all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return list(await self._run(lambda db: db.execute(sql, args).fetchall()))

    async def _count(self, sql: str, *args: Any) -> int:
        return int(await self._run(lambda db: db.execute(sql, args).rowcount))

    async def finish_line(self, batch_id: str, custom_id: str, line_no: int, ok: bool, result: str,
                          spend: bytes | None, owner: str) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute(HOLDER, (batch_id, owner)).fetchone() is None:
                    raise LeaseLost(batch_id)
                new = db.execute(INSERT_LINE, (batch_id, custom_id, line_no, int(ok), result)).rowcount > 0
                if new and spend is not None:
                    db.execute(SQLITE_INSERT_SPEND, (json_array([spend]),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return new

        return bool(await self._run(q))


class PostgresBatchRows(_BatchQueries):
    CLOCK = POSTGRES_CLOCK

    def __init__(self, store: Any) -> None:
        self._store = store  # the PostgresStore: its bounded calls (`_q`) and, for one transaction, its pool

    async def _all(self, sql: str, *args: Any) -> list[Any]:
        return list(await self._store._q("fetch", numbered(sql), *args))

    async def _count(self, sql: str, *args: Any) -> int:
        status = await self._store._q("execute", numbered(sql), *args)
        return int(status.split()[-1])  # "UPDATE <rows>", "INSERT 0 <rows>", "DELETE <rows>"

    async def finish_line(self, batch_id: str, custom_id: str, line_no: int, ok: bool, result: str,
                          spend: bytes | None, owner: str) -> bool:
        async def q() -> bool:
            async with self._store._pool.acquire() as conn, conn.transaction():
                if await conn.fetchval(numbered(HOLDER) + " FOR SHARE", batch_id, owner) is None:
                    raise LeaseLost(batch_id)
                status = await conn.execute(numbered(INSERT_LINE), batch_id, custom_id, line_no, int(ok), result)
                new = int(status.split()[-1]) > 0
                if new and spend is not None:
                    await conn.execute(POSTGRES_INSERT_SPEND, json_array([spend]))
                return new

        return bool(await self._store.transaction(q))
