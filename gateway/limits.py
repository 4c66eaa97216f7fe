"""Rate limits, parallel-request limits and budgets: one atomic check per request, shared through Redis.

Each request is admitted against a list of scopes (the key, its team, the key on this
model); a scope has optional RPM, TPM, budget and parallel limits. Admission checks
every scope and, only if all pass, counts the request in all of them, in one Redis Lua
script (one round trip, atomic across replicas). It reserves the tokens and cost the
request may use (prompt bytes / 4 + max_tokens); when the call ends, settlement
replaces the reservation by what was used and frees the parallel slot. Settlements are
batched: one round trip per `settle_interval_ms` for all calls that ended.

Windows: RPM and TPM count per calendar minute of the Redis server's clock (every replica
agrees on it); budgets per `budget_duration` window aligned to the Unix epoch (`30d`:
windows of 30 days), or for ever when no duration is given. Parallel slots are a sorted
set of request ids with deadlines (the total timeout), so a replica that dies holding
slots frees them at the deadline.

Overshoot bound (documented in gateway/README.md, proved by tests/gateway/test_limits.py):
RPM and parallel limits are exact whatever the number of replicas. A request is admitted
while the window's count (reservations included) is below the limit, so TPM and budget
exceed their limit by at most one request's reservation, plus what in-flight requests
use beyond their reservation (only when a client gives no max_tokens and the model has
no cap, or the prompt has more tokens than bytes/4).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.errors import GatewayError
from gateway.redis_pipe import Encoded, RedisPipe
from gateway.tasks import cancel

NO_LIMIT = -1
MINUTE_TTL = 120


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

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


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


# ---- Redis ---------------------------------------------------------------------------------------

# ARGV: request_id, reserve_tokens, reserve_cost, deadline_ms_from_now, n, then per scope 6 values:
# prefix, rpm, tpm, budget, budget_seconds, parallel. Returns {0, minute, now_s} or {scope_index, what, value, now_s}.
ADMIT_LUA = """
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(now_s / 60)
local rid, rt, rc, life, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function win(secs) if secs > 0 then return tostring(math.floor(now_s / secs)) end return 'all' end
for s = 0, n - 1 do
  local b = 6 + s * 6
  local p, rpm, tpm, budget, bsecs, par = ARGV[b], tonumber(ARGV[b+1]), tonumber(ARGV[b+2]),
    tonumber(ARGV[b+3]), tonumber(ARGV[b+4]), tonumber(ARGV[b+5])
  if rpm >= 0 or tpm >= 0 then
    -- requests (r) and tokens (t) of the minute in one hash: one read for both
    local v = redis.call('HMGET', p .. ':m:' .. minute, 'r', 't')
    if rpm >= 0 and tonumber(v[1] or '0') >= rpm then return {s + 1, 'rpm', tostring(v[1]), now_s} end
    if tpm >= 0 and tonumber(v[2] or '0') >= tpm then return {s + 1, 'tpm', tostring(v[2]), now_s} end
  end
  if budget >= 0 then
    local v = tonumber(redis.call('GET', p .. ':spend:' .. win(bsecs)) or '0')
    if v >= budget then return {s + 1, 'budget', tostring(v), now_s} end
  end
  if par >= 0 then
    local k = p .. ':par'
    local v = redis.call('ZCARD', k)
    if v >= par then
      -- slots past their deadline (their replica died) only matter at the limit: clear them then
      redis.call('ZREMRANGEBYSCORE', k, '-inf', now_ms)
      v = redis.call('ZCARD', k)
      if v >= par then return {s + 1, 'parallel', tostring(v), now_s} end
    end
  end
end
-- Expiries are set when a counter is created, not on every call: less work for the one Redis thread.
for s = 0, n - 1 do
  local b = 6 + s * 6
  local p, rpm, tpm, budget, bsecs, par = ARGV[b], tonumber(ARGV[b+1]), tonumber(ARGV[b+2]),
    tonumber(ARGV[b+3]), tonumber(ARGV[b+4]), tonumber(ARGV[b+5])
  if rpm >= 0 or tpm >= 0 then
    local k = p .. ':m:' .. minute
    local r = redis.call('HINCRBY', k, 'r', 1)
    if tpm >= 0 then redis.call('HINCRBY', k, 't', rt) end
    if r == 1 then redis.call('EXPIRE', k, 120) end
  end
  if budget >= 0 then
    local k = p .. ':spend:' .. win(bsecs)
    if tonumber(redis.call('INCRBYFLOAT', k, rc)) == rc and bsecs > 0 then redis.call('EXPIRE', k, bsecs + 86400) end
  end
  if par >= 0 then
    local k = p .. ':par'
    redis.call('ZADD', k, now_ms + life, rid)
    if redis.call('PTTL', k) < life then redis.call('PEXPIRE', k, life + 60000) end
  end
