"""Rate limits, parallel-request limits and budgets: scopes, tickets, the limiter interface, windows.

Each request is admitted against a list of scopes (the key, its team, the key on this
model); a scope has optional RPM, TPM, budget and parallel limits. Admission checks
every scope and, only if all pass, counts the request in all of them. It reserves the
tokens and cost the request may use (prompt bytes / 4 + max_tokens); when the call ends,
settlement replaces the reservation by what was used and frees the parallel slot.

Windows: RPM and TPM count per calendar minute (of the Redis server's clock when shared);
budgets per `budget_duration` window aligned to the Unix epoch (`30d`: windows of 30
days), or for ever when no duration is given. A request is admitted while the window's
count (reservations included) is below the limit, so TPM and budget exceed their limit
by at most one request's reservation, plus what in-flight requests use beyond their
reservation (only when a client gives no max_tokens and the model has no cap, or the
prompt has more tokens than bytes/4). `gateway.governance.limits.in_process` counts in
one process; `gateway.governance.limits.redis_limiter` shares the counters across replicas with
the same bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from gateway.governance.bounds import MAX_RESERVED_TOKENS
from gateway.http.errors import GatewayError

NO_LIMIT = -1


@dataclass(frozen=True, slots=True)
class Scope:
    """A counter set: `name` says whose (key-..., team-..., key-...:model) in errors and Redis keys."""

    name: str
    label: str  # how errors name it: "key", "team `ml`", "key on model `llama`"
    rpm: int = NO_LIMIT
    tpm: int = NO_LIMIT
    budget: float = NO_LIMIT
    budget_seconds: int = 0  # 0: lifetime budget
    parallel: int = NO_LIMIT

    def any(self) -> bool:
        return self.rpm >= 0 or self.tpm >= 0 or self.budget >= 0 or self.parallel >= 0


@dataclass(slots=True)
class Ticket:
    """An admitted request: what to settle when it ends."""

    request_id: str
    scopes: tuple[Scope, ...]
    reserved_tokens: int
    reserved_cost: float
    minute: int = 0
    now_s: int = 0
    counted: bool = True  # False when admitted without counting (limiter unavailable, fail-open)


class RateLimiter(Protocol):
    description: str

    async def admit(self, request_id: str, scopes: tuple[Scope, ...], tokens: int, cost: float,
                    deadline_s: float) -> Ticket: ...

    def settle(self, ticket: Ticket, tokens: int, cost: float) -> None: ...

    async def raise_spend(self, spends: list[tuple[str, int, float, float]]) -> None:
        """Raise each (scope, budget_seconds, amount, window start) budget counter of the window starting there to at
        least `amount`: the window the amount was summed over, whatever this clock says now (at a boundary, last
        window's spend must not land in the new window)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def key_scope(token: str) -> str:
    """The scope name of a key's own limits (its hash's first 24 hex digits)."""
    return "k:" + token[:24]


def team_scope(team_id: str) -> str:
    return "t:" + team_id


def user_scope(user_id: str) -> str:
    return "u:" + user_id


def refused(scope: Scope, what: str, retry_after: int, detail: str = "") -> GatewayError:
    names = {"rpm": "rpm_limit", "tpm": "tpm_limit", "budget": "max_budget", "parallel": "max_parallel_requests"}
    limit = {"rpm": scope.rpm, "tpm": scope.tpm, "budget": scope.budget, "parallel": scope.parallel}[what]
    if what == "budget":
        message = f"Budget exceeded for {scope.label}: max_budget {limit:g} USD{detail}."
        kind, code = "budget_exceeded", "budget_exceeded"
    else:
        message = f"Rate limit reached for {scope.label}: {names[what]} {limit:g}{detail}."
        kind, code = "rate_limit_error", "rate_limit_exceeded"
    return GatewayError(429, message, kind, None, code, {"Retry-After": str(max(1, retry_after))})


def window_name(now_s: int, budget_seconds: int) -> str:
    """The budget window `now_s` falls in, as counters are keyed: windows aligned to the epoch, or "all" (lifetime)."""
    return str(now_s // budget_seconds) if budget_seconds else "all"


def reserve_tokens(request_bytes: int, max_tokens: int | None) -> int:
    """What a request may use: its prompt (a token is rarely under 4 bytes of JSON) and its completion cap,
    within [0, MAX_RESERVED_TOKENS] whatever the client sent (the count goes to Redis)."""
    return min(math.ceil(request_bytes / 4) + max(max_tokens or 0, 0), MAX_RESERVED_TOKENS)
