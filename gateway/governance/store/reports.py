"""Spend queries shared by both stores: sums grouped by any recorded columns, single rows for LiteLLM's
/spend/logs, and spend since a time."""

from __future__ import annotations

import time
from typing import Any


def since_sql(column: str, since: float, ids: list[str], mark: Any) -> tuple[str, list[Any]]:
    if column not in ("key_token", "team_id", "user_id"):
        raise ValueError(f"spend per {column!r}: key_token, team_id or user_id")
    # `day` first: its index narrows the scan to the window's days.
    day = time.strftime("%Y-%m-%d", time.gmtime(since))
    marks = ", ".join(mark(i + 3) for i in range(len(ids)))
    sql = (f"SELECT {column}, SUM(cost) FROM llmp_spend WHERE day >= {mark(1)} AND ts >= {mark(2)} "
           f"AND {column} IN ({marks}) GROUP BY {column}")
    return sql, [day, since, *ids]


def chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


# Columns a spend query may group or filter by (never taken from a request as text: checked against these).
ROW_COLUMNS = ("id", "ts", "day", "request_id", "key_token", "key_alias", "team_id", "user_id", "model",
               "deployment", "region", "status", "prompt_tokens", "completion_tokens", "cost", "cache_hit", "saved")
MEMBER_COLUMNS = ("team_id", "user_id", "role", "user_email", "max_budget_in_team", "created_at")
FILTERS = {"start": "day >= {}", "end": "day <= {}", "key_token": "key_token = {}", "team_id": "team_id = {}",
           "user_id": "user_id = {}", "request_id": "request_id = {}"}


def _where(filters: dict[str, str], mark: Any) -> tuple[str, list[Any]]:
    where, args = [], []
    for name, value in filters.items():
        args.append(value)
        where.append(FILTERS[name].format(mark(len(args))))
    return ("WHERE " + " AND ".join(where)) if where else "", args


def grouped_sql(columns: tuple[str, ...], filters: dict[str, str], mark: Any) -> tuple[str, list[Any]]:
    """Spend summed per distinct value of `columns`: each row is the columns, then requests, prompt and
    completion tokens and cost."""
    if not columns or not set(columns) <= set(ROW_COLUMNS):
        raise ValueError(f"spend grouped by {columns!r}")
    where, args = _where(filters, mark)
    cols = ", ".join(columns)
    return (f"SELECT {cols}, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost) FROM llmp_spend "
            f"{where} GROUP BY {cols} ORDER BY {cols}"), args


def grouped_rows(columns: tuple[str, ...], rows: list[Any]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        entry = dict(zip(columns, row[: len(columns)]))
        n, prompt, completion, cost = row[len(columns):]
        entry.update(requests=int(n), prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0),
                     spend=round(float(cost or 0.0), 10))
        out.append(entry)
    return out


def rows_sql(filters: dict[str, str], limit: int, mark: Any) -> tuple[str, list[Any]]:
    """Single spend rows, newest first, at most `limit`."""
    where, args = _where(filters, mark)
    args.append(limit)
    return f"SELECT {', '.join(ROW_COLUMNS)} FROM llmp_spend {where} ORDER BY ts DESC LIMIT {mark(len(args))}", args


def as_rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [dict(zip(ROW_COLUMNS, row)) for row in rows]