end
return {0, minute, now_s}
"""

# ARGV: count, then per settlement: request_id, minute, now_s, token_delta, cost_delta, n, then per scope
# 4 values: prefix, has_tpm, budget_seconds (or -1 without budget), has_parallel.
SETTLE_LUA = """
local i = 2
for e = 1, tonumber(ARGV[1]) do
  local rid, minute, now_s, dt, dc, n = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), tonumber(ARGV[i+3]),
    tonumber(ARGV[i+4]), tonumber(ARGV[i+5])
  i = i + 6
  for s = 1, n do
    local p, tpm, bsecs, par = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), ARGV[i+3]
    i = i + 4
    -- A counter that expired meanwhile is created by the increment: give it a short life again.
    if tpm == '1' and dt ~= 0 then
      local k = p .. ':m:' .. minute
      if redis.call('HINCRBY', k, 't', dt) == dt then redis.call('EXPIRE', k, 120) end
    end
    if bsecs >= 0 and dc ~= 0 then
      local w = 'all'
      if bsecs > 0 then w = tostring(math.floor(now_s / bsecs)) end
      local k = p .. ':spend:' .. w
      if tonumber(redis.call('INCRBYFLOAT', k, dc)) == dc and bsecs > 0 then redis.call('EXPIRE', k, bsecs + 86400) end
    end
    if par == '1' then redis.call('ZREM', p .. ':par', rid) end
  end
