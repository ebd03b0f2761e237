"""A slot: one node identity (one GPU index) and at most one job at a time.

The slot owns a job's whole life on this machine: acquire, verify, start, run
the handler in its own task with a private work directory, pump progress,
watch for cancellation, upload the log, and end with finish, finish-with-error,
or a hand-back (finish with error, reset, release). Whatever happens, a job
this slot acquired ends FINISHED, ERRORED with a readable reason, or back in
the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from .api import HandlerSpec, JobContext, describe_failure, format_traceback
from .client import UfdlClient, pk_of
from .errors import (
    JobFailed,
    NotAcceptable,
    OutputRefused,
    RefusedError,
    RetryJob,
    ServerError,
    TransientError,
    WebSocketRefused,
)
from .hardware import GpuInfo, free_disk_bytes
from .logs import bind_job, get_logger, one_line
from .metrics import Metrics
from .progress import ProgressPump
from .settings import NodeSettings
from .state import NodeState

T = TypeVar("T")
LOG_OUTPUT = ("log", "text")
LOG_NAMES = 20  # log, log-2, ... log-20: one per run of a job the real server has seen
SHUTDOWN_REASON = "node shutting down"
RUN_STOP_SLACK_S = 15.0  # ctx.run's bounded waits after cancel_grace_s: kill 5 s, group 2 s, pipes 5 s


@dataclass
class JobRecord:
    """What /status shows of a slot's current job."""

    pk: int
    template: str
    started_at: float = field(default_factory=time.time)
    progress: float = 0.0
    progress_data: dict[str, Any] = field(default_factory=dict)


