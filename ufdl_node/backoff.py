"""The one backoff of ufdl-node: exponential, jittered, capped, optionally bounded in total.

Every retry waits by it: the transport's retries of each call (:meth:`Transport.retrying`),
a handler's server calls (:class:`ufdl_node.work.ServerAccess`), and the loops above them
that outlast a longer outage: a slot's lifecycle calls, the supervisor's startup calls, the
poll loop, and the per-job cool-down. :func:`retry_delay` is the one rule for the wait
after a fault: the server's ``Retry-After`` when it gave one, else the next backoff delay.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    AttemptManager,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

T = TypeVar("T")


class DeadlinePassed(Exception):
    """The overall deadline of a :class:`Backoff` passed before the call succeeded."""


class Backoff:
    """Delays of `first_s`, doubling up to `cap_s`; with `jitter`, each is spread over
    0.5x..1.5x (never above the cap) so that many nodes do not retry in step; with
    `deadline_s`, :meth:`next_delay` answers None once that much time has passed."""

    def __init__(self, first_s: float, cap_s: float, *, jitter: bool = True,
                 deadline_s: float | None = None) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.jitter = jitter
        self.deadline_s = deadline_s
        self._delay = first_s
        self._began = time.monotonic()

    @property
    def current_s(self) -> float:
        """The delay the next :meth:`next_delay` is based on (before jitter)."""
        return min(self._delay, self.cap_s)

    def reset(self) -> None:
        """Start again from `first_s` (after a success)."""
        self._delay = self.first_s
        self._began = time.monotonic()

    def remaining_s(self) -> float:
        """Seconds left before the deadline (infinite without one)."""
        if self.deadline_s is None:
            return float("inf")
        return max(0.0, self.deadline_s - (time.monotonic() - self._began))

    def next_delay(self) -> float | None:
        """The next delay in seconds, or None once the deadline has passed."""
        delay = self.current_s
        if self.jitter:
            delay = min(delay * (0.5 + random.random()), self.cap_s)
        self._delay = min(self._delay * 2, self.cap_s)
        if self.deadline_s is not None:
            remaining = self.remaining_s()
            if remaining <= 0:
                return None
            delay = min(delay, remaining)
        return delay


def retry_delay(error: BaseException | None, backoff: Backoff) -> float | None:
    """How long to wait before retrying after `error`: the server's Retry-After (the
    ``retry_after_s`` of a :class:`~ufdl_node.errors.ServerFault`) capped at the backoff's cap,
    else the backoff's next delay; never past the backoff's deadline (None once it passed)."""
    delay = backoff.next_delay()
    after = getattr(error, "retry_after_s", None)
    if delay is None or not isinstance(after, (int, float)):
        return delay
    return min(max(0.0, float(after)), backoff.cap_s, backoff.remaining_s())


async def retry_transient(call: Callable[[], Awaitable[T]], backoff: Backoff,
                          sleep: Callable[[float], Awaitable[None]],
                          on_error: Callable[[Exception, float], None],
                          transient: tuple[type[Exception], ...]) -> T:
    """Repeat `call` while it raises one of `transient`, sleeping `backoff`'s delays.

    `on_error(error, delay_s)` is told of each failure before the sleep (to log it, to
    give up by raising); other exceptions propagate. A server's Retry-After is waited
    (capped as :func:`retry_delay` does). DeadlinePassed once the backoff's deadline passes.
    """
    while True:
        try:
            return await call()
        except transient as e:
            delay = retry_delay(e, backoff)
            if delay is None:
                raise DeadlinePassed(str(e)) from e
            on_error(e, delay)
            await sleep(delay)


class Retrying:
    """A retry loop: ``async for attempt in Retrying(...): with attempt: ...``.

    Up to `attempts` tries; an exception of `retry_on` inside ``with attempt:`` is kept and
    the next try follows after ``wait(error)`` seconds (``before_sleep(number, error, delay)``
    is told first); after the last try, or for any other exception, it propagates as it was
    raised. A try that ends without an exception ends the loop.

    The retries are tenacity's (``AsyncRetrying`` with stop_after_attempt,
    retry_if_exception_type and reraise). The first try is not: nearly every call the daemon
    makes succeeds at once, and tenacity's loop costs about 30 µs a call where this costs a
    few, so tenacity's loop is made at the first retryable fault and runs the tries after it.
    """

    __slots__ = ("_attempt", "_done", "_error", "_rest", "attempts", "before_sleep", "number",
                 "retry_on", "wait")

    def __init__(self, attempts: int, retry_on: type[BaseException] | tuple[type[BaseException], ...],
                 wait: Callable[[BaseException], float],
                 before_sleep: Callable[[int, BaseException, float], None]) -> None:
        self.attempts = max(1, attempts)
        self.retry_on = retry_on
        self.wait = wait
        self.before_sleep = before_sleep
        self.number = 0  # the try under way (1 for the first)
        self._error: BaseException | None = None  # the first try's, to be retried
        self._done = False
        self._rest: AsyncIterator[AttemptManager] | None = None  # tenacity's loop of the retries
        self._attempt: AttemptManager | None = None  # tenacity's hold of the try under way

    def __aiter__(self) -> Retrying:
        return self

    async def __anext__(self) -> Retrying:
        if self._done:
            raise StopAsyncIteration
        if self._error is not None:
            error, self._error = self._error, None
            delay = self.wait(error)
            self.before_sleep(self.number, error, delay)
            await asyncio.sleep(delay)
            self._rest = self._retries().__aiter__()
        if self._rest is not None:
            # raises StopAsyncIteration after a try that succeeded, or the last try's error
            self._attempt = await self._rest.__anext__()
        self.number += 1
        return self

    def _retries(self) -> AsyncRetrying:
        """Tenacity's loop for the tries after the first (which counts towards `attempts`)."""
        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome is not None else None
            return self.wait(error) if error is not None else 0.0

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            if error is not None:
                self.before_sleep(self.number, error, delay)

        return AsyncRetrying(stop=stop_after_attempt(self.attempts - 1), wait=wait,
                             retry=retry_if_exception_type(self.retry_on), reraise=True,
                             before_sleep=before_sleep)

    def __enter__(self) -> Retrying:
        if self._attempt is not None:
            self._attempt.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if self._attempt is not None:  # a retry: tenacity keeps its outcome
            return bool(self._attempt.__exit__(kind, error, tb))
        if error is None:
            self._done = True
            return False
        if isinstance(error, self.retry_on) and self.number < self.attempts:
            self._error = error
            return True  # kept: the next try follows
        self._done = True
        return False
