"""Shutting a simulated replica down the way vLLM does with `--shutdown-timeout`: refuse new requests, drain."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.sim.answers import json_response

# vLLM (PR vllm-project/vllm#34730, re-landed as #36666, v0.18.0): on SIGTERM the API server
# rejects new requests at once and lets those in flight finish for up to `--shutdown-timeout`
# seconds (0, the default, aborts them). The rejection is its ScalingMiddleware's 503 with this
# body while the listener stays open (vllm/entrypoints/serve/middleware.py); `/live` and
# `/metrics` stay exempt, and `/health` (the readiness probe) answers 503 too.
REFUSAL = {"error": "Server is unavailable. Please try again later."}
EXEMPT_PATHS = frozenset({"/live", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Admission:
    """Counts requests in flight; once draining, refuses new ones with 503 and can wait for the rest."""

    def __init__(self) -> None:
        self.draining = False
        self.refused = 0  # requests refused while draining
        self.finished_in_drain = 0  # requests in flight when the drain began that ended on their own
        self._active: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in EXEMPT_PATHS:
            return await handler(request)
        if self.draining:
            self.refused += 1
            return json_response(REFUSAL, 503)
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self._active.discard(task)
            if not self._active:
                self._idle.set()

    async def drain(self, timeout: float) -> int:
        """Refuse new requests, wait up to `timeout` s for those in flight, abort the rest; how many were aborted."""
        self.draining = True
        started = len(self._active)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        left = list(self._active)
        for task in left:
            task.cancel()  # the client sees its connection drop mid-answer, as with vLLM's abort
        if left:
            await asyncio.wait(left, timeout=5)
        self.finished_in_drain = started - len(left)
        return len(left)
