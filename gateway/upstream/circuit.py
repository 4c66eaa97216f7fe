"""Per-replica health: a circuit that opens after repeated failures and half-opens after a cooldown."""

from __future__ import annotations

import time
from collections.abc import Callable

StateListener = Callable[[str], None]


class CircuitBreaker:
    """closed -> open after `failures` failures in a row; open -> half-open after `cooldown`.

    Half-open lets one trial call through: success closes the circuit, failure
    opens it again for another cooldown.
    """

    __slots__ = ("_clock", "_count", "_listener", "_opened_at", "_trial_out", "cooldown", "failures")

    def __init__(self, failures: int, cooldown: float, listener: StateListener | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._count = 0
        self._opened_at: float | None = None
        self._trial_out = False
        self._listener = listener
        self._clock = clock

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown:
            return "half_open"
        return "open"

    def available(self) -> bool:
        """May a call go to this replica now? (Half-open admits a single trial at a time.)"""
        if self._opened_at is None:
            return True
        return self.state == "half_open" and not self._trial_out

    def on_attempt(self) -> None:
        if self._opened_at is not None:
            self._trial_out = True

    def on_success(self) -> None:
        self._count = 0
        self._trial_out = False
        if self._opened_at is not None:
            self._opened_at = None
            self._notify("closed")

    def on_abandon(self) -> None:
        """The call ended for reasons of its own (client gone, request refused): no verdict on the replica."""
        self._trial_out = False

    def on_failure(self) -> None:
        self._count += 1
        was_open = self._opened_at is not None
        if was_open or self._count >= self.failures:
            self._opened_at = self._clock()
            self._trial_out = False
            self._notify("open")

    def _notify(self, state: str) -> None:
        if self._listener is not None:
            self._listener(state)
