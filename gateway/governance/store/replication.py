"""Key, team and user records as peers in other regions exchange them: their shape, and the SQL that lists what
changed since a cursor and merges a peer's versions (the newest wins; a revoked key stays revoked).

Every write stamps `updated_at` (the record's version: its time where it was made, and always later than the version
it replaces, so a record merged from a region whose clock runs ahead is still superseded by the next local edit) and
`changed_at` (when this database took that version: the cursor peers pull from), both from the database's own clock
inside the statement, so a write that waited for a connection is not stamped earlier than it commits. A merge
writes a peer's version only where it is newer than the local one, compared as (updated_at, revoked, doc): a total
order (the document compared byte-wise: SQLite's BINARY, PostgreSQL's "C" collation), so every region ends with the
same version whatever order records arrive in, and a revocation wins a tie; a revocation is taken even when the
local version is newer (revoked only, keeping that version), since revocation is for ever.

Peers page by keyset, (changed_at, kind, id) after the last one taken, so any number of records of one instant
(migration 3 stamped every existing row 0) is paged through. Older gateway code (a rolling update or a rollback)
writes without stamping: each write of this code records the revision it stamped (`stamped_rev`), and a sweep before
every listing stamps rows whose revision differs (gateway.governance.store.migrations, version 4).

The SQL is valid on SQLite (UPSERT since 3.24, row values since 3.15, numbered parameters `?NNN`:
https://www.sqlite.org/lang_upsert.html, https://www.sqlite.org/rowvalue.html,
https://www.sqlite.org/lang_expr.html#varparam) and PostgreSQL
(https://www.postgresql.org/docs/current/sql-insert.html#SQL-ON-CONFLICT,
https://www.postgresql.org/docs/current/functions-datetime.html#FUNCTIONS-DATETIME-CURRENT: `clock_timestamp()`
changes during a statement, `now()` would be the transaction's start).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Kind = Literal["key", "team", "user"]
PAGE = 1000  # records per answer to a peer
PAGE_BYTES = 4 * 2**20  # and at most about this much document text per answer (always at least one record)
Cursor = tuple[float, str, str]  # (changed_at, kind, id) of the last record taken
START: Cursor = (0.0, "", "")


@dataclass(frozen=True)
class Dialect:
    """What differs between the two databases in this module's SQL."""

    mark: Callable[[int], str]  # the i-th parameter (numbered: one value may be used twice)
    now: str  # the database's clock, Unix seconds, read when the statement runs
    greatest: str  # the larger of two values
    collate: str  # byte-wise text order, appended to a text expression


SQLITE = Dialect(lambda i: f"?{i}", "((julianday('now') - 2440587.5) * 86400.0)", "MAX", "")
POSTGRES = Dialect(lambda i: f"${i}", "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)", "GREATEST",
                   ' COLLATE "C"')


def stamp(d: Dialect, rev: int) -> str:
    """SET clauses of a local write: a version newer than both the clock and the version it replaces (merged from a
    faster clock, it would otherwise win over this write everywhere), taken now; `rev`: the parameter number of the
    write's revision, recorded as stamped (the sweep leaves it alone)."""
    return (f"updated_at = {d.greatest}({d.now}, COALESCE(updated_at, 0) + 0.000001), changed_at = {d.now}, "
            f"stamped_rev = {d.mark(rev)}")


def sweep_sql(kind: Kind, d: Dialect) -> str:
    """Stamp the rows older gateway code wrote (it changes `rev` but not the version): peers then hear of them."""
    t = TABLES[kind]
    return (f"UPDATE {t.name} SET updated_at = {d.greatest}({d.now}, COALESCE(updated_at, 0) + 0.000001), "
            f"changed_at = {d.now}, stamped_rev = rev WHERE stamped_rev IS NULL OR stamped_rev <> rev")


def encode_cursor(cursor: Cursor) -> str:
    return orjson.dumps(list(cursor)).decode()


