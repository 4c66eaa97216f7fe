"""The spend table's columns and their types, and the one-statement batch insert of spend rows (per database).

The tables themselves are made by the numbered migrations (`gateway.governance.store.migrations`).
"""

from __future__ import annotations

# Spend columns and their SQL types. Rows travel as the spool's JSON lines: a batch is one JSON array, inserted
# by one statement that unpacks it inside the database (a single call, no per-row work in the gateway process).
SPEND_TYPES = {"id": "text", "ts": "double precision", "day": "text", "request_id": "text", "key_token": "text",
               "key_alias": "text", "team_id": "text", "model": "text", "deployment": "text", "region": "text",
               "status": "integer", "prompt_tokens": "bigint", "completion_tokens": "bigint",
               "cost": "double precision", "user_id": "text",
               "cache_hit": "integer", "saved": "double precision"}  # migration 5: the response cache
SPEND_COLUMNS = tuple(SPEND_TYPES)

SQLITE_INSERT_SPEND = (f"INSERT OR IGNORE INTO llmp_spend ({', '.join(SPEND_COLUMNS)}) SELECT "
                       + ", ".join(f"json_extract(value, '$.{c}')" for c in SPEND_COLUMNS) + " FROM json_each(?)")
POSTGRES_INSERT_SPEND = (f"INSERT INTO llmp_spend ({', '.join(SPEND_COLUMNS)}) SELECT {', '.join(SPEND_COLUMNS)} "
                         "FROM jsonb_to_recordset($1::jsonb) AS r("
                         + ", ".join(f"{c} {t}" for c, t in SPEND_TYPES.items()) + ") ON CONFLICT (id) DO NOTHING")


def json_array(lines: list[bytes]) -> str:
    return (b"[" + b",".join(lines) + b"]").decode()
