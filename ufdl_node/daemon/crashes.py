"""Jobs that take the daemon down with them, and handlers that block its event loop.

Poison jobs. A job whose handler kills the process (``os.kill(os.getpid(), 9)``, the
OOM killer, a crash in native code) or blocks the event loop until systemd's watchdog
kills it would otherwise run forever: each restart's recovery hands it back ("node
restarted during job") and the node takes it again. So each start of a job's handler is
counted in the node's start log (``starts.log``, see :mod:`.startlog`) before the handler runs,
whether or not the job's journal record was written yet, and forgotten when the job's end
is reported (finished, errored, cancelled or handed back, a drain at shutdown included).
A count left at a restart is a death of the node while the job ran; once it passes
``max_crash_restarts``, the recovery (:func:`.recovery.end_poison_job`) finishes the job
ERRORED ("the node died N times while running this job; not running it again") instead
of handing it back, after uploading what its last run logged. Every job running when the
node dies is counted, so on a node with several slots a job beside a poison one counts
too; a forced stop (a second SIGTERM) leaves its jobs counted as well.

Blocked event loop. :class:`LoopLagWatch` has a task wake every LAG_INTERVAL_S and a thread
check that it did: while the loop is blocked for longer than LAG_WARN_S the thread names
the task that holds it (a handler's task is ``handler-<name>``) in a warning, and the task
says for how long once the loop runs again. A handler that never gives the loop back still
gets the first warning, which is what the operator needs before the watchdog's kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

from ..logs import get_logger

LAG_INTERVAL_S = 0.25  # how often the loop's watch task wakes
LAG_WARN_S = 1.0  # a loop blocked longer than this is a warning naming who blocks it
HANDLER_TASK = "handler-"  # the prefix of a handler's task name (slot.py)
BLOCKED_HINT = ("a handler must not block the event loop: await asyncio.sleep, run commands with "
                "ctx.run, and CPU or file work in asyncio.to_thread")

log = get_logger("ufdl_node.crashes")


def poison_reason(deaths: int) -> str:
    """What a job the node died running `deaths` times ends ERRORED with."""
    return f"the node died {deaths} times while running this job; not running it again"


class LoopLagWatch:
    """Warns when the event loop is blocked, naming the task that blocks it (see the module)."""

    def __init__(self, describe: Callable[[], dict[str, object]] | None = None, *,
                 interval_s: float = LAG_INTERVAL_S, warn_s: float = LAG_WARN_S) -> None:
        self.describe = describe or dict  # what else to say (the jobs running)
        self.interval_s = interval_s
        self.warn_s = warn_s
        self._beat = time.monotonic()
        self._culprit: str | None = None  # the task the thread found blocking the loop
        self._stop = threading.Event()

    async def run(self) -> None:
        """Watch until cancelled (the thread stops with it)."""
        loop = asyncio.get_running_loop()
        self._beat = time.monotonic()
        thread = threading.Thread(target=self._check, args=(loop,), name="loop-lag-watch", daemon=True)
        thread.start()
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                now = time.monotonic()
                late = now - self._beat - self.interval_s
                self._beat = now
                if late > self.warn_s:
                    culprit, self._culprit = self._culprit, None
                    log.warning("the event loop was blocked", blocked_s=round(late, 2),
                                handler=_handler_of(culprit), task=culprit, **self.describe())
        finally:
            self._stop.set()

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        """In a thread: name the task holding the loop once it has held it over warn_s."""
        warned_beat = None
        while not self._stop.wait(self.interval_s / 2):
            beat = self._beat
            if beat == warned_beat or time.monotonic() - beat - self.interval_s <= self.warn_s:
                continue
            warned_beat = beat
            task = None
            with contextlib.suppress(RuntimeError):
                task = asyncio.current_task(loop)  # the task whose step runs now, if any
            self._culprit = task.get_name() if task is not None else None
            log.warning("the event loop is blocked", blocked_s=round(time.monotonic() - beat, 2),
                        handler=_handler_of(self._culprit), task=self._culprit, hint=BLOCKED_HINT)


def _handler_of(task_name: str | None) -> str | None:
    if task_name is None or not task_name.startswith(HANDLER_TASK):
        return None
    return task_name[len(HANDLER_TASK):]
