"""The spend ledger: per call, who spent what on which model, spooled durably, flushed in batches to the store."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import time
from collections.abc import Callable
from itertools import count
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from gateway.governance.bounds import MAX_USAGE_TOKENS, cost_in_range, tokens_in_range
from gateway.governance.ledger.spool import Segment, SpendSpool
from gateway.governance.store.protocol import BadRows, LedgerStore
from gateway.tasks import cancel

_TEXT = ("id", "day", "request_id", "key_token", "key_alias", "team_id", "model", "deployment", "region", "user_id")


class SpendLedger:
    """Writes each record to the spool at once; a background task moves spooled records to the store.

    Records are never lost to a store outage (they wait in the spool, replayed by the next
    flush or the next start) and never doubled (unique record ids, inserts ignore repeats).
    A record the store refuses for its data (`BadRows`: retrying cannot help) is found by
    splitting its batch, and set aside in the spool's quarantine file; the rest go in.
    """

    def __init__(self, spool: SpendSpool, store: LedgerStore, flush_interval: float, batch: int,
                 on_event: Callable[..., None], registry: CollectorRegistry | None = None) -> None:
        self.spool = spool
        self.store = store
        self.flush_interval = flush_interval
        self.batch = batch
        self._event = on_event
        self._ids = count(1)
        self._prefix = os.urandom(6).hex()
        self._task: asyncio.Task[None] | None = None
        # One flush at a time: a flush takes the spool's segments while it inserts them, so a second one running
        # beside it would find nothing and return before the first's rows are in the store.
        self._flushing = asyncio.Lock()
        self._store_down = False
        self.flushed = 0  # rows inserted by this process (replays included)
        self.write_errors = 0
        self.quarantined = Counter("llmp_ledger_rows_quarantined", "Spend records the store refused, set aside "
                                   "in the spool's quarantine.jsonl", registry=registry or CollectorRegistry())

    def next_id(self) -> str:
        return f"{self._prefix}-{next(self._ids):x}"

    def write(self, row: dict[str, Any]) -> None:
        try:
            self.spool.append(row)
        except OSError as exc:  # disk full or gone: say so loudly, never fail the call already answered
            self.write_errors += 1
            self._event("spool_write_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    def open(self) -> None:
        self.spool.open()

    async def start(self) -> None:
        await self.flush()  # replay what a previous process left behind before taking traffic
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> int:
        """Rotate, then insert every closed or orphaned segment; on a store error keep them for later. When it
        returns, every record written before the call is in the store (or waits in the spool for a store that is
        down): a flush already under way (the background loop's) is waited for first."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
        segments: list[Segment] = []
        current = self.spool.rotate()
        if current is not None:
            segments.append(current)
        segments += self.spool.orphans()
        inserted = 0
        for i, seg in enumerate(segments):
            try:
                if seg is current and not self.spool.fsync_always:
                    await asyncio.to_thread(self.spool.sync, seg)  # power-loss durability before the store has it
                lines = seg.lines if seg.lines is not None else self._checked(self.spool.read(seg))
                for start in range(0, len(lines), self.batch):
                    inserted += await self._insert(lines[start:start + self.batch])
                self.spool.done(seg)
            except asyncio.CancelledError:
                for rest in segments[i:]:
                    self.spool.release(rest)
                raise
            except Exception as exc:  # noqa: BLE001 - the store is down: segments wait in the spool
                for rest in segments[i:]:
                    self.spool.release(rest)
                if not self._store_down:
                    self._store_down = True
                    self._event("ledger_store_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
                return inserted
        if self._store_down:
            self._store_down = False
            self._event("ledger_store_recovered")
        self.flushed += inserted
        return inserted

    async def _insert(self, lines: list[bytes]) -> int:
        """Insert a batch; one the store refuses for its data is split until the bad records are found and set
        aside (a few round trips per bad record), so they never hold the others back."""
        try:
            return await self.store.insert_spend(lines)
        except BadRows as exc:
            if len(lines) == 1:
                self._quarantine(lines[0], str(exc))
                return 0
        half = len(lines) // 2
        return await self._insert(lines[:half]) + await self._insert(lines[half:])

    def _checked(self, lines: list[bytes]) -> list[bytes]:
        """Records replayed from a segment another process wrote (perhaps an older version, with no bounds):
        those that are no spend record this gateway would write are set aside instead of sent."""
        good = []
        for line in lines:
            problem = row_problem(line)
            if problem is None:
                good.append(line)
            else:
                self._quarantine(line, problem)
        return good

    def _quarantine(self, line: bytes, reason: str) -> None:
        self.spool.quarantine(line, reason)
        self.quarantined.inc()
        try:
            request_id = orjson.loads(line).get("request_id")
        except (orjson.JSONDecodeError, AttributeError):
            request_id = None
        self._event("ledger_row_quarantined", request_id=str(request_id)[:200] if request_id is not None else None,
                    reason=reason[:300], file=str(self.spool.directory / "quarantine.jsonl"))

    async def stop(self, timeout: float = 5.0) -> None:
        """Final flush (SIGTERM path), within `timeout` seconds; what cannot be flushed in time stays in the spool
        for the next start, and the event says how much."""
        try:
            await cancel(self._task)
        except Exception as exc:  # noqa: BLE001 - the loop died of something unexpected: the final flush still runs
            self._event("ledger_flush_loop_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        self._task = None
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self.flush()
        except TimeoutError:
            self._event("ledger_flush_timeout", seconds=round(time.monotonic() - started, 3),
                        note="records stay in the spool and are replayed at the next start")
        if self._store_down:
            self._event("ledger_flush_incomplete", note="the store is down: records stay in the spool and are "
                        "replayed at the next start")
        self.spool.close()


def _day(ts: float) -> str:
    return _day_of_hour(int(ts // 3600))


@functools.lru_cache(maxsize=64)
def _day_of_hour(hour: int) -> str:
    # The UTC day, formatted once per hour rather than once per call (a pure function, so caching is safe).
    return time.strftime("%Y-%m-%d", time.gmtime(hour * 3600))


def spend_row(record_id: str, request_id: str, key_token: str, key_alias: str | None, team_id: str | None,
              model: str, deployment: str, region: str, status: int, prompt_tokens: int, completion_tokens: int,
              cost: float, now: float | None = None, user_id: str | None = None) -> dict[str, Any]:
    """A spend record, its numbers bounded (`bounds`): whatever an upstream reported, the store takes the row.
    `user_id`: the key's owner (LiteLLM's `user` column), absent from rows spooled before users existed."""
    ts = time.time() if now is None else now
    return {"id": record_id, "ts": ts, "day": _day(ts), "request_id": request_id,
            "key_token": key_token, "key_alias": key_alias, "team_id": team_id, "model": model,
            "deployment": deployment, "region": region, "status": status,
            "prompt_tokens": tokens_in_range(prompt_tokens), "completion_tokens": tokens_in_range(completion_tokens),
            "cost": cost_in_range(cost), "user_id": user_id}


def row_problem(line: bytes) -> str | None:
    """Why a spool line is not a spend record as `spend_row` makes them, or None."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("id"), str) or not row["id"]:
        return "id: missing"
    if not isinstance(row.get("day"), str):
        return "day: missing"
    for name in _TEXT:
        if row.get(name) is not None and not isinstance(row[name], str):
            return f"{name}: not a string"
    ts = row.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or not 0 <= ts < 2.6e11:
        return "ts: not a time"
    for name in ("prompt_tokens", "completion_tokens"):
        v = row.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_USAGE_TOKENS):
            return f"{name}: {str(v)[:40]} is not a token count in [0, {MAX_USAGE_TOKENS}]"
    status, cost = row.get("status"), row.get("cost")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 0 <= status < 1000):
        return "status: not an HTTP status"
    if cost is not None and cost_in_range(cost) != cost:
        return f"cost: {str(cost)[:40]} is not an amount in USD"
    return None
