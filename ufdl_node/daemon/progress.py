"""Coalescing a handler's progress reports into calls to the server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from ..logs import get_logger, one_line

log = get_logger("ufdl_node.progress")
# The first call waits this long (at most the interval) after the first report: a short job
# that succeeds meanwhile costs no progress call at all (its finish shows it done).
FIRST_SEND_DELAY_S = 0.5


class ProgressPump:
    """Coalesces a handler's progress reports into calls to the server.

    The latest report wins, at most one call is in flight, at most one starts
    per `interval_s` (the first min(interval_s, FIRST_SEND_DELAY_S) after the first
    report), and `close(flush=True)` sends the last pending report. The handler
    never waits on the network.
    """

    def __init__(self, send: Callable[[float, dict[str, Any]], Coroutine[Any, Any, None]],
                 interval_s: float) -> None:
        self._send = send
        self._interval_s = interval_s
        self._pending: tuple[float, dict[str, Any]] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Until the first send is due, a timer, not a task: a job that ends sooner (most short
        # ones) costs no task made and cancelled, only a timer cancelled.
        self._timer: asyncio.TimerHandle | None = None
        self._started = False
        self._in_flight: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Whether closing has nothing to wait for (no task, no call in flight)."""
        return self._task is None and (self._in_flight is None or self._in_flight.done())

    def report(self, amount: float, data: dict[str, Any]) -> None:
        self._pending = (amount, data)
        self._wake.set()
        if self._started and self._task is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                min(self._interval_s, FIRST_SEND_DELAY_S), self._begin)

    def _begin(self) -> None:
        self._timer = None
        if self._started and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="progress-pump")

    def start(self) -> None:
        """Send reports from now on (the pump's task begins at the first: a job that
        reports nothing costs none)."""
        self._started = True
        if self._pending is not None:
            self.report(*self._pending)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._send_pending()
            except Exception as e:  # a bad report or a bug in send: the next report may still go
                log.warning("progress not sent", error=one_line(e))
            await asyncio.sleep(self._interval_s)

    async def _send_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        # A send of its own, shielded: closing the pump must not cut a call in flight,
        # or the value it carried (the last one, often) would be lost.
        self._in_flight = asyncio.create_task(self._send(*pending))
        await asyncio.shield(self._in_flight)

    async def close(self, *, flush: bool, cancel: bool = True) -> None:
        """Stop the pump; with `flush`, let a call in flight land and send the last report;
        without, drop the last report and cancel a call in flight (unless not `cancel`:
        then it lands, as for a job about to finish, whose connection is reused).

        `send` is expected to deal with its own errors; should one escape anyway, it
        is logged here and never reaches the job's end. (asyncio.wait, not await: a
        cancellation of the caller must go on propagating.)
        """
        self._started = False  # a report after this (a handler that outlived its job) goes nowhere
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            _log_failure(self._task, "progress pump failed")
        if self._in_flight is not None and not self._in_flight.done():
            if not flush and cancel:
                self._in_flight.cancel()
            await asyncio.wait({self._in_flight})
            _log_failure(self._in_flight, "progress not sent")
        if flush:
            try:
                await self._send_pending()
            except Exception as e:
                log.warning("final progress not sent", error=one_line(e))


def _log_failure(task: asyncio.Task[None], message: str) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning(message, error=one_line(task.exception()))
