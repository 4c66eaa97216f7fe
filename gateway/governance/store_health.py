"""`StoreHealth`: whether this replica reaches its stores (Redis for limits, the ledger store), for /health/ready.

Reported, never a reason to be unready: every replica of a region shares these stores, so an outage of one
would take the whole region out of DNS at once, while the gateway keeps serving through it (the limiter fails
open or closed as configured, spend waits in the spool). `llmp verify` reads the report after a deploy.
/health/ready is unauthenticated (Route 53 health checkers call it), so the report says which store and
what kind of failure, never an endpoint, a user name or an error text that could hold either; and a probe
runs at most every `MIN_INTERVAL` seconds, however often the endpoint is called.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

PROBE_TIMEOUT = 1.0  # seconds per store: a probe that waits longer says "timeout"
MIN_INTERVAL = 2.0  # seconds between probes; callers in between get the last report

Report = dict[str, dict[str, str]]


async def _probe(check: Any) -> dict[str, str]:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await check()
    except TimeoutError:
        return {"status": "unreachable", "error": f"no answer within {PROBE_TIMEOUT:g} s"}
    except Exception as exc:  # noqa: BLE001 - any failure is the report; its text may name the endpoint
        return {"status": "unreachable", "error": type(exc).__name__}
    return {"status": "connected"}


class StoreHealth:
    """Probes the governance stores of an app state (`gateway.http.state.AppState`) on demand, cached."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self._last: Report | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def report(self) -> Report | None:
        """{"redis": {...}, "ledger": {...}}, each {"status": connected | unreachable | not configured}; None
        when the gateway runs without governance (master key only: no stores at all)."""
        governance = self.state.governance
        if governance is None:
            return None
        async with self._lock:  # concurrent callers share one probe
            if self._last is None or time.monotonic() - self._at >= MIN_INTERVAL:
                self._last = await self._probe_all(governance)
                self._at = time.monotonic()
            return self._last

    @staticmethod
    async def _probe_all(governance: Any) -> Report:
        redis = getattr(governance.limiter, "client", None)  # RedisLimiter's pipe; LocalLimiter has none
        redis_report = {"status": "not configured", "error": "limits are counted per replica (no `redis`)"} \
            if redis is None else await _probe(lambda: redis.call("PING"))
        return {"redis": redis_report, "ledger": await _probe(governance.store.key_fingerprint)}
