"""What gateways of one stack send each other (records changed since a cursor, spend totals of budget windows):
the answers' shape, built on one side and checked on the other, since a peer is a network party like any other.

Changes: `{"records": [{"kind", "id", "doc", "revoked", "updated_at", "changed_at"}, ...], "more": bool, "cursor":
str}`; a key travels as its SHA-256 token and its stored document, never as the key; `cursor` is opaque to the
puller, which sends it back (gateway.governance.store.replication). One record the puller refuses is skipped and
counted, never the whole answer: a record that cannot be taken must not stop every later one from arriving.
Spend: `{"now": t, "spend": [[column, id, budget_seconds, window_start, usd], ...]}`, one row per key, team or user
with a budget and spend in its current window, from the answering region's own ledger only (so totals from several
peers add up, never twice).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import orjson

from gateway.governance.bounds import MAX_BUDGET, MAX_DOC_BYTES, MAX_DURATION_SECONDS, MAX_TEXT, MAX_TIMESTAMP
from gateway.governance.store.documents import key_from_doc, team_from_doc, user_from_doc
from gateway.governance.store.replication import PAGE, PAGE_BYTES, TABLES, PeerRecord, encode_cursor

# A changes answer, read whole before parsing: a page is cut after PAGE_BYTES of documents, so at most that plus
# one record at its largest, each document escaped once more inside the answer (at most twice its size).
MAX_ANSWER_BYTES = PAGE_BYTES + 2 * MAX_DOC_BYTES + PAGE * 1024
# A spend answer: [column, id, seconds, window start, usd] rows, about 150 bytes each for a 64-hex key token; 8 MiB
# holds some 50,000 budgeted keys, teams and users with spend in their current window.
MAX_SPEND_BYTES = 8 * 2**20
MAX_CURSOR = 4096  # characters of an opaque cursor sent back
CLOCK_SKEW = 300.0  # a version stamped further ahead of this clock is refused (it would win over every later edit)
COLUMNS = ("key_token", "team_id", "user_id")
TOKEN = re.compile(r"^[0-9a-f]{64}$")

SpendKey = tuple[str, str, int, float]  # column, id, budget seconds, window start


class PeerAnswerError(ValueError):
    """A peer's answer that is not what the protocol allows; the message says where and what, never a value."""


def changes_answer(records: list[PeerRecord], more: bool, cursor: tuple[float, str, str]) -> bytes:
    return orjson.dumps({"records": [{"kind": r.kind, "id": r.id, "doc": r.doc, "revoked": r.revoked,
                                      "updated_at": r.updated_at, "changed_at": r.changed_at} for r in records],
                         "more": more, "cursor": encode_cursor(cursor)})


def spend_answer(now: float, rows: list[tuple[str, str, int, float, float]]) -> bytes:
    # A window starts at a whole multiple of its whole seconds (or 0): sent as an integer, matched exactly on the
    # other side, whatever a float's text form would be.
    return orjson.dumps({"now": now, "spend": [[c, i, s, int(since), usd] for c, i, s, since, usd in rows if usd > 0]})


def _time(value: Any, where: str, high: float = MAX_TIMESTAMP) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= high:
        raise PeerAnswerError(f"{where}: not a time in range")
    return float(value)


def _object(body: bytes, fields: tuple[str, ...], cap: int) -> dict[str, Any]:
    if len(body) > cap:
        raise PeerAnswerError(f"answer over {cap} bytes")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PeerAnswerError("answer is not JSON") from None
    if not isinstance(doc, dict) or any(f not in doc for f in fields):
        raise PeerAnswerError(f"answer is not an object with {', '.join(fields)}")
    return doc


def parse_changes(body: bytes, now: float) -> tuple[list[PeerRecord], list[str], bool, str | None]:
    """The records of a changes answer that pass the checks the admin API makes; what was wrong with each one that
    did not (skipped); whether more are waiting; the cursor to send back (None from a gateway before cursors)."""
    doc = _object(body, ("records", "more"), MAX_ANSWER_BYTES)
    items, more, cursor = doc["records"], doc["more"], doc.get("cursor")
    if not isinstance(items, list) or len(items) > PAGE or not isinstance(more, bool):
        raise PeerAnswerError(f"records: not a list of at most {PAGE}, or more: not true/false")
    if cursor is not None and (not isinstance(cursor, str) or not 0 < len(cursor) <= MAX_CURSOR):
        raise PeerAnswerError(f"cursor: not text of at most {MAX_CURSOR} characters")
    records: list[PeerRecord] = []
    refused: list[str] = []
    for i, item in enumerate(items):
        try:
            records.append(_record(item, f"records[{i}]", now))
        except PeerAnswerError as exc:
            refused.append(str(exc))
    return records, refused, more, cursor


PARSERS = {"key": key_from_doc, "team": team_from_doc, "user": user_from_doc}


def _record(item: Any, where: str, now: float) -> PeerRecord:
    if not isinstance(item, dict):
        raise PeerAnswerError(f"{where}: not an object")
    kind, ident, text, revoked = item.get("kind"), item.get("id"), item.get("doc"), item.get("revoked")
    if kind not in TABLES:
        raise PeerAnswerError(f"{where}.kind: not key, team or user")
    if not isinstance(ident, str) or not 0 < len(ident) <= MAX_TEXT or "\x00" in ident \
            or (kind == "key" and not TOKEN.match(ident)):
        raise PeerAnswerError(f"{where}.id: not a {'SHA-256 token' if kind == 'key' else 'name'}")
    if not isinstance(text, str) or len(text) > MAX_DOC_BYTES or "\x00" in text \
            or len(text.encode("utf-8", "surrogatepass")) > MAX_DOC_BYTES:
        raise PeerAnswerError(f"{where}.doc: not a document of at most {MAX_DOC_BYTES} bytes")
    if not isinstance(revoked, bool) or (revoked and kind != "key"):
        raise PeerAnswerError(f"{where}.revoked: not true/false (true for keys only)")
    updated_at = _time(item.get("updated_at"), f"{where}.updated_at", now + CLOCK_SKEW)
    changed_at = _time(item.get("changed_at"), f"{where}.changed_at")
    problems: list[str] = []

    def bad(_kind: str, _ident: str, reason: str) -> None:
        problems.append(reason)

    parsed = PARSERS[kind](text, bad)
    own = TABLES[kind].id
    if problems:
        raise PeerAnswerError(f"{where}.doc: {problems[0][:200]}")
    if getattr(parsed, own) != ident:
        raise PeerAnswerError(f"{where}.doc: its {own} is not the record's id")
    return PeerRecord(kind, ident, text, revoked, updated_at, changed_at)


def parse_spend(body: bytes, known: Callable[[str, str], bool]) -> dict[SpendKey, float]:
    """The totals of a spend answer, per (column, id, budget seconds, window start), of the keys, teams and users
    `known` here (a peer cannot make this region hold totals for scopes it has no budget for)."""
    doc = _object(body, ("now", "spend"), MAX_SPEND_BYTES)
    rows = doc["spend"]
    if not isinstance(rows, list):
        raise PeerAnswerError("spend: not a list of rows")
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
        if known(column, ident):
            totals[(column, ident, seconds, float(since))] = float(usd)
    return totals
