"""The daemon's one backoff: doubling, capped, jittered within bounds, optionally bounded in total."""

from __future__ import annotations

import pytest

from ufdl_node.backoff import Backoff, DeadlinePassed, Retrying, retry_transient
from ufdl_node.errors import ServerFault


def test_delays_double_up_to_the_cap_without_jitter():
    """first_s, then twice that, and so on, never above cap_s."""
    backoff = Backoff(1.0, 5.0, jitter=False)
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stays_within_half_and_one_and_a_half_and_under_the_cap():
    """Each jittered delay lies in 0.5x..1.5x of the plain one and never above the cap."""
    backoff = Backoff(1.0, 3.0)
    plain = [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    for base in plain:
        delay = backoff.next_delay()
        assert delay is not None and 0.5 * base <= delay <= min(1.5 * base, 3.0)


def test_reset_starts_again_from_the_first_delay():
    """After reset() the next delay is first_s again."""
    backoff = Backoff(0.5, 10.0, jitter=False)
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_a_passed_deadline_ends_the_delays():
    """With an overall deadline that has passed, next_delay answers None."""
    assert Backoff(1.0, 5.0, deadline_s=0.0).next_delay() is None


async def test_retry_transient_repeats_until_the_call_succeeds():
    """Transient failures are retried with the backoff's delays, each reported once; then the result."""
    failures = [ConnectionError("down"), ConnectionError("still down")]
    reported: list[str] = []
    slept: list[float] = []

    async def call() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    result = await retry_transient(call, Backoff(0.1, 1.0, jitter=False), sleep,
                                   lambda e, _: reported.append(str(e)), (ConnectionError,))
    assert result == "ok" and reported == ["down", "still down"] and slept == [0.1, 0.2]


async def test_retry_transient_lets_other_errors_through():
    """An error that is not transient propagates at once, untouched."""
    async def call() -> None:
        raise ValueError("refused")

    async def sleep(seconds: float) -> None:
        raise AssertionError("must not sleep")

    with pytest.raises(ValueError, match="refused"):
        await retry_transient(call, Backoff(0.1, 1.0), sleep, lambda e, d: None, (ConnectionError,))


async def test_retry_transient_gives_up_at_the_deadline():
    """Once the backoff's deadline has passed, the transient error ends in DeadlinePassed."""
    async def call() -> None:
        raise ConnectionError("down")

    async def sleep(seconds: float) -> None:
        raise AssertionError("must not sleep past the deadline")

    with pytest.raises(DeadlinePassed):
        await retry_transient(call, Backoff(0.1, 1.0, deadline_s=0.0), sleep, lambda e, d: None,
                              (ConnectionError,))


async def test_retry_transient_waits_the_servers_retry_after():
    """A fault carrying Retry-After is waited as the server asked (capped), not the backoff's delay."""
    failures = [ServerFault("finish", "HTTP 503", status=503, retry_after_s=0.05),
                ServerFault("finish", "HTTP 503", status=503, retry_after_s=99.0)]
    slept: list[float] = []

    async def call() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    result = await retry_transient(call, Backoff(5.0, 10.0, jitter=False), sleep, lambda e, d: None,
                                   (ServerFault,))
    assert result == "ok" and slept == [0.05, 10.0]


async def test_retrying_retries_only_what_it_is_told_and_raises_the_last_error():
    """Retrying: a kept error is retried after wait(error) (before_sleep told first), up to
    `attempts` tries; the last try's error, or one of another type, propagates as raised."""
    told: list[tuple[int, str, float]] = []

    def before_sleep(number: int, error: BaseException, delay: float) -> None:
        told.append((number, str(error), delay))

    tries = 0
    with pytest.raises(ValueError, match="try 3"):
        async for attempt in Retrying(3, ValueError, lambda e: 0.0, before_sleep):
            with attempt:
                tries += 1
                raise ValueError(f"try {tries}")
    assert tries == 3 and told == [(1, "try 1", 0.0), (2, "try 2", 0.0)]

    tries = 0
    with pytest.raises(KeyError):
        async for attempt in Retrying(3, ValueError, lambda e: 0.0, before_sleep):
            with attempt:
                tries += 1
                raise KeyError("not retried")
    assert tries == 1

    tries = 0
    async for attempt in Retrying(5, ValueError, lambda e: 0.0, before_sleep):
        with attempt:  # fails once, then ends without returning: the loop ends
            tries += 1
            if tries == 1:
                raise ValueError("once")
    assert tries == 2

    tries = 0
    with pytest.raises(KeyError):  # another kind of error in a retry (tenacity's tries) propagates
        async for attempt in Retrying(5, ValueError, lambda e: 0.0, before_sleep):
            with attempt:
                tries += 1
                raise ValueError("first") if tries == 1 else KeyError("then")
    assert tries == 2

    tries, told[:] = 0, []
    def wait(error: BaseException) -> float:  # the wait follows the error it is given
        return 0.01 * int(str(error).split()[-1])

    async for attempt in Retrying(4, ValueError, wait, before_sleep):
        with attempt:  # two faults, then a success on the third try
            tries += 1
            if tries < 3:
                raise ValueError(f"try {tries}")
    assert tries == 3 and told == [(1, "try 1", 0.01), (2, "try 2", 0.02)]
