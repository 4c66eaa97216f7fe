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
from typing import Any

from gateway.governance.bounds import MAX_COST, MAX_RESERVED_TOKENS, MAX_SLOT_LIFE_MS
from gateway.governance.limits.redis_leases import Lease, LeaseCall
from gateway.governance.limits.redis_pipe import Encoded, RedisPipe, is_outage
from gateway.governance.limits.redis_scripts import LEASE_LUA
from gateway.governance.limits.redis_settlement import RedisSettlement
from gateway.governance.limits.scopes import Scope, Ticket, refused, window_name
from gateway.http.errors import GatewayError
from gateway.tasks import cancel


class RedisLimiter(RedisSettlement):
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
        behaviour = "fail-open" if fail_open else "fail-closed"
        self.description = (f"redis (shared by replicas; on_unavailable: {behaviour}; "
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
        # Bounded here too, whatever the caller computed: every number sent to Redis stays exact in Lua.
        tokens = min(max(tokens, 0), MAX_RESERVED_TOKENS)
        cost = min(cost, MAX_COST) if cost > 0 else 0.0  # NaN compares false: counted as 0
        ticket = Ticket(request_id, scopes, tokens, cost)
        # From config (timeouts.total): Redis' PEXPIRE takes an integer, so a huge or fractional one is bounded.
        self._slot_life_ms = int(min(max(deadline_s, 0.0), MAX_SLOT_LIFE_MS / 1000) * 1000)
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
            except BaseException as exc:  # noqa: BLE001 - every failure ends this wait; only an outage is everyone's
                self._abandon(call)
                if not is_outage(exc):
                    raise self._failed(exc) from None
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
            if (s.rpm >= 0 or s.tpm >= 0) and (
                    lease.minute != minute or (s.rpm >= 0 and lease.requests < 1)
                    or (s.tpm >= 0 and lease.tokens < ticket.reserved_tokens)):
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
                result: list[Any] = await self.client.script(LEASE_LUA, call.args, self._limits(scopes))
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
                for v in (f"{self.prefix}:{s.name}", s.rpm, s.tpm, repr(float(s.budget)), s.budget_seconds,
                          s.parallel)])
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

    def _failed(self, exc: BaseException) -> GatewayError:
        """Redis refused this call's script (a bug, or input nothing bounded): this call fails, logged; the
        limiter stays up and keeps counting every other call."""
        self._event("limits_error", error=f"{type(exc).__name__}: {exc}"[:300], effect="this call refused (500)")
        return GatewayError(500, "The rate limiter could not count this call (the error is logged as "
                            "limits_error); other calls are not affected.", "server_error", None, "limits_error")

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
