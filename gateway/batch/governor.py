"""How fast one batch runs: at most `concurrency` lines in flight, and none started while interactive calls are.

Interactive calls in flight on the batch's deployments are the pools' own counters (Replica.in_flight, counted
around every upstream attempt in gateway/upstream/attempts.py) less the batch lines this gateway has in flight on
them: a batch pauses its next line while `yield_to_interactive` or more interactive calls are in flight there.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from gateway.upstream.routing import DeploymentPool

PAUSE_S = 0.02  # how often a paused batch looks again


class Governor:
    def __init__(self, concurrency: int, yield_to_interactive: int, pools: dict[str, list[DeploymentPool]],
                 batch_in_flight: Counter[str], stopping: Callable[[], bool]) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self.yield_to = yield_to_interactive
        self.pools = pools  # per model alias the batch runs on: its deployments
        self.batch_in_flight = batch_in_flight  # per model alias: this gateway's batch lines in flight
        self._stopping = stopping
        self.paused_s = 0.0  # time spent yielding, for the log and the bench

    def interactive(self) -> int:
        upstream = sum(p.in_flight for pools in self.pools.values() for p in pools)
        return max(0, upstream - sum(self.batch_in_flight[a] for a in self.pools))

    async def turn(self) -> bool:
        """Wait for a slot and for interactive traffic to ebb; False if the batch is stopping instead."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Polled: the pools' counters are plain integers on the hot path, with no event to wait on (by design).
        while self.yield_to and self.interactive() >= self.yield_to and not self._stopping():  # noqa: ASYNC110
            await asyncio.sleep(PAUSE_S)
        self.paused_s += loop.time() - started
        if self._stopping():
            self._slots.release()
            return False
        return True

    def done(self) -> None:
        self._slots.release()
