"""The circuit breaker's states, on a clock the test moves."""

from gateway.upstream.circuit import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failures=3, cooldown=10, clock=Clock())
    breaker.on_failure()
    breaker.on_failure()
    breaker.on_success()
    breaker.on_failure()
    breaker.on_failure()
    assert breaker.state == "closed" and breaker.available()
    breaker.on_failure()
    assert breaker.state == "open" and not breaker.available()


def test_half_open_admits_one_trial_and_its_verdict_decides() -> None:
    clock = Clock()
    changes: list[str] = []
    breaker = CircuitBreaker(failures=1, cooldown=10, listener=changes.append, clock=clock)
    breaker.on_failure()
    clock.now += 10
    assert breaker.state == "half_open" and breaker.available()
    breaker.on_attempt()
    assert not breaker.available(), "one trial at a time"
    breaker.on_failure()
    assert breaker.state == "open"
    clock.now += 10
    breaker.on_attempt()
    breaker.on_success()
    assert breaker.state == "closed" and changes == ["open", "open", "closed"]


def test_an_abandoned_trial_frees_the_half_open_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=10, clock=clock)
    breaker.on_failure()
    clock.now += 10
    breaker.on_attempt()
    breaker.on_abandon()  # the client hung up: no verdict
    assert breaker.available() and breaker.state == "half_open"