end
return 1
"""


class RedisLimiter:
    """Counters in Redis, shared by every replica; bounded waits, fail-open or fail-closed when unreachable."""

    def __init__(self, url: str, *, fail_open: bool, timeout_ms: float, retry_after_ms: float,
                 settle_interval_ms: float, on_event: Callable[..., None], prefix: str = "llmp") -> None:
        self.client = RedisPipe(url)
        self._encoded: dict[tuple[Scope, ...], Encoded] = {}
        timeout = timeout_ms / 1000
        self.fail_open = fail_open
        self.timeout = timeout
        self.retry_after = retry_after_ms / 1000
        self.settle_interval = settle_interval_ms / 1000
        self.prefix = prefix
        self._event = on_event
        self._down_until = 0.0
        self._down = False
        self._pending: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self.description = f"redis (shared by replicas; on_unavailable: {'fail-open' if fail_open else 'fail-closed'})"

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._settle_loop())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        try:
            async with asyncio.timeout(2):
                await self._flush_settlements()
        except Exception:  # noqa: BLE001 - at shutdown, unsettled slots expire at their deadline
            pass
        await self.client.close()

    def _unavailable(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_after
        if not self._down:
            self._down = True
            self._event("limits_unavailable", error=f"{type(exc).__name__}: {exc}"[:300],
                        behaviour="fail-open" if self.fail_open else "fail-closed")

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            self._event("limits_recovered")

    def _fallback(self, ticket: Ticket) -> Ticket:
        if self.fail_open:
            ticket.counted = False
            return ticket
        raise GatewayError(503, "Rate limiter unavailable; the gateway is configured to refuse calls "
                           "it cannot count (redis.on_unavailable: fail-closed).", "service_unavailable", None,
                           "limits_unavailable", {"Retry-After": "1"})

    async def admit(self, request_id: str, scopes: tuple[Scope, ...], tokens: int, cost: float,
                    deadline_s: float) -> Ticket:
        ticket = Ticket(request_id, scopes, tokens, cost)
        if self._down and time.monotonic() < self._down_until:
            return self._fallback(ticket)  # do not make every call wait out the timeout during an outage
        args: list[Any] = [request_id, tokens, repr(cost), int(deadline_s * 1000), len(scopes)]
        limits = self._encoded.get(scopes)
        if limits is None:
            # A scope set's limits are the same on every call: encode them once.
            if len(self._encoded) > 10_000:
                self._encoded.clear()
            limits = self._encoded[scopes] = Encoded([
                v for s in scopes
                for v in (f"{self.prefix}:{s.name}", s.rpm, s.tpm, repr(float(s.budget)), s.budget_seconds, s.parallel)])
        try:
            async with asyncio.timeout(self.timeout):
                result = await self.client.script(ADMIT_LUA, args, limits)
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - any failure to count is "unavailable", never a hang
            self._unavailable(exc)
            return self._fallback(ticket)
        self._recovered()
        if int(result[0]) == 0:
            ticket.minute, ticket.now_s = int(result[1]), int(result[2])
            return ticket
        scope = scopes[int(result[0]) - 1]
        what = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        now_s = int(result[3])
        retry = 60 - now_s % 60 if what in ("rpm", "tpm") else 1
        if what == "budget":
            retry = scope.budget_seconds - now_s % scope.budget_seconds if scope.budget_seconds else 86400
        return _raise(scope, what, retry)

    def settle(self, ticket: Ticket, tokens: int, cost: float) -> None:
        if not ticket.counted:
            return
        entry: list[Any] = [ticket.request_id, ticket.minute, ticket.now_s, tokens - ticket.reserved_tokens,
                            repr(cost - ticket.reserved_cost), len(ticket.scopes)]
        for s in ticket.scopes:
            entry += [f"{self.prefix}:{s.name}", 1 if s.tpm >= 0 else 0,
                      s.budget_seconds if s.budget >= 0 else -1, 1 if s.parallel >= 0 else 0]
        self._pending.append(entry)

    async def _settle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settle_interval)
            if self._pending:
                try:
                    await self._flush_settlements()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - lost settlements only leave reservations counted
                    self._unavailable(exc)

    async def _flush_settlements(self) -> None:
        pending, self._pending = self._pending, []
        while pending:
            chunk, pending = pending[:200], pending[200:]
            args: list[Any] = [len(chunk)]
            for entry in chunk:
                args += entry
            async with asyncio.timeout(max(self.timeout * 5, 0.5)):
                await self.client.script(SETTLE_LUA, args)


def _raise(scope: Scope, what: str, retry: int) -> Ticket:
    raise refused(scope, what, retry)


# ---- in-process ----------------------------------------------------------------------------------

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

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def admit(self, request_id: str, scopes: tuple[Scope, ...], tokens: int, cost: float,
                    deadline_s: float) -> Ticket:
        now = self._clock()
        now_s = int(now)
        minute = now_s // 60
        counters = [self._scopes.setdefault(s.name, _Counters()) for s in scopes]
        for s, c in zip(scopes, counters):
            if s.rpm >= 0 and c.rpm.get(minute, 0) >= s.rpm:
                return _raise(s, "rpm", 60 - now_s % 60)
            if s.tpm >= 0 and c.tpm.get(minute, 0) >= s.tpm:
                return _raise(s, "tpm", 60 - now_s % 60)
            if s.budget >= 0 and c.spend.get(_window(s, now_s), 0.0) >= s.budget:
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
                w = _window(s, now_s)
                c.spend[w] = c.spend.get(w, 0.0) + cost
            if s.parallel >= 0:
                c.parallel[request_id] = now + deadline_s
        return Ticket(request_id, scopes, tokens, cost, minute, now_s)

    def settle(self, ticket: Ticket, tokens: int, cost: float) -> None:
        for s in ticket.scopes:
            c = self._scopes.get(s.name)
            if c is None:
                continue
            if s.tpm >= 0 and ticket.minute in c.tpm:
                c.tpm[ticket.minute] += tokens - ticket.reserved_tokens
            if s.budget >= 0:
                w = _window(s, ticket.now_s)
                if w in c.spend:
                    c.spend[w] += cost - ticket.reserved_cost
            if s.parallel >= 0:
                c.parallel.pop(ticket.request_id, None)


def _window(scope: Scope, now_s: int) -> str:
    return str(now_s // scope.budget_seconds) if scope.budget_seconds else "all"


def _bump(counts: dict[int, int], minute: int, by: int) -> None:
    counts[minute] = counts.get(minute, 0) + by
    for old in [m for m in counts if m < minute - 1]:
        del counts[old]


def reserve_tokens(request_bytes: int, max_tokens: int | None) -> int:
    """What a request may use: its prompt (a token is rarely under 4 bytes of JSON) and its completion cap."""
    return math.ceil(request_bytes / 4) + (max_tokens or 0)
