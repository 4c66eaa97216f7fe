"""The ledger store's tables (the same DDL on SQLite and PostgreSQL) and the one-statement batch insert of spend
rows."""

from __future__ import annotations

# Spend columns and their SQL types. Rows travel as the spool's JSON lines: a batch is one JSON array, inserted
# by one statement that unpacks it inside the database (a single call, no per-row work in the gateway process).
SPEND_TYPES = {"id": "text", "ts": "double precision", "day": "text", "request_id": "text", "key_token": "text",
               "key_alias": "text", "team_id": "text", "model": "text", "deployment": "text", "region": "text",
               "status": "integer", "prompt_tokens": "bigint", "completion_tokens": "bigint",
               "cost": "double precision"}
SPEND_COLUMNS = tuple(SPEND_TYPES)

SCHEMA = [
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
]


SQLITE_INSERT_SPEND = (f"INSERT OR IGNORE INTO llmp_spend ({', '.join(SPEND_COLUMNS)}) SELECT "
                       + ", ".join(f"json_extract(value, '$.{c}')" for c in SPEND_COLUMNS) + " FROM json_each(?)")
POSTGRES_INSERT_SPEND = (f"INSERT INTO llmp_spend ({', '.join(SPEND_COLUMNS)}) SELECT {', '.join(SPEND_COLUMNS)} "
                         "FROM jsonb_to_recordset($1::jsonb) AS r("
                         + ", ".join(f"{c} {t}" for c, t in SPEND_TYPES.items()) + ") ON CONFLICT (id) DO NOTHING")


def json_array(lines: list[bytes]) -> str:
    return (b"[" + b",".join(lines) + b"]").decode()