def decode_cursor(text: str) -> Cursor:
    """A cursor as `encode_cursor` wrote it; ValueError for anything else."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("not a cursor") from None
    if not isinstance(value, list) or len(value) != 3 or isinstance(value[0], bool) \
            or not isinstance(value[0], (int, float)) or not all(isinstance(v, str) for v in value[1:]):
        raise ValueError("not a cursor")
    return float(value[0]), value[1], value[2]


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


def changed_sql(kind: Kind, d: Dialect) -> str:
    """Records of one kind after the cursor (changed_at, kind, id) = params 1..3, in cursor order, at most param 4.
    The first condition is implied by the second: it lets the `changed_at` index narrow the scan."""
    t = TABLES[kind]
    revoked = "revoked" if t.revocable else "0"
    ident = f"{t.id}{d.collate}"
    return (f"SELECT {t.id}, doc, {revoked}, COALESCE(updated_at, 0), changed_at FROM {t.name} "
            f"WHERE changed_at >= {d.mark(1)} AND (changed_at, CAST('{kind}' AS TEXT){d.collate}, {ident}) > "
            f"({d.mark(1)}, CAST({d.mark(2)} AS TEXT){d.collate}, {d.mark(3)}) ORDER BY changed_at, {ident} "
            f"LIMIT {d.mark(4)}")


def merge_sql(kind: Kind, d: Dialect) -> tuple[str, tuple[str, ...]]:
    """An upsert of one peer record, written where newer (or revoking a live key); and the argument names it takes,
    in order."""
    t = TABLES[kind]
    columns = (t.id, t.label, *(("team_id",) if kind == "key" else ()), "doc",
               *(("revoked",) if t.revocable else ()), "rev", "created_at", "updated_at")
    values = ", ".join(d.mark(i + 1) for i in range(len(columns)))
    order = "COALESCE({t}.updated_at, 0), {t}.doc" + d.collate
    if t.revocable:
        order = "COALESCE({t}.updated_at, 0), {t}.revoked, {t}.doc" + d.collate
    mine = "(" + order.format(t=t.name) + ")"
    theirs = "(" + order.format(t="excluded").replace("COALESCE(excluded.updated_at, 0)", "excluded.updated_at") + ")"
    newer = f"{mine} < {theirs}"
    # A version older than the local one changes nothing but (for a revocation) `revoked`: the newer local version
    # is kept, revoked, and offered to peers again, so every region ends with that version revoked.
    sets = [f"{c} = CASE WHEN {newer} THEN excluded.{c} ELSE {t.name}.{c} END"
            for c in columns if c not in (t.id, "created_at", "revoked", "rev")]
    sets += ["rev = excluded.rev", "stamped_rev = excluded.rev", f"changed_at = {d.now}"]
    where = newer
    if t.revocable:
        # Revocation is for ever: a newer edit made elsewhere before it heard of the revocation keeps it revoked.
        sets.append(f"revoked = CASE WHEN {t.name}.revoked = 1 THEN 1 ELSE excluded.revoked END")
        where = f"{newer} OR (excluded.revoked = 1 AND {t.name}.revoked = 0)"
    sql = (f"INSERT INTO {t.name} ({', '.join(columns)}, stamped_rev, changed_at) VALUES ({values}, "
           f"{d.mark(columns.index('rev') + 1)}, {d.now}) ON CONFLICT ({t.id}) DO UPDATE SET {', '.join(sets)} "
           f"WHERE {where}")
    return sql, columns


def changed_page(found: dict[Kind, list[PeerRecord]], limit: int, after: Cursor) -> tuple[list[PeerRecord], bool,
                                                                                            Cursor]:
    """The first `limit` changes of all kinds in cursor order (each kind fetched up to `limit`), cut after about
    PAGE_BYTES of documents; whether more are waiting; the cursor after the last one (`after` when none)."""
    every = sorted((r for rows in found.values() for r in rows), key=lambda r: (r.changed_at, r.kind, r.id))
    more = len(every) > limit or any(len(rows) >= limit for rows in found.values())
    page: list[PeerRecord] = []
    size = 0
    for record in every[:limit]:
        size += len(record.doc.encode())
        if page and size > PAGE_BYTES:
            more = True
            break
        page.append(record)
    cursor = (page[-1].changed_at, page[-1].kind, page[-1].id) if page else after
    return page, more, cursor


def merge_order(records: list[PeerRecord]) -> list[PeerRecord]:
    """Records in the order every merge takes its row locks ((kind, id)): two merges at once (peers pulled
    together) then never wait on each other in a cycle (PostgreSQL would abort one as a deadlock)."""
    return sorted(records, key=lambda r: (r.kind, r.id))


def merge_args(record: PeerRecord, columns: tuple[str, ...], rev: int) -> list[Any]:
    """The values of `merge_sql`'s columns for a record (checked by gateway.governance.peer_wire beforehand)."""
    doc: dict[str, Any] = orjson.loads(record.doc)
    given = {"revoked": int(record.revoked), "rev": rev, "updated_at": record.updated_at,
             "doc": record.doc, TABLES[record.kind].id: record.id}

    def value(column: str) -> Any:
        if column in given:
            return given[column]
        found = doc.get(column)
        if column == "created_at":
            return float(found) if isinstance(found, (int, float)) and not isinstance(found, bool) else 0.0
        return found if isinstance(found, str) else None

    return [value(c) for c in columns]
