"""Limits shared by every replica through Redis, admitted mostly in-process from small leases.

Each replica leases allowance from Redis per scope: a number of requests and tokens of
the current minute, an amount of the budget window, a number of parallel slots. A call
that fits in what the replica holds for every one of its scopes is admitted with no
round trip. Otherwise the replica sets aside what it holds towards the call, and one
Lua script checks every scope where that is not enough and, only if all pass, grants
the rest of the call plus a little more (`lease_requests` more calls' worth, at most
1/8 of what the limit still leaves free), counting the grant in Redis at once.

So Redis always counts at least what replicas admitted: RPM and parallel limits are
never exceeded, and TPM and budgets by at most one call's reservation per window (a
call is admitted while the count is below the limit), whatever the number of replicas.
The price of leasing is the other way round: a call may be refused while another
replica holds unused allowance. Every `settle_interval_ms` each replica settles
finished calls (reservation replaced by actual use) and gives back what scopes idle
since the previous flush hold, so such a refusal lasts at most two intervals after the
other replica goes idle; near a limit leases shrink to the call itself.
`lease_requests: 0` turns leasing off (one round trip per call, no allowance held).

A round trip whose caller left (client gone, timeout) still completes in the
background and its grant is kept as allowance: nothing Redis counted is forgotten.
Parallel slots a replica holds are written to Redis as an absolute number with a
heartbeat deadline (`timeouts.total` + 60 s ahead) every interval, so a lost give-back
heals at the next flush, and a replica that dies frees its slots at the deadline.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.http.errors import GatewayError
from gateway.governance.limits.scopes import Scope, Ticket, refused, window_name
from gateway.governance.limits.redis_pipe import Encoded, RedisPipe, ScriptNotRun
from gateway.tasks import cancel

LEASE_SHARE = 8  # a lease's extra is at most 1/LEASE_SHARE of what the limit leaves free

# ARGV: replica, slot_life_ms, call_tokens, call_cost, lease_requests, held_at_s, n, then 8 values per scope
# (per dimension requests, tokens, cost, slots: what the replica set aside for this call and what it holds
# besides, for the minute or window of held_at_s), then 6 per scope (prefix, rpm, tpm, budget, budget_seconds,
# parallel). A dimension is checked where the call needs more than was set aside (a budget also for a call that
# reserves nothing). Returns {0, now_ms, then per scope: requests, tokens, cost, slots granted} or
# {scope_index, what, value, now_s}.
LEASE_LUA = """
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(now_s / 60)
local rid, life, nt, nc, lease, held_at, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local share = """ + str(LEASE_SHARE) + """
local function win(secs) if secs > 0 then return tostring(math.floor(now_s / secs)) end return 'all' end
local function slots(p)
  local v = redis.call('HVALS', p .. ':ph')
  local total = 0
  for i = 1, #v do total = total + tonumber(v[i]) end
  return total
end
local function clear_dead(p, most)
  -- slot holders past their deadline are replicas that died
  local dead = redis.call('ZRANGEBYSCORE', p .. ':pl', '-inf', now_ms, 'LIMIT', 0, most)
  if #dead > 0 then
    redis.call('HDEL', p .. ':ph', unpack(dead))
    redis.call('ZREM', p .. ':pl', unpack(dead))
  end
end
local lim = 8 + 8 * n
local plan = {}
for s = 0, n - 1 do
  local b, h = lim + s * 6, 8 + s * 8
  local p, rpm, tpm, budget, bsecs, par = ARGV[b], tonumber(ARGV[b+1]), tonumber(ARGV[b+2]),
    tonumber(ARGV[b+3]), tonumber(ARGV[b+4]), tonumber(ARGV[b+5])
  local held = {}
  for i = 0, 7 do held[i] = tonumber(ARGV[h + i]) end
  if math.floor(held_at / 60) ~= minute then held[0], held[1], held[2], held[3] = 0, 0, 0, 0 end
  if bsecs > 0 and math.floor(held_at / bsecs) ~= math.floor(now_s / bsecs) then held[4], held[5] = 0, 0 end
  -- per dimension: limit, count, need, set aside, held besides, most held after the grant, name
  local d = {{rpm, 0, 1, held[0], held[1], lease, 'rpm'}, {tpm, 0, nt, held[2], held[3], lease * nt, 'tpm'},
             {budget, 0, nc, held[4], held[5], lease * nc, 'budget'}, {par, 0, 1, held[6], held[7], lease, 'parallel'}}
  if rpm >= 0 or tpm >= 0 then
    local v = redis.call('HMGET', p .. ':m:' .. minute, 'r', 't')
    d[1][2], d[2][2] = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  end
  if budget >= 0 then d[3][2] = tonumber(redis.call('GET', p .. ':spend:' .. win(bsecs)) or '0') end
  if par >= 0 then
    clear_dead(p, 16)
    d[4][2] = slots(p)
  end
  for i = 1, 4 do
    local x = d[i]
    if x[1] >= 0 and (x[3] > x[4] or (i == 3 and x[3] <= 0)) and x[2] >= x[1] then
      if i == 4 then
        clear_dead(p, 100000)
        x[2] = slots(p)
      end
      if x[2] >= x[1] then return {s + 1, x[7], string.format('%.17g', x[2]), now_s} end
    end
  end
  plan[s] = d
