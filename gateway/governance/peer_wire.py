"""What gateways of one stack send each other (records changed since a cursor, spend totals of budget windows):
the answers' shape, built on one side and checked on the other, since a peer is a network party like any other.

Changes: `{"records": [{"kind", "id", "doc", "revoked", "updated_at", "changed_at"}, ...], "more": bool}`; a key
travels as its SHA-256 token and its stored document, never as the key. Spend: `{"now": t, "spend": [[column,
id, budget_seconds, window_start, usd], ...]}`, one row per key, team or user with a budget and spend in its
current window, from the answering region's own ledger only (so totals from several peers add up, never twice).
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from gateway.governance.bounds import MAX_BUDGET, MAX_DURATION_SECONDS, MAX_TEXT, MAX_TIMESTAMP
from gateway.governance.store.documents import key_from_doc, team_from_doc, user_from_doc
from gateway.governance.store.replication import PAGE, TABLES, PeerRecord

MAX_ANSWER_BYTES = 32 * 2**20  # one answer, read whole before parsing: far over PAGE records of bounded documents
MAX_DOC_BYTES = 256 * 1024  # one record's document (metadata is at most 16 KiB, lists at most 1000 names)
MAX_SPEND_ROWS = 500_000  # spend totals in one answer
CLOCK_SKEW = 300.0  # a version stamped further ahead of this clock is refused (it would win over every later edit)
COLUMNS = ("key_token", "team_id", "user_id")
TOKEN = re.compile(r"^[0-9a-f]{64}$")

SpendKey = tuple[str, str, int, float]  # column, id, budget seconds, window start


class PeerAnswerError(ValueError):
    """A peer's answer that is not what the protocol allows; the message says where and what, never a value."""


def changes_answer(records: list[PeerRecord], more: bool) -> bytes:
    return orjson.dumps({"records": [{"kind": r.kind, "id": r.id, "doc": r.doc, "revoked": r.revoked,
                                      "updated_at": r.updated_at, "changed_at": r.changed_at} for r in records],
                         "more": more})


def spend_answer(now: float, rows: list[tuple[str, str, int, float, float]]) -> bytes:
    # A window starts at a whole multiple of its whole seconds (or 0): sent as an integer, matched exactly on the
    # other side, whatever a float's text form would be.
    return orjson.dumps({"now": now, "spend": [[c, i, s, int(since), usd] for c, i, s, since, usd in rows if usd > 0]})


def _time(value: Any, where: str, high: float = MAX_TIMESTAMP) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= high:
        raise PeerAnswerError(f"{where}: not a time in range")
    return float(value)


def _object(body: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    if len(body) > MAX_ANSWER_BYTES:
        raise PeerAnswerError(f"answer over {MAX_ANSWER_BYTES} bytes")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PeerAnswerError("answer is not JSON") from None
    if not isinstance(doc, dict) or any(f not in doc for f in fields):
        raise PeerAnswerError(f"answer is not an object with {', '.join(fields)}")
    return doc


def parse_changes(body: bytes, now: float) -> tuple[list[PeerRecord], bool]:
    """The records of a changes answer, each checked (a document the admin API would refuse fails the answer)."""
    doc = _object(body, ("records", "more"))
    items, more = doc["records"], doc["more"]
    if not isinstance(items, list) or len(items) > PAGE or not isinstance(more, bool):
        raise PeerAnswerError(f"records: not a list of at most {PAGE}, or more: not true/false")
    return [_record(item, f"records[{i}]", now) for i, item in enumerate(items)], more


def _record(item: Any, where: str, now: float) -> PeerRecord:
    if not isinstance(item, dict):
        raise PeerAnswerError(f"{where}: not an object")
    kind, ident, text, revoked = item.get("kind"), item.get("id"), item.get("doc"), item.get("revoked")
    if kind not in TABLES:
        raise PeerAnswerError(f"{where}.kind: not key, team or user")
    if not isinstance(ident, str) or not 0 < len(ident) <= MAX_TEXT or "\x00" in ident \
            or (kind == "key" and not TOKEN.match(ident)):
        raise PeerAnswerError(f"{where}.id: not a {'SHA-256 token' if kind == 'key' else 'name'}")
    if not isinstance(text, str) or len(text) > MAX_DOC_BYTES or "\x00" in text:
        raise PeerAnswerError(f"{where}.doc: not a document of at most {MAX_DOC_BYTES} bytes")
    if not isinstance(revoked, bool) or (revoked and kind != "key"):
        raise PeerAnswerError(f"{where}.revoked: not true/false (true for keys only)")
    updated_at = _time(item.get("updated_at"), f"{where}.updated_at", now + CLOCK_SKEW)
    changed_at = _time(item.get("changed_at"), f"{where}.changed_at")
    problems: list[str] = []

    def bad(_kind: str, _ident: str, reason: str) -> None:
        problems.append(reason)

    parse = {"key": key_from_doc, "team": team_from_doc, "user": user_from_doc}[kind]
    parsed = parse(text, bad)
    own = {"key": "token", "team": "team_id", "user": "user_id"}[kind]
    if problems:
        raise PeerAnswerError(f"{where}.doc: {problems[0][:200]}")
    if getattr(parsed, own) != ident:
        raise PeerAnswerError(f"{where}.doc: its {own} is not the record's id")
    return PeerRecord(kind, ident, text, revoked, updated_at, changed_at)


def parse_spend(body: bytes) -> dict[SpendKey, float]:
    """The totals of a spend answer, per (column, id, budget seconds, window start)."""
    doc = _object(body, ("now", "spend"))
    rows = doc["spend"]
    if not isinstance(rows, list) or len(rows) > MAX_SPEND_ROWS:
        raise PeerAnswerError(f"spend: not a list of at most {MAX_SPEND_ROWS} rows")
    totals: dict[SpendKey, float] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 5:
            raise PeerAnswerError(f"spend[{i}]: not [column, id, seconds, window start, usd]")
        column, ident, seconds, since, usd = row
        if column not in COLUMNS or not isinstance(ident, str) or not 0 < len(ident) <= MAX_TEXT:
            raise PeerAnswerError(f"spend[{i}]: not a key_token, team_id or user_id and its id")
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds <= MAX_DURATION_SECONDS:
            raise PeerAnswerError(f"spend[{i}]: budget seconds out of range")
        if isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= MAX_TIMESTAMP:
            raise PeerAnswerError(f"spend[{i}]: window start is not whole seconds in range")
        if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not math.isfinite(usd) \
                or not 0 <= usd <= MAX_BUDGET:
            raise PeerAnswerError(f"spend[{i}]: not an amount in [0, {MAX_BUDGET:g}] USD")
        totals[(column, ident, seconds, float(since))] = float(usd)
    return totals
