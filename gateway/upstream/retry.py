"""How long to wait before the next attempt: exponential backoff with full jitter, and Retry-After."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


class Backoff:
    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()

    def delay(self, retry: int) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**retry)]."""
        return self._rng.uniform(0, min(self.cap, self.base * (2 ** max(0, retry - 1))))


# An upstream's Retry-After keeps a replica out of rotation: a year (or `inf`) from a broken or hostile
# upstream must not take it out for good. Longer waits are capped; the circuit breaker judges it meanwhile.
RETRY_AFTER_CAP = 300.0


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date, at most RETRY_AFTER_CAP;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()[:64]
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return min(RETRY_AFTER_CAP, max(0.0, seconds)) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(RETRY_AFTER_CAP, max(0.0, (when - datetime.now(UTC)).total_seconds()))