end
local out = {0, now_ms}
for s = 0, n - 1 do
  local b = lim + s * 6
  local p, bsecs = ARGV[b], tonumber(ARGV[b+4])
  local g = {0, 0, 0, 0}
  for i, x in ipairs(plan[s]) do
    if x[1] >= 0 then
      -- what the call lacks, plus up to `most` held in all but at most 1/share of what stays free
      local short = math.max(0, x[3] - x[4])
      local free = x[1] - x[2] - short
      local more = 0
      if free > 0 and x[6] > x[5] + x[3] then more = math.min(x[6] - x[5] - x[3], free / share) end
      if i ~= 3 then more = math.floor(more) end
      g[i] = short + more
    end
  end
  local k = p .. ':m:' .. minute
  local fresh = redis.call('EXISTS', k) == 0
  if g[1] > 0 then redis.call('HINCRBY', k, 'r', g[1]) end
  if g[2] > 0 then redis.call('HINCRBY', k, 't', g[2]) end
  if fresh and (g[1] > 0 or g[2] > 0) then redis.call('EXPIRE', k, 120) end
  if g[3] > 0 then
    k = p .. ':spend:' .. win(bsecs)
    if redis.call('EXISTS', k) == 0 and bsecs > 0 then
      redis.call('SET', k, string.format('%.17g', g[3]), 'EX', bsecs + 86400)
    else
      redis.call('INCRBYFLOAT', k, string.format('%.17g', g[3]))
    end
  end
  if g[4] > 0 then
    redis.call('HINCRBY', p .. ':ph', rid, g[4])
    redis.call('ZADD', p .. ':pl', now_ms + life, rid)
    redis.call('PEXPIRE', p .. ':ph', life + 60000)
    redis.call('PEXPIRE', p .. ':pl', life + 60000)
  end
  out[#out + 1] = g[1]
  out[#out + 1] = g[2]
  out[#out + 1] = string.format('%.17g', g[3])
  out[#out + 1] = g[4]
end
return out
"""

# ARGV: replica, slot_life_ms, count, then 4 values per operation: op, key, amount, budget_seconds.
# op: 'r' or 't' (requests or tokens of a minute hash), 'c' (a budget window), 'P' (the slots this replica
# holds, absolute, with its heartbeat; key = prefix), 'h' (heartbeat only; key = prefix). Counts never go below
# zero (a Redis that lost its data).
FLUSH_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, life = ARGV[1], tonumber(ARGV[2])
local i = 4
for e = 1, tonumber(ARGV[3]) do
  local op, k, v, bsecs = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), tonumber(ARGV[i+3])
  i = i + 4
  if op == 'r' or op == 't' then
    local now = redis.call('HINCRBY', k, op, v)
    if now < 0 then redis.call('HSET', k, op, 0) end
    if redis.call('TTL', k) < 0 then redis.call('EXPIRE', k, 120) end
  elseif op == 'c' then
    local now = tonumber(redis.call('INCRBYFLOAT', k, ARGV[i-2]))
    if now < 0 then redis.call('SET', k, 0, 'KEEPTTL') end
    if bsecs > 0 and redis.call('TTL', k) < 0 then redis.call('EXPIRE', k, bsecs + 86400) end
  elseif op == 'P' and v <= 0 then
    redis.call('HDEL', k .. ':ph', rid)
    redis.call('ZREM', k .. ':pl', rid)
  else
    if op == 'P' then redis.call('HSET', k .. ':ph', rid, v) end
    redis.call('ZADD', k .. ':pl', now_ms + life, rid)
    redis.call('PEXPIRE', k .. ':ph', life + 60000)
    redis.call('PEXPIRE', k .. ':pl', life + 60000)
  end
end
return 1
"""

# ARGV: count, then 3 values per counter: key, amount, budget_seconds. Raises each budget counter to `amount`.
RAISE_LUA = """
local raised = 0
for i = 2, tonumber(ARGV[1]) * 3, 3 do
  local k, v, bsecs = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2])
  if tonumber(redis.call('GET', k) or '0') < v then
    redis.call('SET', k, ARGV[i+1])
    if bsecs > 0 then redis.call('EXPIRE', k, bsecs + 86400) end
    raised = raised + 1
  end
end
return raised
"""


@dataclass(slots=True)
class Lease:
    """What this replica holds of one scope."""

    key: str  # the scope's Redis prefix
    budget_seconds: int
    minute: int = -1  # of `requests` and `tokens`
    requests: int = 0
    tokens: int = 0
    window: str = ""  # of `cost` (see limits.window_name)
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


class RedisLimiter:
    """Counters in Redis, shared by every replica; bounded waits, fail-open or fail-closed when unreachable."""

    def __init__(self, url: str, *, fail_open: bool, timeout_ms: float, retry_after_ms: float,
                 settle_interval_ms: float, on_event: Callable[..., None], lease_requests: int = 32,
                 prefix: str = "llmp") -> None:
        self.client = RedisPipe(url)
        self.replica = os.urandom(8).hex()
        self.fail_open = fail_open
        self.timeout = timeout_ms / 1000
        self.retry_after = retry_after_ms / 1000
        self.settle_interval = settle_interval_ms / 1000
        self.lease_requests = lease_requests
        self.prefix = prefix
        self._event = on_event
        self._encoded: dict[tuple[Scope, ...], Encoded] = {}
        self._leases: dict[str, Lease] = {}
        self._locks: dict[tuple[Scope, ...], asyncio.Lock] = {}
        self._in_flight: set[asyncio.Task[list[Any]]] = set()
        # settlement deltas: ("t", scope, minute, 0) or ("c", scope, window name, budget_seconds) -> amount
        self._owed: dict[tuple[str, str, int | str, int], float] = {}
        self._offset: float | None = None  # Redis clock minus time.monotonic(), in seconds
        self._slot_life_ms = 0
        self._down_until = 0.0
        self._down = False
        self._flush_failing = False
        self._task: asyncio.Task[None] | None = None
        self.round_trips = 0  # lease scripts sent (for tests and benchmarks)
        self.description = (f"redis (shared by replicas; on_unavailable: {'fail-open' if fail_open else 'fail-closed'}; "
                            f"lease_requests: {lease_requests})")

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        # Round trips in flight are waited for, not cancelled: Redis may have granted them already.
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        try:
            async with asyncio.timeout(2):
                await self.flush(final=True)
        except Exception:  # noqa: BLE001 - at shutdown, what is not given back expires with its window or deadline
            pass
        await self.client.close()

    # ---- admission ------------------------------------------------------------------------------

    async def admit(self, request_id: str, scopes: tuple[Scope, ...], tokens: int, cost: float,
                    deadline_s: float) -> Ticket:
        ticket = Ticket(request_id, scopes, tokens, cost)
        self._slot_life_ms = int(deadline_s * 1000)
        if self._take(ticket):
            return ticket
        # One lease request per scope set at a time: calls that queued behind it use what it brought.
        async with self._lock(scopes):
            if self._take(ticket):
                return ticket
            if self._down and time.monotonic() < self._down_until:
                return self._fallback(ticket)  # do not make every call wait out the timeout during an outage
            call = self._begin(ticket)
            task = asyncio.get_running_loop().create_task(self._round_trip(call))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
            try:
                async with asyncio.timeout(self.timeout):
                    result = await asyncio.shield(task)
            except (asyncio.CancelledError, GeneratorExit):
                self._abandon(call)
                raise
            except BaseException as exc:  # noqa: BLE001 - any failure to count is "unavailable", never a hang
                self._abandon(call)
                self._unavailable(exc)
                return self._fallback(ticket)
        self._recovered()
        if int(result[0]) != 0:
            return self._refuse(scopes, result)
        return ticket

    def _lock(self, scopes: tuple[Scope, ...]) -> asyncio.Lock:
        lock = self._locks.get(scopes)
        if lock is None:
            if len(self._locks) > 10_000:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[scopes] = asyncio.Lock()
        return lock

    def _clock(self) -> tuple[int, int]:
        """Redis' time now, as this replica estimates it: (minute, second)."""
        now = time.monotonic() + (self._offset or 0.0)
        return int(now // 60), int(now)

    def _take(self, ticket: Ticket) -> bool:
        """Admit from what this replica holds for every scope, or take nothing."""
        if self._offset is None:
            return False
        minute, now_s = self._clock()
        leases = self._leases
        found = []
        for s in ticket.scopes:
            lease = leases.get(s.name)
            if lease is None:
                return False
            if s.rpm >= 0 or s.tpm >= 0:
                if lease.minute != minute or (s.rpm >= 0 and lease.requests < 1) or (
                        s.tpm >= 0 and lease.tokens < ticket.reserved_tokens):
                    return False
            # A call that reserves no cost is checked against the budget in Redis every time.
            if s.budget >= 0 and (lease.window != window_name(now_s, s.budget_seconds) or ticket.reserved_cost <= 0
                                  or lease.cost < ticket.reserved_cost):
                return False
            if s.parallel >= 0 and lease.used >= lease.held:
                return False
            found.append(lease)
        for s, lease in zip(ticket.scopes, found):
            if s.rpm >= 0:
                lease.requests -= 1
            if s.tpm >= 0:
                lease.tokens -= ticket.reserved_tokens
            if s.budget >= 0:
                lease.cost -= ticket.reserved_cost
            if s.parallel >= 0:
                lease.used += 1
            lease.busy = True
        ticket.minute, ticket.now_s = minute, now_s
        return True

    def _lease_of(self, s: Scope) -> Lease:
        lease = self._leases.get(s.name)
        if lease is None:
            lease = self._leases[s.name] = Lease(f"{self.prefix}:{s.name}", s.budget_seconds)
        elif lease.budget_seconds != s.budget_seconds:  # the budget's duration changed: its windows did too
            lease.budget_seconds, lease.window, lease.cost = s.budget_seconds, "", 0.0
        lease.slots = lease.slots or s.parallel >= 0
        return lease

    def _begin(self, ticket: Ticket) -> LeaseCall:
        """Set aside, synchronously, what this replica holds towards the call (so that nothing else spends it
        meanwhile), and the round trip's arguments."""
        minute, now_s = self._clock()
        tokens, cost = ticket.reserved_tokens, ticket.reserved_cost
        args: list[Any] = [self.replica, self._slot_life_ms, tokens, repr(cost), self.lease_requests, now_s,
                           len(ticket.scopes)]
        aside = []
        for s in ticket.scopes:
            lease = self._lease_of(s)
            lease.pending += 1
            lease.busy = True
            this_minute = lease.minute == minute
            this_window = lease.window == window_name(now_s, s.budget_seconds)
            r = min(lease.requests, 1) if s.rpm >= 0 and this_minute else 0
            t = min(lease.tokens, tokens) if s.tpm >= 0 and this_minute else 0
            c = min(lease.cost, cost) if s.budget >= 0 and this_window else 0.0
            p = 1 if s.parallel >= 0 and lease.held > lease.used else 0
            r, t, c = max(r, 0), max(t, 0), max(c, 0.0)
            lease.requests -= r
            lease.tokens -= t
            lease.cost -= c
            lease.used += p
            args += (r, lease.requests if this_minute else 0, t, lease.tokens if this_minute else 0,
                     repr(c), repr(lease.cost) if this_window else 0, p, lease.held - lease.used)
            aside.append((r, t, c, p))
        return LeaseCall(ticket, minute, now_s, aside, args)

    async def _round_trip(self, call: LeaseCall) -> list[Any]:
        """The lease script; its grant goes to the leases even when the caller has left."""
        scopes = call.ticket.scopes
        self.round_trips += 1
        sent = time.monotonic()
        try:
            async with asyncio.timeout(max(self.timeout * 20, 5.0)):
                result = await self.client.script(LEASE_LUA, call.args, self._limits(scopes))
        except TimeoutError:
            # A Redis this slow is treated as gone: drop the connection, so that no late reply is half-applied.
            # If Redis still runs the script, its grant stays counted until its window ends (never over a limit).
            self.client.abort()
            self._restore(call)
            raise
        except BaseException:
            self._restore(call)
            raise
        if int(result[0]) != 0:
            self._restore(call)
            return result
        # Redis' clock, read in the middle of the round trip: the windows this replica uses until the next lease.
        # Only a prompt reply says when Redis ran the script; a late one would skew the clock.
        now_ms = int(result[1])
        returned = time.monotonic()
        if self._offset is None or returned - sent <= self.timeout:
            self._offset = now_ms / 1000 - (sent + returned) / 2
        minute, now_s = now_ms // 60_000, now_ms // 1000
        ticket = call.ticket
        for i, (s, (r, t, c, p)) in enumerate(zip(scopes, call.aside)):
            got_r, got_t, got_c, got_p = result[2 + 4 * i:6 + 4 * i]
            lease = self._lease_of(s)
            lease.pending -= 1
            lease.busy = True
            window = window_name(now_s, s.budget_seconds)
            # What was set aside in another minute or window counted there, not towards this call.
            if call.minute != minute:
                r = t = 0
            if window_name(call.now_s, s.budget_seconds) != window:
                c = 0.0
            if lease.minute != minute:
                lease.minute, lease.requests, lease.tokens = minute, 0, 0
            if lease.window != window:
                lease.window, lease.cost = window, 0.0
            # The grant covers what the call lacked and a lease beyond: the call keeps its part.
            if s.rpm >= 0:
                lease.requests += int(got_r) - (1 - r)
            if s.tpm >= 0:
                lease.tokens += int(got_t) - (ticket.reserved_tokens - t)
            if s.budget >= 0:
                lease.cost += float(got_c) - (ticket.reserved_cost - c)
            if s.parallel >= 0:
                lease.held += int(got_p)
                lease.used += 1 - p
        ticket.minute, ticket.now_s = minute, now_s
        call.granted = True
        if call.abandoned:
            self._release(ticket)
        return result

    def _restore(self, call: LeaseCall) -> None:
        """No grant: give back to the leases what was set aside for the call."""
        for s, (r, t, c, p) in zip(call.ticket.scopes, call.aside):
            lease = self._lease_of(s)
            lease.pending -= 1
            if lease.minute == call.minute:
                lease.requests += r
                lease.tokens += t
            if lease.window == window_name(call.now_s, s.budget_seconds):
                lease.cost += c
            lease.used = max(0, lease.used - p)

    def _abandon(self, call: LeaseCall) -> None:
        """The caller left: what its round trip was granted for it stays with the leases, as allowance."""
        call.abandoned = True
        if call.granted:
            self._release(call.ticket)

    def _release(self, ticket: Ticket) -> None:
        """Give an admitted call's share back to the leases (its call never ran)."""
        for s in ticket.scopes:
            lease = self._leases.get(s.name)
            if lease is None:
                continue
            if lease.minute == ticket.minute:
                if s.rpm >= 0:
                    lease.requests += 1
                if s.tpm >= 0:
                    lease.tokens += ticket.reserved_tokens
            if s.budget >= 0 and lease.window == window_name(ticket.now_s, s.budget_seconds):
                lease.cost += ticket.reserved_cost
            if s.parallel >= 0 and lease.used > 0:
                lease.used -= 1

    def _finished(self, task: asyncio.Task[list[Any]]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that left already reported the failure

    def _limits(self, scopes: tuple[Scope, ...]) -> Encoded:
        limits = self._encoded.get(scopes)
        if limits is None:
            # A scope set's limits are the same on every call: encode them once.
            if len(self._encoded) > 10_000:
                self._encoded.clear()
            limits = self._encoded[scopes] = Encoded([
                v for s in scopes
                for v in (f"{self.prefix}:{s.name}", s.rpm, s.tpm, repr(float(s.budget)), s.budget_seconds, s.parallel)])
        return limits

    def _refuse(self, scopes: tuple[Scope, ...], result: list[Any]) -> Ticket:
        scope = scopes[int(result[0]) - 1]
        what = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        now_s = int(result[3])
        retry = 60 - now_s % 60 if what in ("rpm", "tpm") else 1
        if what == "budget":
            retry = scope.budget_seconds - now_s % scope.budget_seconds if scope.budget_seconds else 86400
        raise refused(scope, what, retry)

    # ---- outages --------------------------------------------------------------------------------

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

    # ---- settlement -----------------------------------------------------------------------------

    def settle(self, ticket: Ticket, tokens: int, cost: float) -> None:
        """The call ended: its slot is free at once here; the difference to its reservation goes to Redis
        with the next flush."""
        if not ticket.counted:
            return
        dt = tokens - ticket.reserved_tokens
        dc = cost - ticket.reserved_cost
        owed = self._owed
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

    async def raise_spend(self, spends: list[tuple[str, int, float]]) -> None:
        now_s = self._clock()[1] if self._offset is not None else int(time.time())
        args: list[Any] = []
        for name, budget_seconds, amount in spends:
            window = window_name(now_s, budget_seconds)
            args += (f"{self.prefix}:{name}:spend:{window}", repr(amount), budget_seconds)
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
            lease = self._leases.get(name)
            if lease is not None and not (lease.busy or lease.pending or lease.held or lease.requests
                                          or lease.tokens or lease.cost):
                del self._leases[name]

