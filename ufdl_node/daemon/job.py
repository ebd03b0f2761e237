"""One job's run on a slot: how it can stop, how it ends, its state, the handler's IO.

:class:`StopReason` and :class:`Outcome` replace the string prefixes the slot and the
supervisor used to compare; :class:`JobRun` holds what belongs to one run of one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..client import UfdlClient
from ..durable import file_digest, known_digest
from ..errors import JobFailed, OutputRefused
from ..logs import one_line
from ..protocol import JobView, Phase, pk_of
from ..transport import NodeIO
from .progress import ProgressPump
from .reporting import Reporter
from .workdirs import stage_dir


class Stragglers:
    """Tasks told to stop that have not ended yet: referenced until they do, their outcome
    collected then (never "Task exception was never retrieved")."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()

    async def stop(self, tasks: list[asyncio.Task[Any]], timeout_s: float = 2.0) -> None:
        """Cancel helper tasks, waiting a bounded time: a web socket whose peer never
        answers the close handshake must not hold up the job's report."""
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                self.keep(task)

    async def settle(self, task: asyncio.Task[Any], timeout_s: float) -> None:
        """Wait up to `timeout_s` for a cancelled handler to stop its process group or
        container, even when the caller is cancelled again meanwhile (a drain, a second
        signal): the client and container engine must not close under its clean-up (a
        Ctrl-C once left a container behind, and "Task exception was never retrieved")."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not task.done() and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task}, timeout=left)
        if task.done():
            self._forget(task)
        else:
            self.keep(task)


class StopReason(enum.Enum):
    """Why a running handler is told to stop; the value is the reason as logged."""

    SHUTDOWN = "node shutting down"
    CANCELLED = "cancelled by the server"
    ABORTED = "aborted by an administrator"
    TIMEOUT = "job timed out"
    HANDLER_CANCELLED = "handler was cancelled"


class Outcome(str, enum.Enum):
    """How a job ended on this slot (the `outcome` label of the jobs metrics)."""

    FINISHED = "finished"
    ERRORED = "errored"
    CANCELLED = "cancelled"
    ABORTED = "aborted"
    RELEASED = "released"  # handed back untouched, or at shutdown
    RETRIED = "retried"  # handed back to run again (RetryJob)


@dataclass(frozen=True)
class Stop:
    """A stop request: the reason and the text that goes into logs and the job's error."""

    reason: StopReason
    text: str


SHUTDOWN = Stop(StopReason.SHUTDOWN, StopReason.SHUTDOWN.value)


@dataclass
class JobRecord:
    """What /status shows of a slot's current job."""

    pk: int
    template: str
    started_at: float = field(default_factory=time.time)
    progress: float = 0.0
    progress_data: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobRun:
    """One job's state while this slot runs it (what used to sit on the slot)."""

    view: JobView
    stop: asyncio.Future[Stop]
    abandoned: bool = False  # its handler would not stop: it still runs somewhere
    job_root: Path = Path()
    io: SlotJobIO | None = None
    pump: ProgressPump | None = None

    def accepts(self, stop: Stop) -> bool:
        """Whether `stop` is to stop the handler now.

        A drain leaves a handler whose containers have done their work (the last one exited
        0, none runs) to end on its own: what is left is collecting and staging the outputs,
        and a hand-back would throw the work away (its success is journaled, and a restart
        completes the job if the report cannot be made now). Should the handler start
        another container, the stop applies then."""
        containers = self.io.containers if self.io is not None else None
        if stop.reason is not StopReason.SHUTDOWN or containers is None or not containers.work_done:
            return True
        containers.held_stop = lambda: self._apply(stop)
        return False

    def _apply(self, stop: Stop) -> None:
        if not self.stop.done():
            self.stop.set_result(stop)




@dataclass(frozen=True)
class StagedOutput:
    """An output the handler made, waiting in the job's directory for the handler's success."""

    name: str
    type: str
    path: Path
    size: int
    sha256: str
    mtime_ns: int


def _changed(output: StagedOutput) -> bool:
    try:
        stat = output.path.stat()
    except OSError:
        return True
    return (stat.st_size, stat.st_mtime_ns) != (output.size, output.mtime_ns)


def stage_output(source: Path, directory: Path, index: int) -> tuple[Path, int, str, int]:
    """Link `source` into `directory` (a copy where a link cannot be made, e.g. across file
    systems) as ``<index>``: the handler may remove or reuse its file afterwards. Returns the
    staged path, its size, sha256 and modification time (blocking: call it in a thread). A
    name from the handler never becomes a path here. A file hashed as it was written (a zip
    of ``ctx.upload_zip`` or a definition's output) is linked, not read again."""
    known = known_digest(source)
    directory.mkdir(parents=True, exist_ok=True)
    staged = directory / str(index)
    staged.unlink(missing_ok=True)
    try:
        os.link(source, staged)
    except OSError:
        shutil.copyfile(source, staged)
    stat = staged.stat()
    size, sha256 = known if known is not None and known[0] == stat.st_size else file_digest(staged)
    return staged, size, sha256, stat.st_mtime_ns


