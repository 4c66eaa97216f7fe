"""The Redis limiter's way back: settlements, allowance idle scopes give back, slot heartbeats, budget raises.

Every `settle_interval_ms` one script carries, summed per scope and window, what finished calls used beyond
(or under) their reservation, what scopes idle since the previous flush hold unused, and the parallel slots
this replica holds (an absolute count with a heartbeat deadline). See `gateway.governance.limits.redis_limiter`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from gateway.governance.bounds import LUA_EXACT, cost_in_range, tokens_in_range
from gateway.governance.limits.redis_leases import Lease
from gateway.governance.limits.redis_pipe import RedisPipe, ScriptNotRun
from gateway.governance.limits.redis_scripts import FLUSH_LUA, RAISE_LUA
from gateway.governance.limits.scopes import Ticket, window_name


class RedisSettlement:
    """Settlement and give-back for `RedisLimiter`, which sets these attributes."""

    client: RedisPipe
    replica: str
    prefix: str
    timeout: float
    settle_interval: float
    _event: Callable[..., None]
    _leases: dict[str, Lease]
    # settlement deltas: ("t", scope, minute, 0) or ("c", scope, window name, budget_seconds) -> amount
    _owed: dict[tuple[str, str, int | str, int], float]
    _offset: float | None  # Redis clock minus time.monotonic(), in seconds
    _slot_life_ms: int
    _flush_failing: bool

    def _clock(self) -> tuple[int, int]:
        """Redis' time now, as this replica estimates it: (minute, second)."""
        now = time.monotonic() + (self._offset or 0.0)
        return int(now // 60), int(now)

    def settle(self, ticket: Ticket, tokens: int, cost: float) -> None:
        """The call ended: its slot is free at once here; the difference to its reservation goes to Redis
        with the next flush."""
        if not ticket.counted:
            return
        # Usage comes from upstreams: bounded before it reaches Redis (an absurd count must not fail the flush).
        tokens, cost = tokens_in_range(tokens), cost_in_range(cost)
        dt = tokens - ticket.reserved_tokens
        dc = cost - ticket.reserved_cost
        owed = self._owed
        k: tuple[str, str, int | str, int]
        for s in ticket.scopes:
            if s.tpm >= 0 and dt:
                k = ("t", s.name, ticket.minute, 0)
                owed[k] = owed.get(k, 0) + dt
            if s.budget >= 0 and dc:
                k = ("c", s.name, window_name(ticket.now_s, s.budget_seconds), s.budget_seconds)
                owed[k] = owed.get(k, 0.0) + dc
            if s.parallel >= 0:
                lease = self._leases.get(s.name)
                if lease is not None and lease.used > 0:
                    lease.used -= 1

    async def raise_spend(self, spends: list[tuple[str, int, float, float]]) -> None:
        args: list[Any] = []
        for name, budget_seconds, amount, window_start in spends:
            # The window the amount was summed over (limits/scopes.py): not this clock's, which may be past it.
            window = window_name(int(window_start), budget_seconds)
            args += (f"{self.prefix}:{name}:spend:{window}", repr(cost_in_range(amount)), budget_seconds)
        while args:
            chunk, args = args[:600], args[600:]
            async with asyncio.timeout(max(self.timeout * 5, 0.5)):
                await self.client.script(RAISE_LUA, [len(chunk) // 3, *chunk])

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settle_interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - lost give-backs leave allowance counted until its window ends
                if not self._flush_failing:
                    self._flush_failing = True
                    self._event("limits_flush_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            else:
                if self._flush_failing:
                    self._flush_failing = False
                    self._event("limits_flush_recovered")

    async def flush(self, final: bool = False) -> None:
        """Settle finished calls, give back what scopes idle since the last flush hold unused (`final`: every
        scope's), and write the slots this replica holds with their heartbeat."""
        minute, now_s = self._clock()
        ops: list[Any] = []
        idle: list[str] = []
        owed, self._owed = self._owed, {}
        for (op, name, when, bsecs), amount in owed.items():
            key = f"{self.prefix}:{name}"
            # Sums of bounded amounts, kept exact in Lua even if a flush carries a great many of them.
            amount = max(min(amount, LUA_EXACT // 2), -LUA_EXACT // 2)
            if op == "t":
                ops += ("t", f"{key}:m:{when}", int(amount), 0)
            else:
                ops += ("c", f"{key}:spend:{when}", repr(amount), bsecs)
        for name, lease in list(self._leases.items()):
            if lease.pending:  # a grant may be on its way: keep everything, renew the slots' deadline
                if lease.held:
                    ops += ("h", lease.key, 0, 0)
                continue
            if lease.busy and not final:  # it will use what it holds soon; `lease_requests` bounds what that is
                lease.busy = False
                if lease.slots:
                    ops += ("P", lease.key, lease.held, 0)
                continue
            if lease.minute == minute:
                if lease.requests > 0:
                    ops += ("r", f"{lease.key}:m:{minute}", -lease.requests, 0)
                if lease.tokens > 0:
                    ops += ("t", f"{lease.key}:m:{minute}", -lease.tokens, 0)
            lease.requests = lease.tokens = 0
            if lease.cost > 0 and lease.window == window_name(now_s, lease.budget_seconds):
                ops += ("c", f"{lease.key}:spend:{lease.window}", repr(-lease.cost), lease.budget_seconds)
            lease.cost = 0.0
            if lease.slots:
                lease.held = lease.used
                ops += ("P", lease.key, lease.held, 0)  # absolute: sent again by every flush until one succeeds
            if not lease.held:
                idle.append(name)
        if not ops:
            return
        # One script: what it writes was decided together, and no lease can run in between.
        async with asyncio.timeout(max(self.timeout * 5, 0.5)):
            try:
                await self.client.script(FLUSH_LUA, [self.replica, self._slot_life_ms, len(ops) // 4, *ops],
                                         retry=False)
            except ScriptNotRun:
                # Redis forgot its scripts and ran nothing. Increments go again now; absolute slot counts wait
                # for the next flush (a lease may have run meanwhile), and so does forgetting idle leases.
                ops = [v for i in range(0, len(ops), 4) if ops[i] != "P" for v in ops[i:i + 4]]
                if ops:
                    await self.client.script(FLUSH_LUA, [self.replica, self._slot_life_ms, len(ops) // 4, *ops])
                return
        for name in idle:  # forgotten only once Redis has what they gave back
            gone = self._leases.get(name)
            if gone is not None and not (gone.busy or gone.pending or gone.held or gone.requests
                                         or gone.tokens or gone.cost):
                del self._leases[name]
