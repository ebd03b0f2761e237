"""``ctx.run``: a job's subprocess in its own process group, stopped within a known bound.

The bounds below are what the daemon allows for ``ctx.run``'s own cleanup after a
cancellation (:data:`RUN_STOP_SLACK_S`), so that a slot never abandons a handler
that is still stopping its command in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import JobFailed
from ..logs import one_line, scrub

if TYPE_CHECKING:
    from .jobio import JobIO, JobLog

KILL_WAIT_S = 5.0  # after SIGKILL, for the process to be reaped
GROUP_WAIT_S = 2.0  # for the rest of its process group to die
PIPES_WAIT_S = 5.0  # for the output readers to reach the end of the pipes
RUN_STOP_SLACK_S = KILL_WAIT_S + GROUP_WAIT_S + PIPES_WAIT_S
"""How long ctx.run may take, beyond ``cancel_grace_s``, to stop after a cancellation."""


class ProcessControl:
    """The subprocess side of :class:`~ufdl_node.api.JobContext` (its ``run`` method)."""

    work_dir: Path
    env: dict[str, str]
    io: JobIO
    log: JobLog
    cancel_event: asyncio.Event
    cancel_grace_s: float

    def progress(self, amount: float, **data: Any) -> None:
        raise NotImplementedError  # pragma: no cover - JobContext defines it

    async def run(self, cmd: Sequence[str] | str, *, cwd: Path | str | None = None,
                  env: dict[str, str] | None = None,
                  progress_regex: str | re.Pattern[str] | None = None,
                  check: bool = True, timeout_s: float | None = None) -> int:
        """Run a subprocess for the job and return its exit status.

        `cmd` is an argument list, or a string run by ``/bin/sh -c``. It runs in
        its own process group in `cwd` (default: the work directory) with the
        node's environment plus `env`. Its stdout and stderr go to the job log
        line by line. With `progress_regex`, each output line is searched: a
        named group ``progress`` (0..1), ``percent`` (0..100) or ``step`` and
        ``total`` give the progress; other named groups are sent as progress data.

        On cancellation (the cancel event or the task being cancelled) and on
        `timeout_s`, the process group gets SIGTERM, then SIGKILL after
        ``cancel_grace_s``; cancellation raises asyncio.CancelledError, a timeout
        JobFailed. What the command leaves running in its group when it exits is
        killed. A nonzero exit with `check` raises JobFailed naming the command,
        the status and its last line on stderr.
        """
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
        if not argv:
            raise ValueError("run: empty command")
        label = one_line(cmd if isinstance(cmd, str) else shlex.join(argv), 120)
        pattern = re.compile(progress_regex) if isinstance(progress_regex, str) else progress_regex
        proc = await self._spawn(argv, label, cwd, env)
        last_stderr: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        readers = [asyncio.ensure_future(self._pump(proc.stdout, pattern, None)),
                   asyncio.ensure_future(self._pump(proc.stderr, pattern, last_stderr))]
        waiter = asyncio.ensure_future(_exited(proc))
        cancel_waiter = asyncio.ensure_future(self.cancel_event.wait())
        try:
            done, _ = await asyncio.wait({waiter, cancel_waiter}, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                await self._stop(proc)
                if cancel_waiter in done:
                    raise asyncio.CancelledError(f"job cancelled while running {label}")
                raise JobFailed(f"command {label} timed out after {timeout_s:g} s")
        except asyncio.CancelledError:
            await asyncio.shield(self._stop(proc))
            raise
        finally:
            cancel_waiter.cancel()
            _killpg(proc.pid, signal.SIGKILL)  # whatever it left running in its group
            await _until_group_gone(proc.pid, GROUP_WAIT_S)
            # Readers end once every holder of the pipes is gone; never hang on them.
            _, pending = await asyncio.wait(readers, timeout=PIPES_WAIT_S)
            for task in pending:
                task.cancel()
        rc = proc.returncode if proc.returncode is not None else await waiter
        self.log.info("command exited", command=label, returncode=rc)
        if rc != 0 and check:
            how = f"was killed by {_signal_name(-rc)}" if rc < 0 else f"exited with {rc}"
            tail = f": {last_stderr[0]}" if last_stderr else ""
            raise JobFailed(f"command {label} {how}{tail}")
        return rc

    async def _spawn(self, argv: list[str], label: str, cwd: Path | str | None,
                     env: dict[str, str] | None) -> asyncio.subprocess.Process:
        """Start `argv` in its own process group (session), output piped, no stdin."""
        full_env = {**_child_environ(), "PYTHONUNBUFFERED": "1", **self.env, **(env or {})}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=str(self.work_dir / cwd) if cwd is not None else str(self.work_dir),
                env=full_env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except FileNotFoundError as e:
            raise JobFailed(f"command {label}: {e.filename or argv[0]} not found") from None
        except PermissionError:
            raise JobFailed(f"command {label}: {argv[0]} is not executable") from None
        self.log.info("command started", command=label, pid=proc.pid)
        return proc

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the process group; SIGKILL after the grace period."""
        if proc.returncode is not None:
            return
        self.log.info("stopping command", pid=proc.pid, grace_s=self.cancel_grace_s)
        _killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(_exited(proc), timeout=self.cancel_grace_s)
        except asyncio.TimeoutError:
            self.log.warning("command ignored SIGTERM; killing it", pid=proc.pid)
        _killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_exited(proc), timeout=KILL_WAIT_S)

    async def _pump(self, stream: asyncio.StreamReader, pattern: re.Pattern[str] | None,
                    last: list[str] | None) -> None:
        """Copy a stream to the job log line by line; parse progress from each line.

        A carriage return (progress bars) ends a piece that is parsed for
        progress but not logged; the piece visible when the newline comes is.
        """
        buffer = b""
        visible = ""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            buffer += chunk
            pos = 0  # scan with an offset and trim once per read: slicing per line is quadratic
            while True:
                match = _LINE_END.search(buffer, pos)
                if match is not None:
                    piece, sep, pos = buffer[pos:match.start()], match.group(), match.end()
                elif len(buffer) - pos > 65536:  # a very long line: log it in pieces
                    piece, sep, pos = buffer[pos:], b"\n", len(buffer)
                else:
                    break
                text = piece.decode("utf-8", errors="replace").rstrip()
                if text:
                    visible = text
                    if pattern is not None:
                        self._parse_progress(pattern, text)
                if sep == b"\n":
                    if visible:
                        self.io.write_log(scrub(visible[:10000]))
                        if last is not None:
                            last[:] = [one_line(visible, 300)]
                    visible = ""
            buffer = buffer[pos:]
        text = buffer.decode("utf-8", errors="replace").rstrip() or visible
        if text:
            if pattern is not None:
                self._parse_progress(pattern, text)
            self.io.write_log(scrub(text[:10000]))
            if last is not None:
                last[:] = [one_line(text, 300)]

    def _parse_progress(self, pattern: re.Pattern[str], line: str) -> None:
        match = pattern.search(line)
        if match is None:
            return
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        try:
            if "progress" in groups:
                amount = float(groups.pop("progress"))
            elif "percent" in groups:
                amount = float(groups.pop("percent")) / 100
            elif "step" in groups and "total" in groups:
                step, total = float(groups.pop("step")), float(groups.pop("total"))
                amount = step / total if total > 0 else 0.0
            else:
                return
        except ValueError:
            return
        self.progress(amount, **{k: _number_or_text(v) for k, v in groups.items()})


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The exit status once the process has exited.

    Not ``proc.wait()``: before Python 3.12 it also waits for the pipes to
    close, which a child left running in the background can hold open forever.
    """
    while proc.returncode is None:  # noqa: ASYNC110 - the transport offers no earlier signal
        await asyncio.sleep(0.05)
    return proc.returncode


def _number_or_text(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() \
        else number


_SECRET_ENV = re.compile(r"^UFDL_NODE_.*(PASSWORD|SECRET|TOKEN|ADMIN|WORKER)", re.IGNORECASE)


# systemd's credentials (the node's password file) and notify socket are the daemon's alone.
_DAEMON_ENV = frozenset({"CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


def _child_environ() -> dict[str, str]:
    """The node's environment without its own credentials: a job's script has no use for them."""
    return {k: v for k, v in os.environ.items() if not _SECRET_ENV.match(k) and k not in _DAEMON_ENV}


_LINE_END = re.compile(rb"[\r\n]")


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (a zombie awaiting its reaper does not)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        import psutil  # a dependency of the daemon; imported here to keep api light
    except ImportError:  # pragma: no cover
        return True
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


async def _until_group_gone(pgid: int, timeout_s: float) -> None:
    """Wait (bounded) until a killed process group has died: the job's end means its processes' end."""
    for _ in range(max(1, int(timeout_s / 0.02))):  # no event tells of a grandchild's death: poll
        if not _group_alive(pgid):
            return
        await asyncio.sleep(0.02)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
