"""The in-process limiter: the same semantics as the Redis one, counted in this process only (one replica)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.governance.bounds import MAX_COST, MAX_RESERVED_TOKENS, cost_in_range, tokens_in_range
from gateway.governance.limits.scopes import Scope, Ticket, refused, window_name


def _raise(scope: Scope, what: str, retry: int) -> Ticket:
    raise refused(scope, what, retry)


@dataclass
class _Counters:
    rpm: dict[int, int] = field(default_factory=dict)
    tpm: dict[int, int] = field(default_factory=dict)
    spend: dict[str, float] = field(default_factory=dict)
    parallel: dict[str, float] = field(default_factory=dict)


class LocalLimiter:
    """The same semantics in this process only: right for one gateway, multiplied by N replicas."""

    description = "in-process counters (this replica only: configure redis.url to share limits across replicas)"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._scopes: dict[str, _Counters] = {}
        self._ids = itertools.count()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def admit(self, request_id: str, scopes: tuple[Scope, ...], tokens: int, cost: float,
                    deadline_s: float) -> Ticket:
        # The same bounds as the Redis limiter: a NaN cost would otherwise never reach a budget.
        tokens = min(max(tokens, 0), MAX_RESERVED_TOKENS)
        cost = min(cost, MAX_COST) if cost > 0 else 0.0
        now = self._clock()
        now_s = int(now)
        minute = now_s // 60
        counters = [self._scopes.setdefault(s.name, _Counters()) for s in scopes]
        slot = f"{request_id}:{next(self._ids)}"  # request ids come from clients: not unique
        for s, c in zip(scopes, counters):
            if s.rpm >= 0 and c.rpm.get(minute, 0) >= s.rpm:
                return _raise(s, "rpm", 60 - now_s % 60)
            if s.tpm >= 0 and c.tpm.get(minute, 0) >= s.tpm:
                return _raise(s, "tpm", 60 - now_s % 60)
            if s.budget >= 0 and c.spend.get(window_name(now_s, s.budget_seconds), 0.0) >= s.budget:
                return _raise(s, "budget", s.budget_seconds - now_s % s.budget_seconds if s.budget_seconds else 86400)
            if s.parallel >= 0:
                for rid in [r for r, d in c.parallel.items() if d <= now]:
                    del c.parallel[rid]
                if len(c.parallel) >= s.parallel:
                    return _raise(s, "parallel", 1)
        for s, c in zip(scopes, counters):
            if s.rpm >= 0:
                _bump(c.rpm, minute, 1)
            if s.tpm >= 0:
                _bump(c.tpm, minute, tokens)
            if s.budget >= 0:
                w = window_name(now_s, s.budget_seconds)
                c.spend[w] = c.spend.get(w, 0.0) + cost
            if s.parallel >= 0:
                c.parallel[slot] = now + deadline_s
        return Ticket(slot, scopes, tokens, cost, minute, now_s)

    def settle(self, ticket: Ticket, tokens: int, cost: float) -> None:
        tokens, cost = tokens_in_range(tokens), cost_in_range(cost)
        for s in ticket.scopes:
            c = self._scopes.get(s.name)
            if c is None:
                continue
            if s.tpm >= 0 and ticket.minute in c.tpm:
                c.tpm[ticket.minute] += tokens - ticket.reserved_tokens
            if s.budget >= 0:
                w = window_name(ticket.now_s, s.budget_seconds)
                if w in c.spend:
                    c.spend[w] += cost - ticket.reserved_cost
            if s.parallel >= 0:
                c.parallel.pop(ticket.request_id, None)

    async def raise_spend(self, spends: list[tuple[str, int, float, float]]) -> None:
        for name, budget_seconds, amount, window_start in spends:
            spend = self._scopes.setdefault(name, _Counters()).spend
            w = window_name(int(window_start), budget_seconds)
            spend[w] = max(spend.get(w, 0.0), cost_in_range(amount))


def _bump(counts: dict[int, int], minute: int, by: int) -> None:
    counts[minute] = counts.get(minute, 0) + by
    for old in [m for m in counts if m < minute - 1]:
        del counts[old]
