"""Spend queries shared by both stores: reports grouped by key, team, model or day, and spend since a time."""

from __future__ import annotations

import time
from typing import Any

GROUPS = {"key": ("key_token", "key_alias"), "team": ("team_id",), "model": ("model",), "day": ("day",)}


def report_sql(group_by: str, start: str | None, end: str | None, key_token: str | None,
                team_id: str | None, mark: Any) -> tuple[str, list[Any]]:
    cols = GROUPS[group_by]
    where, args = [], []
    for clause, value in (("day >= {}", start), ("day <= {}", end), ("key_token = {}", key_token),
                          ("team_id = {}", team_id)):
        if value is not None:
            args.append(value)
            where.append(clause.format(mark(len(args))))
    sql = (f"SELECT {', '.join(cols)}, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost) "
           f"FROM llmp_spend {'WHERE ' + ' AND '.join(where) if where else ''} "
           f"GROUP BY {', '.join(cols)} ORDER BY {', '.join(cols)}")
    return sql, args


def since_sql(column: str, since: float, ids: list[str], mark: Any) -> tuple[str, list[Any]]:
    if column not in ("key_token", "team_id"):
        raise ValueError(f"spend per {column!r}: key_token or team_id")
    # `day` first: its index narrows the scan to the window's days.
    day = time.strftime("%Y-%m-%d", time.gmtime(since))
    marks = ", ".join(mark(i + 3) for i in range(len(ids)))
    sql = (f"SELECT {column}, SUM(cost) FROM llmp_spend WHERE day >= {mark(1)} AND ts >= {mark(2)} "
           f"AND {column} IN ({marks}) GROUP BY {column}")
    return sql, [day, since, *ids]


def chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def report_rows(group_by: str, rows: list[Any]) -> list[dict[str, Any]]:
    cols = GROUPS[group_by]
    out = []
    for row in rows:
        entry = dict(zip(cols, row[: len(cols)]))
        n, prompt, completion, cost = row[len(cols):]
        entry.update(requests=int(n), prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0),
                     spend=round(float(cost or 0.0), 10))
        out.append(entry)
    return out
