"""The daemon's side of a running job as a handler's context sees it: :class:`JobIO`, and
:class:`JobLog`, a logger whose lines also go to the job log.

Its own module so that the context's parts (:mod:`.process`, :mod:`.toolkit`) and the
context itself share these without importing each other.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Protocol

from ..logs import scrub


class JobIO(Protocol):
    """The daemon's side of a running job (implemented by its slot; tests use a fake).

    The daemon's JobIO also has ``server_io()``: one exchange with the job server as the
    node (:class:`ufdl_node.transport.NodeIO`, a :class:`ufdl_node.work.ServerIO`), the
    one way handlers reach the server: ``ctx.server``, ``ctx.download`` and the work
    toolkit run on it. An IO without it (a test's fake) gives handlers no server.
    """

    def report_progress(self, amount: float, data: dict[str, Any]) -> None:
        """Report progress in [0, 1]; never blocks (the daemon coalesces and sends later)."""

    async def upload(self, name: str, type_: str, path: Path) -> None:
        """Upload the file at `path` as output NAME/TYPE of the job."""

    def write_log(self, line: str) -> None:
        """Append one line to the job log (uploaded as the output ``log``)."""


class JobLog:
    """A structlog logger bound to the job whose lines are also written to the job log."""

    def __init__(self, logger: Any, io: JobIO) -> None:
        self._logger = logger
        self._io = io

    def bind(self, **values: Any) -> JobLog:
        """A logger with `values` bound to every line."""
        return JobLog(self._logger.bind(**values), self._io)

    def _emit(self, level: str, event: str, values: dict[str, Any]) -> None:
        getattr(self._logger, level)(event, **values)
        extra = " ".join(f"{k}={v}" for k, v in values.items() if k != "exc_info")
        self._io.write_log(scrub(f"{level.upper()} {event}" + (f" {extra}" if extra else "")))

    def debug(self, event: str, **values: Any) -> None:
        """Log at debug level."""
        self._emit("debug", event, values)

    def info(self, event: str, **values: Any) -> None:
        """Log at info level."""
        self._emit("info", event, values)

    def warning(self, event: str, **values: Any) -> None:
        """Log at warning level."""
        self._emit("warning", event, values)

    def error(self, event: str, **values: Any) -> None:
        """Log at error level."""
        self._emit("error", event, values)

    def exception(self, event: str, **values: Any) -> None:
        """Log at error level with the current exception's traceback."""
        self._logger.exception(event, **values)
        self._io.write_log(scrub(f"ERROR {event}"))
        for line in traceback.format_exc().rstrip().splitlines():
            self._io.write_log(scrub(line))
