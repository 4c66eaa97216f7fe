"""What a replica holds of each scope in Redis (`Lease`), and one lease round trip in flight (`LeaseCall`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.governance.limits.scopes import Ticket


@dataclass(slots=True)
class Lease:
    """What this replica holds of one scope."""

    key: str  # the scope's Redis prefix
    budget_seconds: int
    minute: int = -1  # of `requests` and `tokens`
    requests: int = 0
    tokens: int = 0
    window: str = ""  # of `cost` (see scopes.window_name)
    cost: float = 0.0
    held: int = 0  # parallel slots counted in Redis for this replica
    used: int = 0  # of which in use
    busy: bool = True  # admitted a call since the last flush
    pending: int = 0  # lease round trips in flight for this scope
    slots: bool = False  # the scope has a parallel limit: the flush writes what this replica holds


@dataclass(slots=True)
class LeaseCall:
    """One lease round trip for one call: what it set aside from each scope, and whether its caller still waits."""

    ticket: Ticket
    minute: int  # this replica's estimate of Redis' clock when it was sent
    now_s: int
    aside: list[tuple[int, int, float, int]]  # per scope: requests, tokens, cost, slot
    args: list[Any]
    abandoned: bool = False
    granted: bool = False
