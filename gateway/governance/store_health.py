"""`StoreHealth`: whether this replica reaches its stores (Redis for limits, the ledger store), for /health/ready.

Reported, never a reason to be unready: every replica of a region shares these stores, so an outage of one
would take the whole region out of DNS at once, while the gateway keeps serving through it (the limiter fails
open or closed as configured, spend waits in the spool). `llmp verify` reads the report after a deploy.
/health/ready is unauthenticated (Route 53 health checkers call it), so the report says which store and
what kind of failure, never an endpoint, a user name or an error text that could hold either.

The handler never waits on a store: Route 53 calls /health/ready (infra/components/dns.py HEALTH_PATH) and counts
an answer slower than 2 s as a failure ("the endpoint must respond with an HTTP status code of 2xx or 3xx within
two seconds after connecting",
https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/dns-failover-determining-health-of-endpoints.html), so
a hung store must not turn into an unhealthy region. `report()` only reads what is already known:
- the ledger: the outcome of the KeyCache's own periodic fingerprint read (gateway/governance/keys.py), which
  runs anyway; no query of ours (an unauthenticated path must not make every pod COUNT/SUM the key table);
- Redis: a PING every `MIN_INTERVAL` seconds in a background task, one per replica whatever the request rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

PROBE_TIMEOUT = 1.0  # seconds for the Redis PING: a probe that waits longer says "unreachable"
MIN_INTERVAL = 2.0  # seconds between Redis probes

Report = dict[str, dict[str, str]]
NOT_CONFIGURED = {"status": "not configured", "error": "limits are counted per replica (no `redis`)"}


async def _probe(check: Callable[[], Any]) -> dict[str, str]:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await check()
    except TimeoutError:
        return {"status": "unreachable", "error": f"no answer within {PROBE_TIMEOUT:g} s"}
    except Exception as exc:  # noqa: BLE001 - any failure is the report; its text may name the endpoint
        return {"status": "unreachable", "error": type(exc).__name__}
    return {"status": "connected"}


class StoreHealth:
    """The stores' last known state for an app state (`gateway.http.state.AppState`); `start` keeps it fresh.

    `clock` is wall time as the KeyCache stamps `loaded_at` (time.time), injectable so tests need no sleeps."""

    def __init__(self, state: Any, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self._redis: dict[str, str] | None = None
        self._task: asyncio.Task[None] | None = None

    def report(self) -> Report | None:
        """{"redis": {...}, "ledger": {...}}, each {"status": connected | unreachable | not configured | probing};
        None when the gateway runs without governance (master key only: no stores at all). Never waits."""
        governance = self.state.governance
        if governance is None:
            return None
        redis = NOT_CONFIGURED if self._redis_pipe(governance) is None else \
            (self._redis or {"status": "probing", "error": "no probe has finished yet"})
        return {"redis": redis, "ledger": self._ledger(governance.cache)}

    def _ledger(self, cache: Any) -> dict[str, str]:
        """Connected while the KeyCache's last successful read is no older than one refresh plus the time it gives
        a refresh to finish (KeyCache._loop: max(5 x refresh_seconds, 5) s)."""
        if not cache.loaded_at:
            return {"status": "unreachable", "error": "keys not read from the store since start"}
        age = self.clock() - cache.loaded_at
        if age > cache.refresh_seconds + max(cache.refresh_seconds * 5, 5.0) + PROBE_TIMEOUT:
            return {"status": "unreachable", "error": f"keys not re-read from the store for {age:.0f} s"}
        return {"status": "connected"}

    @staticmethod
    def _redis_pipe(governance: Any) -> Any:
        return getattr(governance.limiter, "client", None)  # RedisLimiter's pipe; LocalLimiter has none

    async def refresh(self) -> None:
        """One Redis probe, bounded by PROBE_TIMEOUT; its result is what `report` says until the next one."""
        governance = self.state.governance
        redis = self._redis_pipe(governance) if governance is not None else None
        if redis is not None:
            self._redis = await _probe(lambda: redis.call("PING"))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(MIN_INTERVAL)
            await self.refresh()

    async def start(self, app: Any = None) -> None:
        """At app start (aiohttp on_startup): a first probe (at most PROBE_TIMEOUT), then one every MIN_INTERVAL."""
        if self.state.governance is None or self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, app: Any = None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
