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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..client import UfdlClient
from ..durable import file_digest, known_digest
from ..errors import JobFailed, NotAcceptable, OutputRefused, RefusedError, ServerError, WebSocketRefused
from ..logs import one_line
from ..protocol import CANCELLED_REASON, JobView, Phase, pk_of
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
    watch: JobWatch | None = None

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


async def started_but_not_ours(reporter: Reporter, job: JobView) -> Outcome:
    """The start's reply shows the job cancelled as it started, or another node's.

    The acquire is not read back (a GET per job): the start's reply is the check, read
    by the server after the acquire's write, and a start refused because another node
    holds the job never gets here (403: see settle_failed_start). Either way the
    handler does not run, and finish clears this node's current_job: the server then
    leaves a cancelled job CANCELLED and another node's job alone.
    """
    if job.phase is Phase.CANCELLED or job.cancelled_by_server:
        reporter.log.info("job was cancelled as it started; not running it")
        await reporter.finish_quietly(job.pk, CANCELLED_REASON)
        return Outcome.CANCELLED
    reporter.log.warning("the start's reply shows the job is not ours to run; leaving it",
                         holder=job.holder, phase=str(job.phase))
    await reporter.finish_quietly(job.pk, "another node acquired this job at the same time")
    return Outcome.RELEASED


async def settle_failed_start(reporter: Reporter, pk: int, error: Exception,
                              template_of: Callable[[int | None], Awaitable[dict[str, Any]]]) \
        -> tuple[JobView, dict[str, Any]] | None:
    """After a failed pre-start step, find out where the job is and never leave it wedged:
    a start whose reply was lost may have landed (STARTED and ours: it is run); a start
    refused as the node counts another job as current ends that stale job and hands it
    back. Otherwise the job goes back."""
    job = JobView.parse(await reporter.until_done(
        "get_job", lambda: reporter.client.get_job(pk, node_id=reporter.node_pk)))
    ours = job.held_by(reporter.node_pk)
    if ours and job.phase is Phase.STARTED:
        try:
            template = await template_of(job.template_pk)
        except (ServerError, KeyError, TypeError, ValueError) as e:
            await reporter.end_stale_job(pk, f"cannot read the job's template: {one_line(e)}")
            return None
        reporter.log.info("the start landed although its reply was lost")
        return job, template
    if ours and job.phase is Phase.CANCELLED:
        await reporter.finish_quietly(pk, CANCELLED_REASON)  # cancelled as it started: free the node
        return None
    if isinstance(error, NotAcceptable):
        await _end_stale_current(reporter, pk)
    reporter.log.warning("could not start job; releasing it", error=one_line(error))
    if ours:
        await reporter.release_quietly(pk)
    return None


async def _end_stale_current(reporter: Reporter, pk: int) -> None:
    """A start refused: the node may still count an old job as its current one."""
    node = await reporter.until_done("get_node", lambda: reporter.client.get_node(reporter.node_pk))
    stale = pk_of(node.get("current_job"))
    if stale is not None and stale != pk:
        reporter.log.warning("the node still counts an old job as current; ending it", stale_job=stale)
        try:
            await reporter.end_stale_job(stale, "node lost track of this job")
        except RefusedError as e:
            reporter.log.warning("could not end the stale job", stale_job=stale, error=one_line(e))


class JobWatch:
    """The calls beside a running handler: its progress, the watch for a cancel or an
    abort (web socket, else polling), and the keep-alive ping of its node."""

    def __init__(self, *, client: UfdlClient, node_pk: int, settings: Any, log: Any,
                 request_stop: Callable[[Stop], None]) -> None:
        self.client = client
        self.node_pk = node_pk
        self.settings = settings
        self.log = log
        self.request_stop = request_stop

    async def send_progress(self, pk: int, amount: float, data: dict[str, Any]) -> None:
        try:
            await self.client.progress(pk, self.node_pk, amount, data)
        except NotAcceptable:
            # 406: the job is no longer STARTED (cancelled): let the watcher confirm it.
            self.log.info("progress refused: job no longer running")
        except (ServerError, TypeError, ValueError) as e:  # ValueError/TypeError: data not JSON
            self.log.warning("progress not sent", error=one_line(e))

    async def watch_cancel(self, pk: int) -> None:
        """Stop the handler when the job is cancelled or aborted: web socket, else polling.
        Begins WATCH_DELAY_S (at most cancel_check_interval_s) after the handler."""
        if await self._check_stop(pk):
            return
        if self.settings.use_websocket:
            try:
                async for message in self.client.watch_job(pk):
                    stop = stop_from_message(message, self.node_pk)
                    if stop is not None:
                        self.request_stop(stop)
                        return
            except WebSocketRefused:
                self.log.debug("web socket refused; polling for cancellation")
            except (ServerError, OSError, ValueError) as e:
                self.log.info("web socket lost; polling for cancellation", error=one_line(e))
        while True:
            await asyncio.sleep(self.settings.cancel_check_interval_s)
            if await self._check_stop(pk):
                return

    async def _check_stop(self, pk: int) -> bool:
        """Read the job; stop the handler (True) when it was cancelled or taken away."""
        try:
            job = JobView.parse(await self.client.get_job(pk, node_id=self.node_pk))
        except (ServerError, KeyError, TypeError, ValueError) as e:
            self.log.debug("cancel check failed", error=one_line(e))
            return False
        stop = stop_from_job(job, self.node_pk)
        if stop is not None:
            self.request_stop(stop)
        return stop is not None

    async def ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ping_interval_s)
            try:
                await self.client.ping(self.node_pk)
            except ServerError as e:
                self.log.info("ping failed", error=one_line(e))


async def follow_finish(finish: Awaitable[None], handle: asyncio.Handle, follow: list[asyncio.Task[None]],
                        log: Any) -> None:
    """Await a job's `finish` while `handle` (queued before it) makes the next acquire's task
    into `follow`; then wait for that task too (its failure only a warning).

    The finish is written before `handle` runs: over a kept-alive lean connection
    (:mod:`ufdl_node.leanhttp`) before the finish first yields; through aiohttp (Python < 3.12
    writes a request with a body from a task of its own, queued after `handle`) by that task.
    Either way the acquire's task, made by `handle`, writes its GET after the finish.
    A forced stop cancels both, as a gather would (no call after the client is closed: that
    would open a session nobody closes); a finish that ended without yielding makes none."""
    try:
        await finish
    except asyncio.CancelledError:
        handle.cancel()
        for task in follow:
            task.cancel()
        raise
    finally:
        handle.cancel()
        if follow:
            try:
                await asyncio.wait({follow[0]})
            except asyncio.CancelledError:
                follow[0].cancel()
                raise
            if not follow[0].cancelled() and (error := follow[0].exception()) is not None:
                log.warning("could not acquire the next job", error=one_line(error))
