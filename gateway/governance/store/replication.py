"""Key, team and user records as peers in other regions exchange them: their shape, and the SQL that lists what
changed since a cursor and merges a peer's versions (the newest wins; a revoked key stays revoked).

Every write stamps `updated_at` (the record's version: its time where it was made) and `changed_at` (when this
database took that version: the cursor peers pull from). A merge writes a peer's version only where it is newer
than the local one, compared as (updated_at, revoked, doc): a total order, so every region ends with the same
version whatever order records arrive in, and a revocation wins a tie. The SQL is valid on SQLite (UPSERT since
3.24, row values since 3.15: https://www.sqlite.org/lang_upsert.html, https://www.sqlite.org/rowvalue.html) and
PostgreSQL (https://www.postgresql.org/docs/current/sql-insert.html#SQL-ON-CONFLICT).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Kind = Literal["key", "team", "user"]
PAGE = 1000  # records per answer to a peer


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """One key (by its hash, never the key), team or user as its document, and its version."""

    kind: Kind
    id: str  # token, team_id or user_id
    doc: str  # the JSON document the store keeps (gateway.governance.store.documents)
    revoked: bool
    updated_at: float
    changed_at: float = 0.0


@dataclass(frozen=True)
class _Table:
    name: str
    id: str
    label: str  # the second queried column: key_alias, team_alias, user_email
    revocable: bool = False


TABLES: dict[Kind, _Table] = {
    "key": _Table("llmp_keys", "token", "key_alias", revocable=True),
    "team": _Table("llmp_teams", "team_id", "team_alias"),
    "user": _Table("llmp_users", "user_id", "user_email"),
}


def changed_sql(kind: Kind, mark: Callable[[int], str]) -> str:
    """Records of one kind changed at or after `mark(1)`, oldest first, at most `mark(2)` of them."""
    t = TABLES[kind]
    revoked = "revoked" if t.revocable else "0"
    return (f"SELECT {t.id}, doc, {revoked}, COALESCE(updated_at, 0), changed_at FROM {t.name} "
            f"WHERE changed_at >= {mark(1)} ORDER BY changed_at LIMIT {mark(2)}")


def merge_sql(kind: Kind, mark: Callable[[int], str]) -> tuple[str, tuple[str, ...]]:
    """An upsert of one peer record, written only where newer; and the argument names it takes, in order."""
    t = TABLES[kind]
    columns = (t.id, t.label, *(("team_id",) if kind == "key" else ()), "doc",
               *(("revoked",) if t.revocable else ()), "rev", "created_at", "updated_at", "changed_at")
    values = ", ".join(mark(i + 1) for i in range(len(columns)))
    sets = [f"{c} = excluded.{c}" for c in columns if c not in (t.id, "created_at", "revoked")]
    order = "COALESCE({t}.updated_at, 0), {t}.doc"
    if t.revocable:
        # Revocation is for ever: a newer edit made elsewhere before it heard of the revocation keeps it revoked.
        sets.append(f"revoked = CASE WHEN {t.name}.revoked = 1 THEN 1 ELSE excluded.revoked END")
        order = "COALESCE({t}.updated_at, 0), {t}.revoked, {t}.doc"
    mine = "(" + order.format(t=t.name) + ")"
    theirs = "(" + order.format(t="excluded").replace("COALESCE(excluded.updated_at, 0)", "excluded.updated_at") + ")"
    sql = (f"INSERT INTO {t.name} ({', '.join(columns)}) VALUES ({values}) ON CONFLICT ({t.id}) DO UPDATE SET "
           f"{', '.join(sets)} WHERE {mine} < {theirs}")
    return sql, columns


def changed_page(found: dict[Kind, list[PeerRecord]], limit: int) -> tuple[list[PeerRecord], bool]:
    """The oldest `limit` changes of all kinds (each kind fetched up to `limit`); whether more are waiting."""
    every = sorted((r for rows in found.values() for r in rows), key=lambda r: r.changed_at)
    more = len(every) > limit or any(len(rows) >= limit for rows in found.values())
    return every[:limit], more


def merge_args(record: PeerRecord, columns: tuple[str, ...], rev: int, changed_at: float) -> list[Any]:
    """The values of `merge_sql`'s columns for a record (checked by gateway.governance.peer_wire beforehand)."""
    doc: dict[str, Any] = orjson.loads(record.doc)
    given = {"revoked": int(record.revoked), "rev": rev, "updated_at": record.updated_at, "changed_at": changed_at,
             "doc": record.doc, TABLES[record.kind].id: record.id}

    def value(column: str) -> Any:
        if column in given:
            return given[column]
        found = doc.get(column)
        if column == "created_at":
            return float(found) if isinstance(found, (int, float)) and not isinstance(found, bool) else 0.0
        return found if isinstance(found, str) else None

    return [value(c) for c in columns]


def record_times(count: int) -> list[float]:
    """`changed_at` of records merged together: distinct (a microsecond apart, within a double's precision for
    current times), so a peer paging through them by cursor never meets a page of one value."""
    import time

    now = time.time()
    return [now + i * 1e-6 for i in range(count)]
