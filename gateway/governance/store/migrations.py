"""The ledger store's schema, as numbered migrations applied at start on SQLite and PostgreSQL alike.

Each migration is a list of statements valid on both databases. At start, inside one transaction
(PostgreSQL: under an advisory lock, so replicas starting together take turns), the store creates
`llmp_schema_version` if missing, reads the highest version recorded there, runs every later migration
in order and records each. Each migration also says the oldest schema version whose code can still read and
write a database it has been applied to (`readable_by`), recorded in `llmp_schema_readers`: a database at a
version this code does not know (a newer gateway migrated it, as in a rolling update or a rollback) is used as
it is when every newer migration there is readable by this code's version, and refused with `SchemaTooNew`
otherwise (nothing is read or written there; the gateway then reports itself not ready).

Version 1 is the schema as it was before migrations existed; its statements say `IF NOT EXISTS`, so a
database made then is adopted as version 1 without a change. To change the schema, append a migration:
never edit one that has shipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.governance.store.protocol import StoreError

VERSION_TABLE = "llmp_schema_version"
CREATE_VERSION_TABLE = (f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, "
                        "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
CURRENT_VERSION = f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}"
READERS_TABLE = "llmp_schema_readers"
CREATE_READERS_TABLE = (f"CREATE TABLE IF NOT EXISTS {READERS_TABLE} (version INTEGER PRIMARY KEY, "
                        "readable_by INTEGER NOT NULL)")
READERS = f"SELECT version, readable_by FROM {READERS_TABLE}"
# ON CONFLICT ... DO NOTHING: SQLite >= 3.24 and PostgreSQL >= 9.5 alike; `{}` is the driver's placeholder style.
RECORD_READER = (f"INSERT INTO {READERS_TABLE} (version, readable_by) VALUES ({{}}, {{}}) "
                 "ON CONFLICT (version) DO NOTHING")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    readable_by: int = 0  # the oldest schema version whose code reads and writes the result; 0: this one only

    def reader(self) -> int:
        return self.readable_by or self.version


class SchemaTooNew(StoreError):
    """The database was migrated by a newer gateway: this one does not know its schema, and refuses it."""


_V1 = (
    """CREATE TABLE IF NOT EXISTS llmp_teams (
        team_id TEXT PRIMARY KEY, team_alias TEXT, doc TEXT NOT NULL, rev BIGINT NOT NULL,
        created_at DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS llmp_keys (
        token TEXT PRIMARY KEY, key_alias TEXT, team_id TEXT, doc TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,
        rev BIGINT NOT NULL, created_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS llmp_keys_alias ON llmp_keys (key_alias)",
    """CREATE TABLE IF NOT EXISTS llmp_spend (
        id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, day TEXT NOT NULL, request_id TEXT, key_token TEXT,
        key_alias TEXT, team_id TEXT, model TEXT, deployment TEXT, region TEXT, status INTEGER,
        prompt_tokens BIGINT, completion_tokens BIGINT, cost DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS llmp_spend_day ON llmp_spend (day)",
)


# Users (LiteLLM's /user/* API) as documents like keys and teams; team membership as rows, so a team's
# document (which every replica's key cache reads) keeps its shape; each spend row names the key's user.
# `ALTER TABLE ... ADD COLUMN` with no default is valid on both databases and rewrites no rows.
_V2 = (
    """CREATE TABLE llmp_users (
        user_id TEXT PRIMARY KEY, user_email TEXT, doc TEXT NOT NULL, rev BIGINT NOT NULL,
        created_at DOUBLE PRECISION)""",
    "CREATE INDEX llmp_users_email ON llmp_users (user_email)",
    """CREATE TABLE llmp_team_members (
        team_id TEXT NOT NULL, user_id TEXT NOT NULL, role TEXT NOT NULL, user_email TEXT,
        max_budget_in_team DOUBLE PRECISION, created_at DOUBLE PRECISION, PRIMARY KEY (team_id, user_id))""",
    "CREATE INDEX llmp_team_members_user ON llmp_team_members (user_id)",
    "ALTER TABLE llmp_spend ADD COLUMN user_id TEXT",
)


# Keys, teams and users shared with the stack's other regions (gateway.governance.peers): `updated_at` is the
# record's version (the newest wins wherever it arrives), `changed_at` when this database last took a version of it
# (the cursor a peer pulls from, so a record learned late from a third region still reaches every other).
_V3 = tuple(
    statement for table in ("llmp_keys", "llmp_teams", "llmp_users") for statement in (
        f"ALTER TABLE {table} ADD COLUMN updated_at DOUBLE PRECISION",
        f"ALTER TABLE {table} ADD COLUMN changed_at DOUBLE PRECISION",
        f"CREATE INDEX {table}_changed ON {table} (changed_at)",
        # Records made before versions existed: version their creation, and offer them to peers' first pull.
        f"UPDATE {table} SET updated_at = COALESCE(created_at, 0), changed_at = 0",
    )
)


# Writes by older code reach peers (gateway.governance.store.replication): `stamped_rev` is the revision this code
# last stamped a version for; a row whose `rev` differs was written by code that does not stamp (a version 1-3
# gateway in a rolling update or a rollback: `SET revoked = 1, rev = ?`), and the sweep before each listing stamps
# it. Chosen over a trigger: one UPDATE valid on both databases, where a trigger needs PL/pgSQL on PostgreSQL and
# another dialect on SQLite. Rows present now were stamped by migration 3 or by version 3 code: recorded as stamped.
# Spend per key, team and user since a window start (gateway.governance.budget_sync, every round and for every
# peer): by the scope first, so a lifetime budget's query reads that scope's rows, not every day of the ledger.
_V4 = tuple(
    statement for table in ("llmp_keys", "llmp_teams", "llmp_users") for statement in (
        f"ALTER TABLE {table} ADD COLUMN stamped_rev BIGINT",
        f"UPDATE {table} SET stamped_rev = rev",
        # Partial (SQLite >= 3.8, PostgreSQL): the sweep reads only the rows it stamps, not the table, each pull.
        f"CREATE INDEX {table}_unstamped ON {table} (rev) WHERE stamped_rev IS NULL OR stamped_rev <> rev",
    )
) + tuple(f"CREATE INDEX llmp_spend_{column}_ts ON llmp_spend ({column}, ts)"
          for column in ("key_token", "team_id", "user_id"))


# The response cache (gateway/cache/): a spend row says whether the cache answered the call (1), covered it and did
# not (0) or did not cover it (NULL), and what a hit did not pay, as LiteLLM's LiteLLM_SpendLogs has `cache_hit`
# (schema.prisma@v1.106.2). Nullable columns: older code's inserts leave them NULL.
_V5 = (
    "ALTER TABLE llmp_spend ADD COLUMN cache_hit INTEGER",
    "ALTER TABLE llmp_spend ADD COLUMN saved DOUBLE PRECISION",
)


# OpenAI's Files and Batch API (gateway/batch/): file metadata (contents are in the file store), batches with the
# lease a replica holds while it runs one, and one row per finished line, unique per (batch, custom_id): the line's
# result and its spend row are written in one transaction, so a re-run after a crash finds it done.
_V6 = (
    """CREATE TABLE llmp_files (
        id TEXT PRIMARY KEY, key_token TEXT NOT NULL, team_id TEXT, purpose TEXT NOT NULL, filename TEXT NOT NULL,
        bytes BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE llmp_batches (
        id TEXT PRIMARY KEY, key_token TEXT NOT NULL, team_id TEXT, status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, lease_owner TEXT, lease_until DOUBLE PRECISION, doc TEXT NOT NULL)""",
    "CREATE INDEX llmp_batches_status ON llmp_batches (status)",
    """CREATE TABLE llmp_batch_lines (
        batch_id TEXT NOT NULL, custom_id TEXT NOT NULL, line_no INTEGER NOT NULL, ok INTEGER NOT NULL,
        result TEXT NOT NULL, PRIMARY KEY (batch_id, custom_id))""",
)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "keys, teams and spend rows", _V1),
    # Only new tables and a nullable column: version 1 code reads and writes such a database unchanged.
    Migration(2, "users, team members, spend rows by user", _V2, readable_by=1),
    # Nullable columns and indexes only: older code reads and writes it (its writes carry no version, so peers do
    # not hear of them until a newer gateway writes the record again).
    Migration(3, "record versions, for peers in other regions", _V3, readable_by=1),
    # A nullable column and indexes: older code reads and writes it (its writes are stamped by the sweep).
    Migration(4, "writes by older gateways stamped for peers; spend by scope and time", _V4, readable_by=1),
    # Two nullable columns: older code reads and writes it (its rows leave them NULL).
    Migration(5, "spend rows say whether the response cache answered, and what it saved", _V5, readable_by=1),
    # New tables only: older code reads and writes the rest unchanged (it serves no /v1/batches).
    Migration(6, "files, batches and batch lines", _V6, readable_by=1),
)


def latest() -> int:
    return MIGRATIONS[-1].version


def pending(current: int, readers: dict[int, int], where: str) -> list[Migration]:
    """The migrations a database at `current` needs, in order: none when it is ahead of this code but readable by
    it (`readers`: each applied version's `readable_by`), `SchemaTooNew` when it is ahead and not readable."""
    if current > latest():
        # A newer version with no reader row was recorded by a gateway that predates the rows: refuse it.
        needs = max((readers.get(v, v) for v in range(latest() + 1, current + 1)), default=0)
        if needs > latest():
            raise SchemaTooNew(f"{where}: the ledger store's schema is at version {current}, newer than this gateway "
                               f"knows (version {latest()}), and readable only by a gateway that knows version "
                               f"{needs}; run a gateway at least that new")
        return []
    return [m for m in MIGRATIONS if m.version > current]


def reader_rows() -> list[tuple[int, int]]:
    """(version, readable_by) for every migration this code knows, recorded at each start (idempotent)."""
    return [(m.version, m.reader()) for m in MIGRATIONS]
