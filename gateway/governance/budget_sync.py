"""Budget counters kept at least at what the ledger recorded, so lost counters never let a budget be spent twice.

Budget counters live in Redis (or in the process without Redis). A Redis that restarts
without persistence, or a gateway process that restarts with in-process counters, would
start every window at zero again. Every `ledger.budget_sync_seconds`, and once at start,
each key's, team's and user's budget counter for its current window is raised to the spend the
ledger holds for that window. Raising only (never lowering) is safe: the ledger lags the
counters (records wait in the spool up to `flush_interval`), so in normal operation the
counter is already higher and nothing changes.

With peers (other regions of the stack, gateway.governance.peers), the target is the local ledger's spend plus
the peers' spend of the same window, raised as soon as a pull brings new totals.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.config.governance import parse_duration
from gateway.governance.keys import KeyCache, Limits
from gateway.governance.limits.scopes import RateLimiter, key_scope, team_scope, user_scope
from gateway.governance.store.protocol import LedgerStore
from gateway.tasks import cancel


class BudgetSync:
    def __init__(self, store: LedgerStore, cache: KeyCache, limiter: RateLimiter, interval: float,
                 on_event: Callable[..., None]) -> None:
        self.store = store
        self.cache = cache
        self.limiter = limiter
        self.interval = interval
        self._event = on_event
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        # What the stack's other regions spent in a window: (column, id, budget seconds, window start) -> USD
        # (gateway.governance.peers); None with no peers.
        self.peer_spend: Callable[[str, str, int, float], float] | None = None
        # The last ledger_spend answer and when (monotonic): peers asking every interval are answered from it.
        self._recent: tuple[float, int, list[tuple[str, str, int, float, float]]] | None = None
        # Rows this process's ledger has written so far (gateway.governance.ledger.spend, `flushed`): totals computed
        # before its last flush are not reused.
        self.ledger_written: Callable[[], int] = lambda: 0

    async def run_once(self, now: float | None = None) -> int:
        """Raise every budget counter to the ledger's spend of its window, plus what the stack's other regions spent
        there (`peer_spend`); how many scopes had spend."""
        now = time.time() if now is None else now
        spends = []
        for column, ident, seconds, since, amount in await self.ledger_spend(now):
            if self.peer_spend is not None:
                amount += self.peer_spend(column, ident, seconds, since)
            if amount > 0:
                name = {"key_token": key_scope, "team_id": team_scope, "user_id": user_scope}[column](ident)
                spends.append((name, seconds, amount, since))
        if spends:
            await self.limiter.raise_spend(spends)
        return len(spends)

    async def ledger_spend(self, now: float) -> list[tuple[str, str, int, float, float]]:
        """(column, id, budget seconds, window start, spend) of every key, team and user with a budget, as this
        region's ledger holds it for the window `now` falls in (0 where it holds none)."""
        written = self.ledger_written()
        groups: dict[tuple[str, int], list[str]] = {}
        for key in self.cache.by_hash.values():
            _add(groups, "key_token", key.token, key.limits)
        for team in self.cache.teams.values():
            _add(groups, "team_id", team.team_id, team.limits)
        for user in self.cache.users.values():
            _add(groups, "user_id", user.user_id, user.limits)
        found = []
        for (column, seconds), ids in groups.items():
            since = now - now % seconds if seconds else 0.0
            spent = await self.store.spend_since(column, since, ids)
            found += [(column, ident, seconds, since, spent.get(ident, 0.0)) for ident in ids]
        self._recent = (time.monotonic(), written, found)
        return found

    async def recent_spend(self, now: float, max_age: float) -> list[tuple[str, str, int, float, float]]:
        """`ledger_spend`, as last computed (here or by a round of the budget sync) when that was less than `max_age`
        seconds ago and before nothing more was flushed here: every peer asks each of its rounds, and a query per
        budgeted scope each time would load the ledger store with the number of regions. (Rows other replicas of
        this region flushed meanwhile are seen up to `max_age` late: gateway/README.md's bound counts it.) Each row
        carries its own window, so an answer computed in the last window still counts where it belongs."""
        if self._recent is not None and time.monotonic() - self._recent[0] < max_age \
                and self._recent[1] == self.ledger_written():
            return self._recent[2]
        return await self.ledger_spend(now)

    async def start(self, sync_now: bool = True) -> None:
        """`sync_now`: once before returning (before the gateway serves: the port is already bound, and calls wait in
        its backlog), as well as every interval after."""
        if sync_now:
            await self._attempt()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._attempt()

    async def _attempt(self) -> None:
        try:
            async with asyncio.timeout(max(self.interval, 10.0)):
                await self.run_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store or Redis is down: counters keep what they have
            if not self._failing:
                self._failing = True
                self._event("budget_sync_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return
        if self._failing:
            self._failing = False
            self._event("budget_sync_recovered")


def _add(groups: dict[tuple[str, int], list[str]], column: str, ident: str, limits: Limits) -> None:
    if limits.max_budget is None:
        return
    try:
        seconds = parse_duration(limits.budget_duration) if limits.budget_duration else 0
    except ValueError:
        return  # refused when the key or team was written; nothing to sync for a value that cannot be read
    groups.setdefault((column, seconds), []).append(ident)