class SlotJobIO:
    """The handler's line to the server (JobIO of ufdl_node.api), for one job."""

    containers: Any = None  # what ctx.container runs on (daemon/containers.JobContainers)

    def __init__(self, *, pk: int, node_pk: int, client: UfdlClient, reporter: Reporter,
                 pump: ProgressPump, log_path: Path, log: Any, record: JobRecord | None) -> None:
        self._pk = pk
        self._node_pk = node_pk
        self._client = client
        self._reporter = reporter
        self._pump = pump
        self._node_log = log
        self._record = record
        self.path = log_path
        self._stage_dir = stage_dir(log_path.parent)
        self.staged: list[StagedOutput] = []
        # Opened at the first line: a job that logs nothing costs no file (and no upload).
        self._log: TextIO | None = None
        self._closed = False

    def _log_failed(self, error: OSError) -> None:
        # A full disk must not turn into a crash of the slot: the job still ends; the
        # node's own log says (once) why the job's log is short.
        self._node_log.warning("cannot write the job log", error=one_line(error))
        self.close()
        self._log = None

    def report_progress(self, amount: float, data: dict[str, Any]) -> None:
        if self._record is not None:
            self._record.progress, self._record.progress_data = amount, data
        self._pump.report(amount, data)

    async def upload(self, name: str, type_: str, path: Path) -> None:
        """Stage output NAME/TYPE: a link to (or copy of) `path` in the job's ``outputs``
        directory, journaled; :meth:`upload_staged` sends it once the handler has succeeded.

        Why not at once: the real server keeps a job's outputs after a reset and refuses the
        same NAME/TYPE again, so an output uploaded by a run that then crashed could never be
        replaced by the re-run. Staged, nothing reaches the server before the handler's
        success is journaled, and a restart after it uploads what is left (journal.py)."""
        staged = StagedOutput(name, type_, *await asyncio.to_thread(
            stage_output, Path(path), self._stage_dir, len(self.staged)))
        self.staged = [o for o in self.staged if (o.name, o.type) != (name, type_)]
        self.staged.append(staged)
        journal = self._reporter.journal
        if journal is not None:
            await asyncio.to_thread(journal.output_staged, self._pk, name, type_, staged.path,
                                    staged.size, staged.sha256)

    async def upload_staged(self, *, best_effort: bool = False) -> None:
        """Upload the staged outputs, in the order they were made. An outage longer than the
        client's retries is waited out (a job that did its work must not fail for it); an
        output the server refuses for good (OutputRefused), or one whose file changed, is a
        JobFailed or OutputRefused, or with `best_effort` (a job that ends ERRORED) a warning."""
        while self.staged:
            output = self.staged.pop(0)  # tried once: a refused one is not sent again
            try:
                if await asyncio.to_thread(_changed, output):
                    # A link shares its file with the handler's: one rewritten in place since.
                    raise JobFailed(f"output {output.name}/{output.type}: its file changed after it "
                                    "was handed to ctx.upload; give each output a file of its own")
                await self._reporter.upload(self._pk, output.name, output.type, output.path,
                                            sha256=output.sha256)
            except (JobFailed, OutputRefused) as e:
                if not best_effort:
                    raise
                self._node_log.warning("output of a failed job not uploaded", error=one_line(e))

    async def download(self, path: str, dest: Path) -> Path:
        return await self._reporter.until_done("download", lambda: self._client.download(path, Path(dest)))

    def server_io(self) -> NodeIO:
        # The handler's own calls (ctx.server) share the node's session and token; their
        # retries are bounded by handler_io_retry_s in ufdl_node.work, not waited out here.
        return self._client.node_io(self._node_pk)

    def write_log(self, line: str) -> None:
        if self._closed:
            return
        try:
            if self._log is None:
                self._log = self.path.open("a", encoding="utf-8", buffering=1)
            self._log.write(line.rstrip("\n") + "\n")
        except OSError as e:
            self._log_failed(e)

    def close(self) -> None:
        self._closed = True
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()


CANCELLED = Stop(StopReason.CANCELLED, StopReason.CANCELLED.value)
ABORTED = Stop(StopReason.ABORTED, StopReason.ABORTED.value)


def stop_from_message(message: Mapping[str, Any], node_pk: int) -> Stop | None:
    """What a message of the job's web socket asks of the node running it, if anything."""
    transition = message.get("transition")
    if transition == "cancel" or message.get("cancelled") is True:
        return CANCELLED
    if transition == "abort" or (transition == "release" and pk_of(message.get("node")) != node_pk):
        return ABORTED
    return None


def stop_from_job(job: JobView, node_pk: int) -> Stop | None:
    """What a fresh read of the job asks of the node running it, if anything."""
    if job.cancelled_by_server:
        return CANCELLED
    if not job.held_by(node_pk) or job.phase is Phase.CREATED:
        return ABORTED
    return None
