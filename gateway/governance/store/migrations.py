"""The ledger store's schema, as numbered migrations applied at start on SQLite and PostgreSQL alike.

Each migration is a list of statements valid on both databases. At start, inside one transaction
(PostgreSQL: under an advisory lock, so replicas starting together take turns), the store creates
`llmp_schema_version` if missing, reads the highest version recorded there, runs every later migration
in order and records each. A database at a version this code does not know (a newer gateway migrated it)
is refused with `SchemaTooNew`: nothing is read or written there.

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


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "keys, teams and spend rows", _V1),
    Migration(2, "users, team members, spend rows by user", _V2),
)


def latest() -> int:
    return MIGRATIONS[-1].version


def pending(current: int, where: str) -> list[Migration]:
    """The migrations a database at `current` needs, in order; `SchemaTooNew` when it is ahead of this code."""
    if current > latest():
        raise SchemaTooNew(f"{where}: the ledger store's schema is at version {current}, newer than this gateway "
                           f"knows (version {latest()}); run a gateway at least as new as the one that migrated it")
    return [m for m in MIGRATIONS if m.version > current]