class _SlotJobIO:
    """The handler's line to the server (JobIO of ufdl_node.api), for one job."""

    def __init__(self, slot: Slot, pk: int, pump: ProgressPump, log_path: Path) -> None:
        self._slot = slot
        self._pk = pk
        self._pump = pump
        self._log: TextIO | None = None
        try:
            self._log = log_path.open("a", encoding="utf-8", buffering=1)
        except OSError as e:
            self._log_failed(e)

    def _log_failed(self, error: OSError) -> None:
        # A full disk must not turn into a crash of the slot: the job still ends; the
        # node's own log says (once) why the job's log is short.
        self._slot.log.warning("cannot write the job log", error=one_line(error))
        self.close()
        self._log = None

    def report_progress(self, amount: float, data: dict[str, Any]) -> None:
        record = self._slot.job
        if record is not None:
            record.progress, record.progress_data = amount, data
        self._pump.report(amount, data)

    async def upload(self, name: str, type_: str, path: Path) -> None:
        # An outage longer than the client's retries must not fail a job that did its
        # work: wait for the server (the upload is made idempotent by the client).
        slot = self._slot
        await slot._until_done("upload", lambda: slot.client.upload_output(
            self._pk, slot.node_pk, name, type_, Path(path)))

    async def download(self, path: str, dest: Path) -> Path:
        slot = self._slot
        return await slot._until_done("download", lambda: slot.client.download(path, Path(dest)))

    def write_log(self, line: str) -> None:
        if self._log is None or self._log.closed:
            return
        try:
            self._log.write(line.rstrip("\n") + "\n")
        except OSError as e:
            self._log_failed(e)

    def close(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()


class Slot:
    """One node on the server; runs one job at a time."""

    def __init__(self, *, index: int, node_pk: int, gpu: GpuInfo | None, client: UfdlClient,
                 settings: NodeSettings, metrics: Metrics, state: NodeState) -> None:
        self.index = index
        self.node_pk = node_pk
        self.gpu = gpu
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.state = state
        self.job: JobRecord | None = None
        self.last_error: str | None = None
        self.jobs_done = 0
        self._stop: asyncio.Future[str] | None = None
        self._stragglers: set[asyncio.Task[Any]] = set()
        self._templates: dict[int, dict[str, Any]] = {}
        self._abandoned = False  # the current job's handler would not stop
        self._taken_outputs: set[tuple[str, str]] = set()  # NAME/TYPE the server already has
        self.log = get_logger("ufdl_node.slot", slot=index, node=node_pk)

    # -- what the poller asks --------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.job is not None

    def can_serve(self, spec: HandlerSpec) -> str | None:
        """None when this slot's hardware meets the handler's needs, else why not."""
        needs = spec.needs
        if needs.gpu and self.gpu is None:
            return "needs a GPU"
        if self.gpu is not None:
            if needs.min_gpu_mem_bytes and self.gpu.mem_bytes < needs.min_gpu_mem_bytes:
                return f"needs {needs.min_gpu_mem_bytes} bytes of GPU memory"
            cc = self.gpu.compute_capability
            if needs.min_compute_capability is not None and (cc is None or cc < needs.min_compute_capability):
                return f"needs compute capability {needs.min_compute_capability}"
        elif needs.min_gpu_mem_bytes or needs.min_compute_capability is not None:
            return "needs a GPU"
        if needs.min_free_disk_bytes:
            assert self.settings.work_dir is not None
            if free_disk_bytes(self.settings.work_dir) < needs.min_free_disk_bytes:
                return f"needs {needs.min_free_disk_bytes} bytes of free disk"
        return None

    def gpu_env(self) -> dict[str, str]:
        """What a job's subprocesses need to see only this slot's GPU.

        NVML numbers GPUs in PCI order, CUDA fastest-first unless told otherwise:
        the UUID (or the PCI order) makes both agree.
        """
        if self.gpu is None:
            return {}
        visible = self.gpu.uuid or str(self.gpu.index)
        return {"CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    def request_stop(self, reason: str) -> None:
        """Stop the running job's handler (shutdown, server-side cancel, abort, timeout)."""
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(reason)

    # -- recovery ------------------------------------------------------------------

    async def recover(self, current_job: int | None) -> None:
        """Hand back what a previous process of this node left behind (UFDL-API.md section 6)."""
        if current_job is not None:
            with bind_job(job_pk=current_job):
                self.log.warning("recovering job left by a previous process", job_pk=current_job)
                try:
                    await self._end_stale_job(current_job, "node restarted during job")
                except RefusedError as e:  # the server will not let us: nothing left to do for it
                    self.log.warning("could not recover the job", error=one_line(e))
        await self.release_strays()

    async def release_strays(self) -> None:
        """Release jobs this node holds but never started (an acquire whose reply was lost,
        or a process that died between acquire and start). Safe only while the slot is idle."""
        spec = {"expressions": [{"type": "exact", "field": "node", "value": self.node_pk},
                                {"type": "isnull", "field": "start_time"}]}
        for job in await self.client.list_jobs(spec, node_id=self.node_pk):
            with bind_job(job_pk=job.get("pk")):
                self.log.info("releasing a job held but never started", job_pk=job.get("pk"))
                await self._release_quietly(int(job["pk"]))

    async def _end_stale_job(self, pk: int, reason: str) -> None:
        """A job this node started but no longer runs: finish it with `reason`, then hand it back."""
        self.state.begin_handback(pk)
        try:
            job = await self.client.finish(pk, self.node_pk, error=reason)
        except NotAcceptable:
            job = await self.client.get_job(pk)
        if pk_of(job.get("node")) == self.node_pk and job.get("error_reason") == reason \
                and job.get("end_time") is not None and not job.get("is_cancelled"):
            await self._hand_back_errored(pk)
        else:
            self.state.end_handback(pk)

    # -- one job -----------------------------------------------------------------------

    async def try_acquire(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """Acquire `job` for this node; None when another node won the race."""
        pk = int(job["pk"])
        try:
            # The real server's acquire is read-then-write; the client reads the job back
            # and answers NotAcceptable unless this node holds it.
            return await self.client.acquire(pk, self.node_pk)
        except NotAcceptable:
            return None  # another node holds it: the normal outcome of a race
        except RefusedError as e:
            self.log.info("acquire refused", job_pk=pk, reason=one_line(e))
            return None
        except ServerError as e:
            # The acquire may have landed with its reply lost. The supervisor's sweep of
            # idle slots (release_strays) hands such a job back within ping_interval_s.
            self.log.warning("acquire failed; a stray hold is released by the next sweep",
                             job_pk=pk, error=one_line(e))
            return None

    async def run(self, held: dict[str, Any], spec: HandlerSpec) -> str:
        """Run an acquired job to its end. Returns the outcome for metrics and tests."""
        pk = int(held["pk"])
        name = str(held["template"]["name"])
        self.job = JobRecord(pk=pk, template=name)
        self._stop = asyncio.get_running_loop().create_future()
        self._abandoned = False
        self.metrics.slots_busy.inc()
        began = time.monotonic()
        outcome = "errored"
        try:
            with bind_job(job_pk=pk, template=name, slot=self.index, node=self.node_pk):
                try:
                    outcome = await self._run(held, spec)
                except RefusedError as e:
                    # A lifecycle call refused for good (say, finish of a job an admin
                    # took away): the server no longer lets this node act on the job.
                    self.last_error = one_line(e)
                    self.log.error("server refused a lifecycle call; dropping the job",
                                   error=self.last_error)
                self.log.info("job ended", outcome=outcome)
            return outcome
        finally:
            elapsed = time.monotonic() - began
            self.metrics.slot_busy.labels(str(self.index)).inc(elapsed)
            self.metrics.jobs.labels(outcome).inc()
            self.metrics.job_duration.labels(outcome).observe(elapsed)
            self.metrics.slots_busy.dec()
            self.jobs_done += 1
            self.job = None
            self._stop = None

    async def _run(self, held: dict[str, Any], spec: HandlerSpec) -> str:
        pk = int(held["pk"])
        # Before start: anything wrong hands the job back untouched. `held` is the
        # client's fresh read after acquire: a job cancelled just before can still be
        # acquired, but must not be started.
        try:
            if pk_of(held.get("node")) != self.node_pk or held.get("start_time") is not None \
                    or held.get("error_reason") is not None or held.get("is_cancelled"):
                self.log.info("job is not ours to start (cancelled or taken); handing it back")
                await self._release_quietly(pk)
                return "released"
            template = await self._template(int(held["template"]["pk"]))
            job = await self.client.start(pk, self.node_pk)
        except (ServerError, KeyError, TypeError, ValueError) as e:
            self.last_error = one_line(e)
            started = await self._settle_failed_start(pk, e)
            if started is None:
                return "released"
            job, template = started
        self.log.info("job started")
        try:
            return await self._run_started(job, template, spec)
        except (asyncio.CancelledError, RefusedError):
            raise
        except Exception as e:  # a bug of ours must not leave a started job wedged
            self.log.exception("internal error while running the job")
            return await self._finish_error(pk, f"ufdl-node internal error: {one_line(e)}")

    async def _settle_failed_start(self, pk: int, error: Exception) \
            -> tuple[dict[str, Any], dict[str, Any]] | None:
        """After a failed pre-start step, find out where the job is and never leave it wedged.

        A start whose reply was lost may have landed: then the job is STARTED and ours,
        and it is run. A start refused because the node still counts another job as its
        current one: that stale job is ended and handed back. Otherwise the job goes back.
        """
        job = await self._until_done("get_job", lambda: self.client.get_job(pk, node_id=self.node_pk))
        ours = pk_of(job.get("node")) == self.node_pk
        if ours and job.get("start_time") is not None and job.get("end_time") is None:
            if job.get("error_reason") is None:
                try:
                    template = await self._template(int(job["template"]["pk"]))
                except (ServerError, KeyError, TypeError, ValueError) as e:
                    await self._end_stale_job(pk, f"cannot read the job's template: {one_line(e)}")
                    return None
                self.log.info("the start landed although its reply was lost")
                return job, template
            await self._finish_quietly(pk, "Cancelled")  # cancelled as it started: free the node
            return None
        if isinstance(error, NotAcceptable):
            node = await self._until_done("get_node", lambda: self.client.get_node(self.node_pk))
            stale = pk_of(node.get("current_job"))
            if stale is not None and stale != pk:
                self.log.warning("the node still counts an old job as current; ending it", stale_job=stale)
                try:
                    await self._end_stale_job(stale, "node lost track of this job")
                except RefusedError as e:
                    self.log.warning("could not end the stale job", stale_job=stale, error=one_line(e))
        self.log.warning("could not start job; releasing it", error=one_line(error))
        if ours:
            await self._release_quietly(pk)
        return None

    async def _template(self, pk: int) -> dict[str, Any]:
        """The job template `pk`; a template version does not change, so it is read once."""
        template = self._templates.get(pk)
        if template is None:
            template = await self.client.get_template(pk)
            if len(self._templates) >= 64:
                self._templates.pop(next(iter(self._templates)))
            self._templates[pk] = template
        return template

    async def _run_started(self, job: dict[str, Any], template: dict[str, Any], spec: HandlerSpec) -> str:
        pk = int(job["pk"])
        settings = self.settings
        assert settings.work_dir is not None and self._stop is not None
        self._taken_outputs = {(str(o.get("name")), str(o.get("type"))) for o in job.get("outputs") or []
                               if isinstance(o, dict)}
        job_root = settings.work_dir / f"job-{pk}"
        shutil.rmtree(job_root, ignore_errors=True)
        work_dir = job_root / "work"
        cache_dir = settings.cache_dir
        try:
            work_dir.mkdir(parents=True)
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return await self._finish_error(pk, f"cannot create the work directory {work_dir}: {e.strerror}")

        pump = ProgressPump(lambda amount, data: self._send_progress(pk, amount, data),
                            settings.progress_interval_s)
        io = _SlotJobIO(self, pk, pump, job_root / "job.log")
        cancel_event = asyncio.Event()
        logger = self.log.bind(job_pk=pk, template=spec.name)
        watchers: list[asyncio.Task[Any]] = []
        stop_reason: str | None = None
        result: BaseException | None = None
        try:
            try:
                ctx = JobContext(job=job, template=template, spec=spec, work_dir=work_dir,
                                 cache_dir=cache_dir, io=io, cancel_event=cancel_event, logger=logger,
                                 settings=settings, cancel_grace_s=settings.cancel_grace_s,
                                 gpu=self.gpu, env=self.gpu_env())
            except Exception as e:  # malformed job fields: a clear error, not a crash
                result = e
            else:
                pump.start()
                watchers = [asyncio.create_task(self._watch_cancel(pk), name=f"cancel-watch-{pk}"),
                            asyncio.create_task(self._ping_loop(), name=f"ping-{self.node_pk}")]
                stop_reason, result = await self._run_handler(spec, ctx, cancel_event)
            finally:
                await self._stop_tasks(watchers)
        except BaseException:
            # Cancelled mid-job (a forced stop): the pump must not call the server after
            # the client is closed (that reopens a session nobody closes), nor the log leak.
            io.close()
            await pump.close(flush=False)
            raise
        try:
            return await self._conclude(pk, spec, job_root, io, pump, stop_reason, result)
        finally:
            io.close()
            if not settings.keep_work_dirs and not self._abandoned:  # a live handler keeps its files
                shutil.rmtree(job_root, ignore_errors=True)

    async def _run_handler(self, spec: HandlerSpec, ctx: JobContext, cancel_event: asyncio.Event) \
            -> tuple[str | None, BaseException | None]:
        """Run the handler until it returns, raises, or the slot is told to stop it."""
        assert self._stop is not None
        task: asyncio.Task[None] = asyncio.create_task(_call(spec.func, ctx), name=f"handler-{spec.name}")
        timeout = self.settings.job_timeout_s
        waiting: set[asyncio.Future[Any]] = {task, self._stop}
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # a forced stop: the handler must not run on without its slot
            raise
        stop_reason: str | None = None
        if task not in done:
            stop_reason = self._stop.result() if self._stop.done() else f"job timed out after {timeout:g} s"
            self.log.info("stopping the handler", reason=stop_reason)
            cancel_event.set()
            task.cancel()
            # ctx.run() stops its process group within cancel_grace_s, then waits (bounded) for
            # the kill to land, the group to go and the output pipes to close: allow for that.
            await asyncio.wait({task}, timeout=self.settings.cancel_grace_s + RUN_STOP_SLACK_S)
            if not task.done():
                self.log.error("handler ignored cancellation; abandoning it", handler=spec.name)
                self._abandoned = True
                self._stragglers.add(task)  # keep it referenced; collect its end when it comes
                task.add_done_callback(self._forget_straggler)
                return stop_reason, None
        if task.cancelled():
            return stop_reason or "handler was cancelled", None
        return stop_reason, task.exception()

    async def _conclude(self, pk: int, spec: HandlerSpec, job_root: Path, io: _SlotJobIO, pump: ProgressPump,
                        stop_reason: str | None, result: BaseException | None) -> str:
        """Report the handler's end to the server: the log, then finish (and hand back if asked)."""
        if stop_reason is not None and stop_reason.startswith("aborted"):
            # The job is no longer ours: no uploads. Finish clears current_job (answers 200).
            await pump.close(flush=False)
            await self._finish_quietly(pk, "aborted")
            return "aborted"
        if stop_reason is not None and stop_reason.startswith("cancelled"):
            await pump.close(flush=False)
            io.write_log(f"job cancelled: {stop_reason}")
            await self._upload_log(pk, io, job_root)
            await self._finish_quietly(pk, "Cancelled")
            self.state.clear_attempts(pk)
            return "cancelled"

        await pump.close(flush=stop_reason is None and result is None)
        if self._abandoned:
            # Its handler still runs somewhere: never hand the job back to run twice at once.
            return await self._finish_error(pk, f"{stop_reason}; the handler did not stop", io=io,
                                            job_root=job_root)
        if stop_reason == SHUTDOWN_REASON:
            io.write_log("job handed back: node shutting down")
            await self._upload_log(pk, io, job_root)
            await self._hand_back(pk, SHUTDOWN_REASON)
            return "released"
        if stop_reason is not None:  # timeout
            return await self._finish_error(pk, stop_reason, io=io, job_root=job_root)
        if result is None:
            await self._upload_log(pk, io, job_root)
            await self._until_done("finish", lambda: self.client.finish(pk, self.node_pk))
            self.state.clear_attempts(pk)
            return "finished"

        reason, retry = describe_failure(result, spec.name)
        if not isinstance(result, JobFailed):
            io.write_log(format_traceback(result))
        self.last_error = reason
        io.write_log(f"job failed: {reason}")
        if retry or isinstance(result, RetryJob):
            attempt = self.state.bump_attempts(pk)
            if attempt < self.settings.max_attempts:
                self.log.warning("job asked for a retry; handing it back", reason=reason,
                                 attempt=attempt, max_attempts=self.settings.max_attempts)
                await self._upload_log(pk, io, job_root)
                await self._hand_back(pk, reason)
                return "retried"
            reason = f"{reason} (gave up after {attempt} attempts)"
        self.state.clear_attempts(pk)
        return await self._finish_error(pk, reason, io=io, job_root=job_root)

    async def _finish_error(self, pk: int, reason: str, *, log: bool = True, io: _SlotJobIO | None = None,
                            job_root: Path | None = None) -> str:
        reason = one_line(reason, 1000)
        self.last_error = reason
        if log:
            self.log.warning("job failed", reason=reason)
        if io is not None and job_root is not None:
            await self._upload_log(pk, io, job_root)
        await self._until_done("finish", lambda: self.client.finish(pk, self.node_pk, error=reason))
        return "errored"

    async def _upload_log(self, pk: int, io: _SlotJobIO, job_root: Path) -> None:
        """Upload the job log as output `log`, or `log-2`, `log-3`, ... where the real server
        keeps (soft-deleted) logs of earlier runs under the names before."""
        log_path = job_root / "job.log"
        io.close()
        if not log_path.exists():
            return
        name, type_ = LOG_OUTPUT
        candidates = [name] + [f"{name}-{n}" for n in range(2, LOG_NAMES + 1)]
        for candidate in candidates:
            if (candidate, type_) in self._taken_outputs:
                continue
            async def upload(name: str = candidate) -> dict[str, Any]:
                return await self.client.upload_output(pk, self.node_pk, name, type_, log_path)

            try:
                await self._until_done("upload log", upload)
                return
            except OutputRefused:
                continue  # kept by the server from an earlier run: try the next name
            except ServerError as e:
                self.log.warning("could not upload the job log", error=one_line(e))
                return
        self.log.warning("job log not uploaded: every log name is taken on the server",
                         names=f"{candidates[0]}..{candidates[-1]}")

    async def _send_progress(self, pk: int, amount: float, data: dict[str, Any]) -> None:
        try:
            await self.client.progress(pk, self.node_pk, amount, data)
        except NotAcceptable:
            # 406: the job is no longer STARTED (cancelled): let the watcher confirm it.
            self.log.info("progress refused: job no longer running")
        except (ServerError, TypeError, ValueError) as e:  # ValueError/TypeError: data not JSON
            self.log.warning("progress not sent", error=one_line(e))

    async def _watch_cancel(self, pk: int) -> None:
        """Stop the handler when the job is cancelled or aborted: web socket, else polling."""
        if self.settings.use_websocket:
            try:
                async for message in self.client.watch_job(pk):
                    reason = _stop_reason_from_message(message, self.node_pk)
                    if reason is not None:
                        self.request_stop(reason)
                        return
            except WebSocketRefused:
                self.log.debug("web socket refused; polling for cancellation")
            except (ServerError, OSError, ValueError) as e:
                self.log.info("web socket lost; polling for cancellation", error=one_line(e))
        while True:
            await asyncio.sleep(self.settings.cancel_check_interval_s)
            try:
                job = await self.client.get_job(pk, node_id=self.node_pk)
            except ServerError as e:
                self.log.debug("cancel check failed", error=one_line(e))
                continue
            reason = _stop_reason_from_job(job, self.node_pk)
            if reason is not None:
                self.request_stop(reason)
                return

    async def _stop_tasks(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Cancel helper tasks, waiting a bounded time: a web socket whose peer never
        answers the close handshake must not hold up the job's report."""
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:  # keep a reference until it ends, then collect its outcome
                self._stragglers.add(task)
                task.add_done_callback(self._forget_straggler)

    def _forget_straggler(self, task: asyncio.Task[Any]) -> None:
        self._stragglers.discard(task)
        if not task.cancelled():
            task.exception()

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ping_interval_s)
            try:
                await self.client.ping(self.node_pk)
            except ServerError as e:
                self.log.info("ping failed", error=one_line(e))

    # -- handing back ------------------------------------------------------------

    async def _hand_back(self, pk: int, reason: str) -> None:
        """Finish with `reason`, reset, release: the job goes back to the pool.

        Recorded in the node's state first, so that a crash half-way (after the finish,
        before the release) is completed by the next start (complete_handback).
        """
        self.state.begin_handback(pk)
        await self._finish_error(pk, reason, log=False)
        await self._hand_back_errored(pk)

    async def _hand_back_errored(self, pk: int) -> None:
        """An ERRORED job of ours goes back to the pool: reset, then release."""
        try:
            await self._until_done("reset", lambda: self.client.reset(pk, self.node_pk))
        except RefusedError as e:
            self.log.warning("reset refused; leaving the job errored", error=one_line(e))
        else:
            await self._release_quietly(pk)
        self.state.end_handback(pk)  # not in a finally: a cancelled hand-back stays recorded

    async def complete_handback(self, job: dict[str, Any]) -> None:
        """Finish a hand-back a previous process began (`job` held by this node)."""
        pk = int(job["pk"])
        if job.get("end_time") is not None and job.get("error_reason") is not None \
                and not job.get("is_cancelled"):
            with bind_job(job_pk=pk):
                self.log.info("completing a hand-back a previous process began")
                await self._hand_back_errored(pk)
        else:
            self.state.end_handback(pk)

    async def _release_quietly(self, pk: int) -> None:
        try:
            await self._until_done("release", lambda: self.client.release(pk, self.node_pk))
        except RefusedError as e:
            self.log.info("release refused", job_pk=pk, error=one_line(e))

    async def _finish_quietly(self, pk: int, error: str) -> None:
        try:
            await self._until_done("finish", lambda: self.client.finish(pk, self.node_pk, error=error))
        except RefusedError as e:
            self.log.info("finish refused", job_pk=pk, error=one_line(e))

    async def _until_done(self, action: str, call: Callable[[], Awaitable[T]]) -> T:
        """Repeat a lifecycle call through an outage: a job must never stay wedged.

        The client already retries each call a few times; this loop outlasts a
        longer outage (the server being restarted), backing off up to the poll
        interval. Refusals propagate.
        """
        delay = 0.5
        while True:
            try:
                return await call()
            except TransientError as e:
                self.last_error = one_line(e)
                self.log.warning("server unavailable; will retry", action=action, error=self.last_error,
                                 retry_in_s=round(delay, 2))
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.settings.poll_backoff_max_s)


async def _call(func: Callable[[JobContext], Awaitable[None]], ctx: JobContext) -> None:
    await func(ctx)


def _stop_reason_from_message(message: dict[str, Any], node_pk: int) -> str | None:
    transition = message.get("transition")
    if transition == "cancel" or message.get("cancelled") is True:
        return "cancelled by the server"
    if transition == "abort" or (transition == "release" and pk_of(message.get("node")) != node_pk):
        return "aborted by an administrator"
    return None


def _stop_reason_from_job(job: dict[str, Any], node_pk: int) -> str | None:
    if job.get("is_cancelled") or job.get("error_reason") == "Cancelled":
        return "cancelled by the server"
    if pk_of(job.get("node")) != node_pk or job.get("start_time") is None:
        return "aborted by an administrator"
    return None
