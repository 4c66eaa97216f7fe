"""Leased limits against a real Redis: most calls admitted without a round trip, and still never over the limit.

Several `RedisLimiter` instances on one Redis stand for replicas (one event loop, so the
races are interleavings of round trips, the same as between processes).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator

import pytest
import redis

from gateway.governance.limits.redis_limiter import RedisLimiter
from gateway.governance.limits.scopes import NO_LIMIT, Scope, Ticket
from gateway.http.errors import GatewayError
from tests.gateway.servers import RedisServer

DAY = 86400


def scope(**limits: float) -> Scope:
    values = {"rpm": NO_LIMIT, "tpm": NO_LIMIT, "budget": NO_LIMIT, "parallel": NO_LIMIT, **limits}
    return Scope("k:test", "this key", rpm=int(values["rpm"]), tpm=int(values["tpm"]), budget=values["budget"],
                 budget_seconds=DAY if values["budget"] >= 0 else 0, parallel=int(values["parallel"]))


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[list[RedisLimiter]]:
    made: list[RedisLimiter] = []

    def make(lease_requests: int = 32) -> RedisLimiter:
        limiter = RedisLimiter(redis_server.url, fail_open=False, timeout_ms=1000, retry_after_ms=0,
                               settle_interval_ms=20, lease_requests=lease_requests, on_event=lambda *a, **k: None)
        made.append(limiter)
        return limiter

    yield make  # type: ignore[misc]
    for limiter in made:
        await limiter.stop()


async def start(limiter: RedisLimiter) -> RedisLimiter:
    await limiter.start()
    return limiter


async def away_from_minute_boundary() -> None:
    if time.time() % 60 > 55:
        await asyncio.sleep(61 - time.time() % 60)


def minute_count(server: RedisServer, field: str = "r") -> int:
    r = redis.Redis(port=server.port)
    keys = r.keys("llmp:k:test:m:*")
    return sum(int(r.hget(k, field) or 0) for k in keys)


async def admit(limiter: RedisLimiter, scopes: tuple[Scope, ...], tokens: int = 10, cost: float = 0.0,
                deadline_s: float = 60) -> Ticket | None:
    try:
        return await limiter.admit("r", scopes, tokens, cost, deadline_s)
    except GatewayError as exc:
        assert exc.status == 429, exc.message
        return None


async def test_most_calls_are_admitted_without_a_round_trip(replicas, redis_server) -> None:
    limiter = await start(replicas())
    scopes = (scope(rpm=1_000_000, tpm=10**9, budget=1e6, parallel=100),)
    await away_from_minute_boundary()
    for _ in range(400):
        ticket = await admit(limiter, scopes, tokens=50, cost=0.001)
        assert ticket is not None
        limiter.settle(ticket, 30, 0.0006)
    assert limiter.round_trips <= 400 / 20, f"{limiter.round_trips} round trips for 400 calls"
    await limiter.stop()
    # What was leased and not used went back; settlements replaced reservations by use.
    assert minute_count(redis_server, "r") == 400
    assert minute_count(redis_server, "t") == 400 * 30
    spend = float(redis.Redis(port=redis_server.port).get(f"llmp:k:test:spend:{int(time.time()) // DAY}"))
    assert spend == pytest.approx(400 * 0.0006)


async def test_without_leases_every_call_is_one_round_trip(replicas) -> None:
    limiter = await start(replicas(lease_requests=0))
    scopes = (scope(rpm=1_000_000),)
    await away_from_minute_boundary()
    for _ in range(50):
        assert await admit(limiter, scopes) is not None
    assert limiter.round_trips == 50


async def test_rpm_is_never_exceeded_by_replicas_racing_with_leases(replicas, redis_server) -> None:
    limit = 500
    group = [await start(replicas()) for _ in range(3)]
    scopes = (scope(rpm=limit),)
    await away_from_minute_boundary()

    async def demand(limiter: RedisLimiter) -> int:
        admitted = 0
        for _ in range(limit):  # each replica alone asks for the whole limit
            admitted += await admit(limiter, scopes) is not None
            await asyncio.sleep(0)
        return admitted

    counts = await asyncio.gather(*(demand(r) for r in group))
    assert sum(counts) == limit, f"{counts}: leases never overshoot, and under demand every lease is used"
    assert all(c > 0 for c in counts), counts
    refusals = 3 * limit - limit  # each a round trip
    assert sum(r.round_trips for r in group) - refusals < limit / 4
    for r in group:
        await r.flush(final=True)
    assert minute_count(redis_server) == limit


async def test_an_idle_replica_gives_back_its_allowance_within_one_interval(replicas) -> None:
    a, b = await start(replicas()), await start(replicas())
    scopes = (scope(rpm=100),)
    await away_from_minute_boundary()
    assert await admit(a, scopes) is not None  # a leases more than the call: 1 + (99 - 1) / 8
    assert a._leases["k:test"].requests > 0
    await asyncio.sleep(0.1)  # a's flushes: busy, then idle -> everything unused goes back
    assert "k:test" not in a._leases
    admitted = [await admit(b, scopes) for _ in range(120)]
    assert sum(t is not None for t in admitted) == 99


async def test_parallel_slots_never_exceed_the_limit_and_free_slots_move_between_replicas(replicas) -> None:
    a, b = await start(replicas()), await start(replicas())
    scopes = (scope(parallel=40),)
    held_a = [t for t in await asyncio.gather(*(admit(a, scopes) for _ in range(30))) if t]
    held_b = [t for t in await asyncio.gather(*(admit(b, scopes) for _ in range(30))) if t]
    assert len(held_a) + len(held_b) == 40, (len(held_a), len(held_b))
    assert await admit(a, scopes) is None and await admit(b, scopes) is None
    for ticket in held_a:
        a.settle(ticket, 0, 0.0)
    await asyncio.sleep(0.1)  # a gives its free slots back
    more_b = [t for t in await asyncio.gather(*(admit(b, scopes) for _ in range(30))) if t]
    assert len(held_b) + len(more_b) == 40
    assert await admit(a, scopes) is None, "a holds no slot it gave back"


async def test_slots_of_a_replica_that_died_are_freed_at_its_deadline(replicas, redis_server) -> None:
    a = replicas()  # never started: no flush, no heartbeat, as after a SIGKILL
    b = await start(replicas())
    scopes = (scope(parallel=5),)
    assert all([await admit(a, scopes, deadline_s=0.5) for _ in range(5)])
    assert await admit(b, scopes) is None
    await asyncio.sleep(0.6)
    assert await admit(b, scopes) is not None


async def test_a_lease_held_over_the_budget_goes_back_and_the_budget_holds(replicas, redis_server) -> None:
    a, b = await start(replicas()), await start(replicas())
    scopes = (scope(budget=1.0),)
    ticket = await admit(a, scopes, cost=0.01)
    assert ticket is not None and a._leases["k:test"].cost > 0
    a.settle(ticket, 0, 0.004)
    await asyncio.sleep(0.1)
    spend = float(redis.Redis(port=redis_server.port).get(f"llmp:k:test:spend:{int(time.time()) // DAY}"))
    assert spend == pytest.approx(0.004)
    spent = 0.004
    while (t := await admit(b, scopes, cost=0.01)) is not None:
        b.settle(t, 0, 0.01)
        spent += 0.01
    assert 1.0 - 0.01 <= spent <= 1.0 + 0.01 + 1e-9, "within one call's reservation of the budget"


async def fill(limiter: RedisLimiter, scopes: tuple[Scope, ...], **kwargs: float) -> list[Ticket]:
    got = []
    while (ticket := await admit(limiter, scopes, **kwargs)) is not None:  # type: ignore[arg-type]
        got.append(ticket)
    return got


async def test_what_a_lease_round_trip_counts_on_cannot_be_spent_meanwhile(replicas, redis_server) -> None:
    a, b = await start(replicas()), await start(replicas())
    scopes = (scope(rpm=20, tpm=10**6),)
    await away_from_minute_boundary()
    assert await admit(a, scopes) is not None and a._leases["k:test"].requests == 2
    admitted = 1 + len(await fill(b, scopes))  # b takes the rest of the minute
    # One call too big for a's tokens goes to Redis, counting on a's requests; two small ones want them too.
    got = await asyncio.gather(admit(a, scopes, tokens=1000), admit(a, scopes), admit(a, scopes))
    admitted += sum(t is not None for t in got)
    assert admitted == 20
    await a.stop()
    await b.stop()
    assert minute_count(redis_server) == 20


async def test_two_keys_of_one_team_never_spend_the_teams_allowance_twice(replicas) -> None:
    a, b = await start(replicas()), await start(replicas())
    team = Scope("t:team", "team `team`", rpm=20)
    one, two, three = (Scope(f"k:{n}", "this key", rpm=10**6) for n in ("one", "two", "three"))
    await away_from_minute_boundary()
    assert await admit(a, (two, team)) is not None  # a holds 2 of the team's requests
    admitted = 1 + len(await fill(b, (three, team)))
    got = await asyncio.gather(admit(a, (one, team)), admit(a, (two, team)), admit(a, (two, team)))
    assert admitted + sum(t is not None for t in got) == 20


async def test_a_caller_that_leaves_mid_round_trip_leaks_no_slot(replicas, redis_server) -> None:
    a, b = await start(replicas()), await start(replicas())
    scopes = (scope(parallel=4),)
    await admit(a, (Scope("k:warm", "warm", rpm=10**6),))  # connection open, script loaded
    caller = asyncio.ensure_future(admit(a, scopes, deadline_s=0.5))
    await asyncio.sleep(0)  # its round trip is on its way
    caller.cancel()  # the client hung up
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.1)  # the grant arrived and became allowance; a is idle and gives it back
    keep = await admit(a, scopes, deadline_s=0.5)  # one call stays in flight on a
    assert keep is not None
    await asyncio.sleep(0.1)
    got = await fill(b, scopes, deadline_s=0.5)
    assert len(got) == 3


async def test_slots_given_back_by_a_flush_that_failed_are_healed_by_the_next(replicas, redis_server) -> None:
    from gateway.governance.limits import redis_scripts

    a, b = replicas(), await start(replicas())
    scopes = (scope(parallel=8),)
    first, second = await admit(a, scopes), await admit(a, scopes)
    assert first and second and a._leases["k:test"].held == 2
    a.settle(first, 0, 0.0)
    a.settle(second, 0, 0.0)  # nothing in flight on a: its lease is forgotten once Redis has the give-back
    await a.flush()  # busy -> idle
    sent = a.client.script

    async def reset(source: str, args: list, tail: object = None, **kwargs: object) -> object:
        if source == redis_scripts.FLUSH_LUA:
            raise ConnectionError("connection reset by peer")
        return await sent(source, args, tail, **kwargs)

    a.client.script = reset  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await a.flush()  # its give-back of one slot is lost
    a.client.script = sent  # type: ignore[method-assign]
    await a.flush()  # slots are written as an absolute number: healed
    assert "k:test" not in a._leases
    assert len(await fill(b, scopes)) == 8


async def test_budget_counts_keep_every_digit(replicas, redis_server) -> None:
    a = await start(replicas())
    scopes = (scope(budget=1 / 3),)
    ticket = await admit(a, scopes, cost=0.01)
    a.settle(ticket, 0, 0.01)
    await a.stop()
    assert redis.Redis(port=redis_server.port).get(f"llmp:k:test:spend:{int(time.time()) // DAY}") == b"0.01"


async def test_a_lease_never_runs_inside_a_flush_so_absolute_slot_counts_stay_right(replicas, redis_server) -> None:
    a, b = replicas(), await start(replicas())  # a flushes only when told to
    scopes = (scope(parallel=2, tpm=10**9),)
    assert await admit(a, (Scope("k:warm", "warm", rpm=10**6),))
    await a.flush(final=True)  # both scripts known to Redis
    first = await admit(a, scopes)
    for i in range(300):  # a large flush: 300 settlements plus the slot count of k:test
        other = (Scope(f"k:other{i}", "this key", tpm=10**9),)
        a.settle(await admit(a, other), 5, 0.0)  # type: ignore[arg-type]
    flushing = asyncio.ensure_future(a.flush())
    await asyncio.sleep(0)
    second = await admit(a, scopes)  # a lease round trip while the flush is on its way
    await flushing
    assert first and second
    assert await admit(b, scopes) is None, "a's two calls hold both slots"


async def test_slot_counts_stay_right_after_redis_forgot_its_scripts(replicas, redis_server) -> None:
    a, b = await start(replicas()), await start(replicas())
    scopes = (scope(parallel=2, tpm=10**9),)
    assert await admit(a, scopes)
    await a.flush()
    redis.Redis(port=redis_server.port).script_flush()  # as after SCRIPT FLUSH on a live connection
    assert await admit(a, (Scope("k:other", "this key", rpm=10**6),))
    flushing = asyncio.ensure_future(a.flush())  # its slot count must not land after the next lease
    await asyncio.sleep(0)
    assert await admit(a, scopes)
    await flushing
    assert await admit(b, scopes) is None, "a's two calls hold both slots"


async def test_a_wrong_password_leaves_no_connection_open(redis_server) -> None:
    from tests.gateway.servers import free_port, wait_port

    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--requirepass", "right-password"], stdout=subprocess.DEVNULL)
    try:
        wait_port(port, 10, server)
        limiter = RedisLimiter(f"redis://:wrong-password@127.0.0.1:{port}/0", fail_open=True, timeout_ms=1000,
                               retry_after_ms=0, settle_interval_ms=20, on_event=lambda *a, **k: None)
        for _ in range(20):
            ticket = await limiter.admit("r", (scope(rpm=100),), 10, 0.0, 60)
            assert not ticket.counted  # fail-open: admitted, not counted
        connected = redis.Redis(port=port, password="right-password").info("clients")["connected_clients"]
        assert connected == 1, f"{connected} connections: only this check's should be open"
        await limiter.stop()
    finally:
        server.kill()
        server.wait()
