"""The ledger store in PostgreSQL (clusters; LiteLLM's database): an asyncpg pool, every call bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.governance.keys import Team, User, VirtualKey
from gateway.governance.store.batches import BatchRows, PostgresBatchRows
from gateway.governance.store.documents import (
    key_doc,
    key_from_doc,
    new_rev,
    team_doc,
    team_from_doc,
    user_doc,
    user_from_doc,
)
from gateway.governance.store.managed_password import ManagedPassword
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
    POSTGRES,
    TABLES,
    Cursor,
    Kind,
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
from gateway.governance.store.schema import POSTGRES_INSERT_SPEND, json_array

NOW = POSTGRES.now  # a version stamped by the database's clock when the statement runs (replication.stamp)
T = TypeVar("T")


class PostgresStore:
    """PostgreSQL through an asyncpg pool; every call bounded by the store timeout."""

    def __init__(self, dsn: str, timeout: float, on_event: Callable[..., None] | None = None,
                 password: ManagedPassword | None = None) -> None:
        """`password`: read from a secret (RDS's own) instead of the DSN, and again when it is refused."""
        self.dsn = dsn
        self.timeout = timeout
        self._on_event = on_event
        self._password = password
        self._pool: Any = None

    async def _reread_on_refusal(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, and once more with the secret read again if PostgreSQL refused the password: it was rotated
        since it was read (asyncpg asks for it at each new connection of the pool)."""
        import asyncpg

        try:
            return await call()
        except asyncpg.InvalidPasswordError:
            if self._password is None:
                raise
            self._password.forget()
            return await call()

    async def open(self) -> None:
        import asyncpg

        try:
            pool = await self._reread_on_refusal(lambda: asyncio.wait_for(asyncpg.create_pool(
                self.dsn, min_size=1, max_size=4, command_timeout=self.timeout, password=self._password),
                self.timeout))
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from None
        try:
            async with pool.acquire() as conn, conn.transaction():
                # Replicas starting together take turns: one migrates, the others find it done.
                await conn.execute("SELECT pg_advisory_xact_lock(770501)")
                await self._migrate(conn)
        except BaseException as exc:
            pool.terminate()  # nothing was handed out yet: no call to wait for
            if isinstance(exc, (OSError, TimeoutError, asyncpg.PostgresError)):
                raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from None
            raise
        self._pool = pool

    async def _migrate(self, conn: Any) -> None:
        """Bring the schema to the latest version, inside the caller's transaction (see `migrations`)."""
        await conn.execute(CREATE_VERSION_TABLE)
        await conn.execute(CREATE_READERS_TABLE)
        readers = {r[0]: r[1] for r in await conn.fetch(READERS)}
        for m in pending(await conn.fetchval(CURRENT_VERSION), readers, "postgresql"):
            for statement in m.statements:
                await conn.execute(statement)
            await conn.execute(f"INSERT INTO {VERSION_TABLE} (version, description, applied_at) VALUES ($1, $2, $3)",
                               m.version, m.description, time.time())
        await conn.executemany(RECORD_READER.format("$1", "$2"), reader_rows())

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
                return await self._reread_on_refusal(lambda: getattr(self._pool, method)(sql, *args))
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(str(exc)) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from None

    def batches(self) -> BatchRows:
        return PostgresBatchRows(self)

    async def transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work()`, which runs one transaction on the pool: bounded, its failures a StoreError."""
        import asyncpg

        await self._ready()
        try:
            async with asyncio.timeout(self.timeout):
                return await work()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from None

    def _bad(self, kind: str, ident: str, reason: str) -> None:
        # Read back as blocked (see documents): one bad row never fails a list, nor loosens a limit.
        if self._on_event is not None:
            self._on_event("store_row_unreadable", kind=kind, id=ident, reason=reason, effect="blocked")

    async def key_fingerprint(self) -> tuple[int, int]:
        tables = ("llmp_keys", "llmp_teams", "llmp_users")
        row = await self._q("fetchrow", "SELECT " + " + ".join(f"(SELECT COUNT(*) FROM {t})" for t in tables) + ", "
                            + " + ".join(f"(SELECT COALESCE(SUM(rev), 0) FROM {t})" for t in tables))
        return int(row[0]), int(row[1])

    async def load_keys(self) -> tuple[list[VirtualKey], list[Team]]:
        keys = await self._q("fetch", "SELECT doc FROM llmp_keys WHERE revoked = 0")
        teams = await self._q("fetch", "SELECT doc FROM llmp_teams")
        return [key_from_doc(r[0], self._bad) for r in keys], [team_from_doc(r[0], self._bad) for r in teams]

    async def insert_key(self, key: VirtualKey) -> None:
        await self._q("execute", "INSERT INTO llmp_keys (token, key_alias, team_id, doc, revoked, rev, created_at, "
                      f"updated_at, changed_at, stamped_rev) VALUES ($1,$2,$3,$4,0,$5,$6,{NOW},{NOW},$5)", key.token,
                      key.key_alias, key.team_id, key_doc(key).decode(), new_rev(), key.created_at)

    async def update_key(self, key: VirtualKey) -> None:
        await self._q("execute", "UPDATE llmp_keys SET key_alias = $1, team_id = $2, doc = $3, rev = $4, "
                      f"{stamp(POSTGRES, 4)} WHERE token = $5", key.key_alias, key.team_id,
                      key_doc(key).decode(), new_rev(), key.token)

    async def get_key(self, token: str) -> tuple[VirtualKey, bool] | None:
        row = await self._q("fetchrow", "SELECT doc, revoked FROM llmp_keys WHERE token = $1", token)
        return None if row is None else (key_from_doc(row[0], self._bad), bool(row[1]))

    async def find_tokens_by_alias(self, aliases: list[str]) -> list[str]:
        rows = await self._q("fetch", "SELECT token FROM llmp_keys WHERE revoked = 0 AND key_alias = ANY($1)",
                             aliases)
        return [r[0] for r in rows]

    async def revoke_keys(self, tokens: list[str]) -> list[str]:
        done = []
        for token in tokens:
            row = await self._q("fetchrow", f"UPDATE llmp_keys SET revoked = 1, rev = $1, {stamp(POSTGRES, 1)} "
                                "WHERE token = $2 AND revoked = 0 RETURNING token", new_rev(), token)
            if row is not None:
                done.append(token)
        return done

    async def list_keys(self, team_id: str | None) -> list[tuple[VirtualKey, bool]]:
        if team_id is None:
            rows = await self._q("fetch", "SELECT doc, revoked FROM llmp_keys ORDER BY created_at")
        else:
            rows = await self._q("fetch", "SELECT doc, revoked FROM llmp_keys WHERE team_id = $1 "
                                 "ORDER BY created_at", team_id)
        return [(key_from_doc(r[0], self._bad), bool(r[1])) for r in rows]

    async def insert_team(self, team: Team) -> None:
        await self._q("execute", "INSERT INTO llmp_teams (team_id, team_alias, doc, rev, created_at, updated_at, "
                      f"changed_at, stamped_rev) VALUES ($1,$2,$3,$4,$5,{NOW},{NOW},$4)", team.team_id,
                      team.team_alias, team_doc(team).decode(), new_rev(), team.created_at)

    async def update_team(self, team: Team) -> None:
        await self._q("execute", f"UPDATE llmp_teams SET team_alias = $1, doc = $2, rev = $3, {stamp(POSTGRES, 3)} "
                      "WHERE team_id = $4", team.team_alias, team_doc(team).decode(), new_rev(), team.team_id)

    async def get_team(self, team_id: str) -> Team | None:
        row = await self._q("fetchrow", "SELECT doc FROM llmp_teams WHERE team_id = $1", team_id)
        return None if row is None else team_from_doc(row[0], self._bad)

    async def list_teams(self) -> list[Team]:
        rows = await self._q("fetch", "SELECT doc FROM llmp_teams ORDER BY created_at")
        return [team_from_doc(r[0], self._bad) for r in rows]

    async def insert_spend(self, lines: list[bytes]) -> int:
        import asyncpg

        await self._ready()
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._reread_on_refusal(
                    lambda: self._pool.execute(POSTGRES_INSERT_SPEND, json_array(lines)))
            return int(status.split()[-1])  # "INSERT 0 <rows>"
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            # SQLSTATE classes 22 (e.g. 22003 "bigint out of range", 22P02 bad JSON) and 23 (e.g. a null id):
            # the rows, not the connection. https://www.postgresql.org/docs/current/errcodes-appendix.html
            raise BadRows(f"postgresql: {type(exc).__name__}: {exc}") from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from None

    async def spend_since(self, column: str, since: float, ids: list[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        for chunk in chunks(ids):
            sql, args = since_sql(column, since, chunk, lambda i: f"${i}")
            found.update((r[0], float(r[1])) for r in await self._q("fetch", sql, *args))
        return found

    # ---- users and team members -----------------------------------------------------------------

    async def insert_user(self, user: User) -> None:
        await self._q("execute", "INSERT INTO llmp_users (user_id, user_email, doc, rev, created_at, updated_at, "
                      f"changed_at, stamped_rev) VALUES ($1,$2,$3,$4,$5,{NOW},{NOW},$4)", user.user_id,
                      user.user_email, user_doc(user).decode(), new_rev(), user.created_at)

    async def update_user(self, user: User) -> None:
        await self._q("execute", f"UPDATE llmp_users SET user_email = $1, doc = $2, rev = $3, {stamp(POSTGRES, 3)} "
                      "WHERE user_id = $4", user.user_email, user_doc(user).decode(), new_rev(), user.user_id)

    async def get_user(self, user_id: str) -> User | None:
        row = await self._q("fetchrow", "SELECT doc FROM llmp_users WHERE user_id = $1", user_id)
        return None if row is None else user_from_doc(row[0], self._bad)

    async def find_user_by_email(self, email: str) -> User | None:
        row = await self._q("fetchrow", "SELECT doc FROM llmp_users WHERE user_email = $1 ORDER BY created_at "
                            "LIMIT 1", email)
        return None if row is None else user_from_doc(row[0], self._bad)

    async def list_users(self) -> list[User]:
        rows = await self._q("fetch", "SELECT doc FROM llmp_users ORDER BY created_at")
        return [user_from_doc(r[0], self._bad) for r in rows]

    async def delete_users(self, user_ids: list[str]) -> list[str]:
        # One statement each, members first: a user is never left deleted with memberships pointing at it.
        await self._q("execute", "DELETE FROM llmp_team_members WHERE user_id = ANY($1)", user_ids)
        rows = await self._q("fetch", "DELETE FROM llmp_users WHERE user_id = ANY($1) RETURNING user_id", user_ids)
        done = {r[0] for r in rows}
        return [u for u in user_ids if u in done]

    async def put_member(self, team_id: str, user_id: str, role: str, user_email: str | None,
                         max_budget_in_team: float | None, now: float) -> None:
        await self._q("execute", "INSERT INTO llmp_team_members (team_id, user_id, role, user_email, "
                      "max_budget_in_team, created_at) VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (team_id, user_id) "
                      "DO UPDATE SET role = excluded.role, user_email = excluded.user_email, "
                      "max_budget_in_team = excluded.max_budget_in_team",
                      team_id, user_id, role, user_email, max_budget_in_team, now)

    async def remove_member(self, team_id: str, user_id: str) -> bool:
        status = await self._q("execute", "DELETE FROM llmp_team_members WHERE team_id = $1 AND user_id = $2",
                               team_id, user_id)
        return bool(int(status.split()[-1]))  # "DELETE <rows>"

    async def members(self, team_id: str | None = None, user_id: str | None = None) -> list[dict[str, Any]]:
        column = "team_id" if team_id is not None else "user_id"
        rows = await self._q("fetch", f"SELECT {', '.join(MEMBER_COLUMNS)} FROM llmp_team_members "
                             f"WHERE {column} = $1 ORDER BY created_at, user_id",
                             team_id if team_id is not None else user_id)
        return [dict(zip(MEMBER_COLUMNS, r)) for r in rows]

    async def spend_grouped(self, columns: tuple[str, ...], filters: dict[str, str]) -> list[dict[str, Any]]:
        sql, args = grouped_sql(columns, filters, lambda i: f"${i}")
        return grouped_rows(columns, await self._q("fetch", sql, *args))

    async def spend_rows(self, filters: dict[str, str], limit: int) -> list[dict[str, Any]]:
        sql, args = rows_sql(filters, limit, lambda i: f"${i}")
        return as_rows(await self._q("fetch", sql, *args))

    # ---- records shared with peers in other regions (gateway.governance.peers) ---------------------

    async def changed_since(self, after: Cursor, limit: int) -> tuple[list[PeerRecord], bool, Cursor]:
        found: dict[Kind, list[PeerRecord]] = {}
        for kind in TABLES:
            await self._q("execute", sweep_sql(kind, POSTGRES))
        for kind in TABLES:
            rows = await self._q("fetch", changed_sql(kind, POSTGRES), *after, limit)
            found[kind] = [PeerRecord(kind, r[0], r[1], bool(r[2]), float(r[3]), float(r[4])) for r in rows]
        return changed_page(found, limit, after)

    async def merge_records(self, records: list[PeerRecord]) -> int:
        import asyncpg

        if not records:
            return 0
        await self._ready()
        merged = 0
        try:
            async with asyncio.timeout(self.timeout), self._pool.acquire() as conn, conn.transaction():
                for record in merge_order(records):
                    sql, columns = merge_sql(record.kind, POSTGRES)
                    status = await conn.execute(sql, *merge_args(record, columns, new_rev()))
                    # "INSERT 0 <count>", the rows inserted or updated: 0 where the local version was as new
                    # (https://www.postgresql.org/docs/current/sql-insert.html, "Outputs").
                    merged += int(status.split()[-1])
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from None
        return merged
