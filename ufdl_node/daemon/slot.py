"""A slot: one node identity (one GPU index) and at most one job at a time.

Each slot is a task that loops acquire → run → report for its own job
(:meth:`Slot.serve`), asking the poller (:mod:`.poller`) for candidates. A job's whole
life on this machine reads top-down here: acquire it (:meth:`Slot._acquire`), verify
the held job, start it (:meth:`Slot.run`), run the handler in its own task with a
private work directory (:meth:`Slot._run_started`), pump progress, watch for
cancellation, then report (:meth:`Slot._conclude`): staged outputs, then finish,
finish-with-error, or a hand-back (see :mod:`.reporting`). While a job that succeeded
is being finished, the next one is acquired beside the finish (one round trip less
between two jobs). Whatever happens, a job this slot acquired ends FINISHED, ERRORED
with a readable reason, or back in the pool.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api import HandlerSpec, JobContext, describe_failure, format_traceback, process
from ..client import UfdlClient
from ..errors import (
    JobFailed,
    NotAcceptable,
    OutputRefused,
    RefusedError,
    RetryJob,
    ServerError,
    TransientError,
)
from ..hardware import GpuInfo, free_disk_bytes, unmet_gpu_needs
from ..logs import bind_job, get_logger, one_line
from ..metrics import Metrics
from ..protocol import CANCELLED_REASON, JobView, Phase
from ..settings import NodeSettings
from . import workdirs
from .containers import ContainerHost
from .job import (
    SHUTDOWN,
    JobRecord,
    JobRun,
    JobWatch,
    Outcome,
    SlotJobIO,
    Stop,
    StopReason,
    Stragglers,
    follow_finish,
    settle_failed_start,
    started_but_not_ours,
)
from .journal import Journal
from .progress import ProgressPump
from .reporting import Reporter
from .state import NodeState
from .workdirs import WorkDirs, job_log

if TYPE_CHECKING:
    from .poller import Offer, Poller

__all__ = ["SHUTDOWN", "Outcome", "Slot", "Stop", "StopReason"]

TEMPLATE_CACHE = 64  # template versions do not change: read each once
# The cancel watch begins this long after the start (at most cancel_check_interval_s): a job
# that ends sooner costs no web socket (a connection, an upgrade and a close handshake, on
# both sides). What happened meanwhile is read once before the socket opens: the server's
# replay on connect shows a cancel, but not an abort (the job is CREATED again).
WATCH_DELAY_S = 0.5


class Slot:
    """One node on the server; runs one job at a time."""

    def __init__(self, *, index: int, node_pk: int, gpu: GpuInfo | None, client: UfdlClient,
                 settings: NodeSettings, metrics: Metrics, state: NodeState,
                 containers: ContainerHost | None = None, journal: Journal | None = None) -> None:
        self.index = index
        self.containers = containers
        self.node_pk = node_pk
        self.gpu = gpu
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.state = state
        self.job: JobRecord | None = None
        self.jobs_done = 0
        self.log = get_logger("ufdl_node.slot", slot=index, node=node_pk)
        self.journal = journal
        self.reporter = Reporter(client, node_pk, state, self.log, settings.lifecycle_retry_max_s, journal)
        self._current: JobRun | None = None
        self._stragglers = Stragglers()
        self._cache_ready = False
        self._source: Poller | None = None  # where candidates come from (set by serve)
        self._stopping: Callable[[], bool] = lambda: False
        self._next: Offer | None = None  # acquired beside the last job's finish
        self._pinged_at = time.monotonic()
        assert settings.work_dir is not None
        self.dirs = WorkDirs(settings.work_dir, index)
        self._templates: dict[int, dict[str, Any]] = {}
        self.not_acquired: str | None = None  # why the last job offered was not taken (/status)

    @property
    def last_error(self) -> str | None:
        """The last error this slot met (shown by /status)."""
        return self.reporter.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self.reporter.last_error = value

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def phase(self) -> str | None:
        """The phase of the job this slot runs (for /status): STARTED once its start went
        through; None when idle."""
        current = self._current
        return None if current is None else str(current.view.phase)

    # -- the slot's loop: acquire → run → report ------------------------------------------

    async def serve(self, source: Poller, stopping: Callable[[], bool], first: Offer | None = None) -> None:
        """Run jobs one after another until told to stop (or, with exit_when_idle, until no
        work is left). `first`: a job a previous process left, whose container is followed
        again (re-attached: it is STARTED already)."""
        self._source, self._stopping = source, stopping
        offer, reattach, urgent = first, first is not None, True
        if first is not None:
            source.took(first[0].pk)
        while True:
            if offer is None:
                offer = await self._acquire(source, urgent)
                if offer is None:
                    return
            held, spec = offer
            if stopping() and not reattach:  # acquired just as the stop came: back to the pool
                await self.reporter.release_quietly(held.pk)
                source.returned(held.pk)
                return
            outcome = await self._run_guarded(held, spec, reattach)
            source.ended(held.pk, outcome)
            offer, self._next = self._next, None
            reattach, urgent = False, outcome is not Outcome.RELEASED

    async def _acquire(self, source: Poller, urgent: bool) -> Offer | None:
        """Wait for a candidate this slot can serve and acquire it; None once told to stop,
        or with exit_when_idle once no job is left here."""
        while not self._stopping():
            await self._ping_when_idle(source)
            offer = await source.candidate(self, urgent=urgent)
            urgent = False
            if offer is None:
                reading = self.containers is not None and self.containers.reading_records
                if self.settings.exit_when_idle and source.holding == 0 and not reading:
                    return None  # the supervisor says so once every slot has ended
                await source.wait(source.wait_s())
                continue
            held = await self._try_offer(source, offer[0])
            if held is not None:
                return held, offer[1]
        return None

    async def _try_offer(self, source: Poller, view: JobView) -> JobView | None:
        """Acquire a candidate; None when another node won it or the server is down (then
        the candidate stays for later and every slot backs off)."""
        try:
            held = await self.try_acquire(view)
        except TransientError as e:
            source.put_back(view)  # untried for all we know
            source.failed(e)
            return None
        except (KeyError, TypeError, ValueError) as e:  # a reply without a usable job
            self.log.warning("acquire failed; a stray hold is released by the next sweep",
                             job_pk=view.pk, error=one_line(e))
            return None
        if held is not None:
            source.took(held.pk)
        return held

    async def _follow_up(self) -> None:
        """Beside a finish: acquire the next job from the candidates (the start waits for
        the finish: the server refuses one while the node has a current job)."""
        source = self._source
        if source is None or self._stopping():
            return
        offer = await source.candidate(self)
        if offer is not None and not self._stopping():
            held = await self._try_offer(source, offer[0])
            if held is not None:
                self._next = held, offer[1]

    async def _run_guarded(self, held: JobView, spec: HandlerSpec, reattach: bool) -> Outcome:
        """Run one job; a bug is logged as the slot's error, never the end of the slot.
        A re-attached job's containers are all gone afterwards, even where its handler
        ended (say, failed) before it followed the container."""
        try:
            return await self.run(held, spec, reattach=reattach)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not take the daemon down
            self.last_error = one_line(e)
            self.log.exception("slot crashed", slot=self.index)
            return Outcome.ERRORED
        finally:
            if reattach and self.containers is not None:
                await asyncio.shield(self.containers.sweep_job(self.node_pk, held.pk))

    async def _ping_when_idle(self, source: Poller) -> None:
        """Every ping_interval_s an idle node pings (a busy one pings from its job), so
        last_seen says it is alive, and releases any job it holds but never started (an
        acquire whose reply was lost)."""
        now = time.monotonic()
        if now - self._pinged_at < self.settings.ping_interval_s:
            return
        self._pinged_at = now
        try:
            await self.client.ping(self.node_pk, attempts=1)  # the poll says if the server is down
            if await self.reporter.release_strays():
                source.back_in_pool()  # below highest_pk: the next list is a full one
        except ServerError as e:
            self.log.debug("ping failed", node=self.node_pk, error=one_line(e))

    # -- what the poller asks --------------------------------------------------

    def can_serve(self, spec: HandlerSpec, job: JobView | None = None) -> str | None:
        """None when this slot's hardware meets the handler's (and the job's image's) needs,
        else why not."""
        if job is not None and self.containers is not None:
            self.not_acquired = self.containers.gate(job, self.gpu, self.index)
            if self.not_acquired is not None:
                return self.not_acquired
        needs = spec.needs
        if (unmet := unmet_gpu_needs(needs, self.gpu)) is not None:
            return unmet
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

    def request_stop(self, stop: Stop) -> None:
        """Stop the running job's handler (shutdown, server-side cancel, abort, timeout)."""
        current = self._current
        if current is not None and not current.stop.done() and current.accepts(stop):
            current.stop.set_result(stop)

    # -- one job -----------------------------------------------------------------------

    async def try_acquire(self, job: JobView) -> JobView | None:
        """Acquire `job` for this node; None when another node won the race."""
        try:
            # The real server's acquire is read-then-write: two nodes can both get 200. No
            # GET reads it back here; the start's reply, read by the server later still, is
            # checked instead (see job.started_but_not_ours).
            return JobView.parse(await self.client.acquire(job.pk, self.node_pk, verify=False))
        except NotAcceptable:
            return None  # another node holds it: the normal outcome of a race
        except RefusedError as e:
            self.log.info("acquire refused", job_pk=job.pk, reason=one_line(e))
            return None
        except ServerError as e:
            # The acquire may have landed with its reply lost. The supervisor's sweep of
            # idle slots (release_strays) hands such a job back within ping_interval_s.
            self.log.warning("acquire failed; a stray hold is released by the next sweep",
                             job_pk=job.pk, error=one_line(e))
            if isinstance(e, TransientError):
                raise  # the server is down: the next candidate would fare no better
            return None

    async def run(self, held: JobView, spec: HandlerSpec, *, reattach: bool = False) -> Outcome:
        """Run an acquired job to its end. Returns the outcome for metrics and tests.

        `reattach`: the job is STARTED already, by a previous process whose container
        still runs; its work directory is kept and its handler follows the container."""
        self.job = JobRecord(pk=held.pk, template=held.template_name)
        self._current = JobRun(view=held, stop=asyncio.get_running_loop().create_future())
        self.metrics.slots_busy.inc()
        began = time.monotonic()
        outcome = Outcome.ERRORED
        try:
            with bind_job(job_pk=held.pk, template=held.template_name, slot=self.index, node=self.node_pk):
                try:
                    outcome = await self._run(self._current, spec, reattach)
                except RefusedError as e:
                    # A lifecycle call refused for good (say, finish of a job an admin
                    # took away): the server no longer lets this node act on the job.
                    self.last_error = one_line(e)
                    self.log.error("server refused a lifecycle call; dropping the job",
                                   error=self.last_error)
                self.log.info("job ended", outcome=outcome.value)
            return outcome
        finally:
            elapsed = time.monotonic() - began
            self.metrics.slot_busy.labels(str(self.index)).inc(elapsed)
            self.metrics.jobs.labels(outcome.value).inc()
            self.metrics.job_duration.labels(outcome.value).observe(elapsed)
            self.metrics.slots_busy.dec()
            self.jobs_done += 1
            self.job = None
            self._current = None

    async def _run(self, run: JobRun, spec: HandlerSpec, reattach: bool = False) -> Outcome:
        held = run.view
        if reattach:
            return await self._run_started(run, await self._template(held.template_pk), spec, keep=True)
        # Before start: anything wrong hands the job back untouched. `held` is the
        # acquire's reply: a job cancelled just before can still be acquired, but must
        # not be started.
        try:
            if not (held.held_by(self.node_pk) and held.startable):
                self.log.info("job is not ours to start (cancelled or taken); handing it back")
                await self.reporter.release_quietly(held.pk)
                return Outcome.RELEASED
            template = await self._template(held.template_pk)
            job = JobView.parse(await self.client.start(held.pk, self.node_pk))
        except (ServerError, KeyError, TypeError, ValueError) as e:
            self.last_error = one_line(e)
            started = await settle_failed_start(self.reporter, held.pk, e, self._template)
            if started is None:
                return Outcome.RELEASED
            job, template = started
        if not (job.held_by(self.node_pk) and job.phase is Phase.STARTED):
            return await started_but_not_ours(self.reporter, job)
        run.view = job
        self.log.info("job started")
        try:
            return await self._run_started(run, template, spec)
        except (asyncio.CancelledError, RefusedError):
            raise
        except Exception as e:  # a bug of ours must not leave a started job wedged
            self.log.exception("internal error while running the job")
            await self.reporter.finish_error(job.pk, f"ufdl-node internal error: {one_line(e)}")
            return Outcome.ERRORED

    async def _template(self, pk: int | None) -> dict[str, Any]:  # a version never changes: read once
        if pk is None:
            raise ValueError("the job names no template")
        template = self._templates.get(pk)
        if template is None:
            template = await self.client.get_template(pk)
            if len(self._templates) >= TEMPLATE_CACHE:
                self._templates.pop(next(iter(self._templates)))
            self._templates[pk] = template
        return template

    async def _run_started(self, run: JobRun, template: dict[str, Any], spec: HandlerSpec,
                           keep: bool = False) -> Outcome:
        pk = run.view.pk
        settings = self.settings
        run.job_root = self.dirs.job_root(pk)
        work_dir = workdirs.work_dir(run.job_root)
        try:
            work_dir = self.dirs.make(run.job_root, keep=keep)
            if not self._cache_ready:  # once per slot; the job's context makes it again if gone
                settings.cache_dir.mkdir(parents=True, exist_ok=True)
                self._cache_ready = True
        except OSError as e:
            await self.reporter.finish_error(pk, f"cannot create the work directory {work_dir}: {e.strerror}")
            return Outcome.ERRORED
        if self.journal is not None:
            self.journal.begin(pk, self.node_pk, run.view.template_name, run.job_root)

        run.watch = JobWatch(client=self.client, node_pk=self.node_pk, settings=settings, log=self.log,
                             request_stop=self.request_stop)
        run.pump = ProgressPump(functools.partial(run.watch.send_progress, pk), settings.progress_interval_s)
        run.io = SlotJobIO(pk=pk, node_pk=self.node_pk, client=self.client, reporter=self.reporter,
                           pump=run.pump, log_path=job_log(run.job_root), log=self.log, record=self.job)
        if self.containers is not None:
            run.io.containers = self.containers.for_job(node_pk=self.node_pk, slot=self.index, gpu=self.gpu,
                                                        job_pk=pk, job_root=run.job_root)
        stop: Stop | None = None
        result: BaseException | None = None
        reported = False
        try:
            try:
                stop, result = await self._run_handler(run, template, spec, work_dir)
            except BaseException:
                # Cancelled mid-job (a forced stop): the pump must not call the server after the
                # client is closed (that reopens a session nobody closes), nor the log leak.
                run.io.close()
                await run.pump.close(flush=False)
                raise
            outcome = await self._conclude(run, spec, stop, result)
            reported = True
            return outcome
        except Exception:
            # A refusal (the job is no longer ours) or a bug the caller reports: either way
            # nothing is left for a restart to complete. Only a forced stop leaves it open.
            reported = True
            raise
        finally:
            run.io.close()
            if reported and self.journal is not None:
                self.journal.close(pk)
            # Files of a job whose report is still pending stay for the next start to complete
            # it (the journal); a live handler keeps its files too.
            if not settings.keep_work_dirs and not run.abandoned and \
                    (self.journal is None or not self.journal.is_open(pk)):
                self.dirs.recycle(run.job_root)
            else:
                self.dirs.make_spare()

    async def _run_handler(self, run: JobRun, template: dict[str, Any], spec: HandlerSpec,
                           work_dir: Path) -> tuple[Stop | None, BaseException | None]:
        """Make the handler's context and run it with the cancel watcher and pinger beside it."""
        assert run.io is not None and run.pump is not None
        settings, pk = self.settings, run.view.pk
        cancel_event = asyncio.Event()
        try:
            ctx = JobContext(job=dict(run.view.raw), template=template, spec=spec, work_dir=work_dir,
                             cache_dir=settings.cache_dir, io=run.io, cancel_event=cancel_event,
                             logger=self.log.bind(job_pk=pk, template=run.view.template_name,
                                                  handler=spec.name), settings=settings,
                             cancel_grace_s=settings.cancel_grace_s, gpu=self.gpu, env=self.gpu_env(),
                             work_dir_made=True)
        except Exception as e:  # malformed job fields: a clear error, not a crash
            return None, e
        run.pump.start()
        watchers: list[asyncio.Task[Any]] = []

        def watch() -> None:  # later: a job that ends sooner costs no tasks, no socket, no ping
            assert run.watch is not None
            watchers.append(asyncio.create_task(run.watch.watch_cancel(pk), name=f"cancel-watch-{pk}"))
            watchers.append(asyncio.create_task(run.watch.ping_loop(), name=f"ping-{self.node_pk}"))

        later = asyncio.get_running_loop().call_later(
            min(WATCH_DELAY_S, self.settings.cancel_check_interval_s), watch)
        try:
            return await self._until_handler_ends(run, spec, ctx, cancel_event)
        finally:
            later.cancel()
            await self._stragglers.stop(watchers)

    async def _until_handler_ends(self, run: JobRun, spec: HandlerSpec, ctx: JobContext,
                                  cancel_event: asyncio.Event) -> tuple[Stop | None, BaseException | None]:
        """Run the handler until it returns, raises, or the slot is told to stop it."""
        task: asyncio.Task[None] = asyncio.create_task(_call(spec.func, ctx), name=f"handler-{spec.name}")
        timeout = self.settings.job_timeout_s
        waiting: set[asyncio.Future[Any]] = {task, run.stop}
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # a forced stop: the handler must not run on without its slot,
            # but it stops its processes or container first, whatever cancels the slot again
            await self._stragglers.settle(task, self.settings.cancel_grace_s + process.RUN_STOP_SLACK_S)
            raise
        stop: Stop | None = None
        if task not in done:
            stop = run.stop.result() if run.stop.done() else \
                Stop(StopReason.TIMEOUT, f"job timed out after {timeout:g} s")
            self.log.info("stopping the handler", reason=stop.text)
            cancel_event.set()
            task.cancel()
            # ctx.run() stops its process group within cancel_grace_s, then waits (bounded) for
            # the kill to land, the group to go and the output pipes to close: allow for that.
            await asyncio.wait({task}, timeout=self.settings.cancel_grace_s + process.RUN_STOP_SLACK_S)
            if not task.done():
                self.log.error("handler ignored cancellation; abandoning it", handler=spec.name)
                run.abandoned = True
                self._stragglers.keep(task)  # referenced until it ends; its end collected
                return stop, None
        if task.cancelled():
            return stop or Stop(StopReason.HANDLER_CANCELLED, StopReason.HANDLER_CANCELLED.value), None
        return stop, task.exception()

    async def _conclude(self, run: JobRun, spec: HandlerSpec, stop: Stop | None,
                        result: BaseException | None) -> Outcome:
        """Report the handler's end to the server: the log, then finish (and hand back if asked)."""
        assert run.io is not None and run.pump is not None
        pk, io, reporter = run.view.pk, run.io, self.reporter
        reason = stop.reason if stop is not None else None
        if reason is StopReason.ABORTED:
            # The job is no longer ours: no uploads. Finish clears current_job (answers 200).
            await run.pump.close(flush=False)
            await reporter.finish_quietly(pk, "aborted")
            return Outcome.ABORTED
        if reason is StopReason.CANCELLED:
            assert stop is not None
            await run.pump.close(flush=False)
            io.write_log(f"job cancelled: {stop.text}")
            await reporter.upload_log(pk, io, run.view.outputs)
            await reporter.finish_quietly(pk, CANCELLED_REASON)
            self.state.clear_attempts(pk)
            return Outcome.CANCELLED

        if stop is None and result is None:
            if self.journal is not None:  # from here on a restart completes the job, not re-runs it
                self.journal.handler_succeeded(pk)
            try:  # the outputs the handler made: the server gets them only now (job.py)
                await io.upload_staged()
            except (OutputRefused, JobFailed) as e:
                await run.pump.close(flush=False)
                return await self._finish_error(run, str(e))
            # No last progress: the finish follows at once, and a finished job shows as done
            # (a call in flight lands first: progress after the finish is refused).
            if run.pump.idle:  # nothing to wait for (a short job): no tasks for a gather
                await run.pump.close(flush=False, cancel=False)
                await reporter.upload_log(pk, io, run.view.outputs)
            else:
                await asyncio.gather(run.pump.close(flush=False, cancel=False),
                                     reporter.upload_log(pk, io, run.view.outputs))
            await self._finish_and_follow(pk)
            self.state.clear_attempts(pk)
            return Outcome.FINISHED
        await run.pump.close(flush=False)
        if stop is not None and run.abandoned:
            # Its handler still runs somewhere: never hand the job back to run twice at once.
            return await self._finish_error(run, f"{stop.text}; the handler did not stop")
        if reason is StopReason.SHUTDOWN:
            io.write_log("job handed back: node shutting down")
            await reporter.upload_log(pk, io, run.view.outputs)
            await reporter.hand_back(pk, SHUTDOWN.text)
            return Outcome.RELEASED
        if stop is not None:  # a timeout, or the handler's task cancelled from inside
            return await self._finish_error(run, stop.text)
        assert result is not None
        return await self._conclude_failure(run, spec, result)

    async def _finish_and_follow(self, pk: int) -> None:
        """Finish a job that succeeded; meanwhile acquire the next one (:meth:`_follow_up`).
        A failure to acquire only means none is next; a failure to finish is the caller's."""
        if self._source is None:
            await self.reporter.finish(pk)
            return
        # The acquire in a task of its own, made by a callback queued before the finish is sent
        # (see job.follow_finish): the finish goes on the wire first, the server ends the job
        # before it takes the next one. The finish's error is raised once the acquire ended too.
        follow: list[asyncio.Task[None]] = []
        handle = asyncio.get_running_loop().call_soon(
            lambda: follow.append(asyncio.create_task(self._follow_up(), name=f"follow-up-{self.index}")))
        await follow_finish(self.reporter.finish(pk), handle, follow, self.log)

    async def _conclude_failure(self, run: JobRun, spec: HandlerSpec, result: BaseException) -> Outcome:
        """The handler raised: hand the job back for a retry, or finish it with the reason."""
        assert run.io is not None
        pk, io = run.view.pk, run.io
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
                await self.reporter.upload_log(pk, io, run.view.outputs)
                await self.reporter.hand_back(pk, reason)
                return Outcome.RETRIED
            reason = f"{reason} (gave up after {attempt} attempts)"
        self.state.clear_attempts(pk)
        return await self._finish_error(run, reason)

    async def _finish_error(self, run: JobRun, reason: str) -> Outcome:
        """Upload the job log, then finish the job with `reason`."""
        assert run.io is not None
        self.last_error = one_line(reason, 1000)
        self.log.warning("job failed", reason=self.last_error)
        if self.journal is not None:
            self.journal.handler_failed(run.view.pk, self.last_error)
        # Not run again here: the outputs its handler made can show without getting in the way.
        await run.io.upload_staged(best_effort=True)
        await self.reporter.upload_log(run.view.pk, run.io, run.view.outputs)
        await self.reporter.finish_error(run.view.pk, reason, log=False)
        return Outcome.ERRORED


async def _call(func: Callable[[JobContext], Awaitable[None]], ctx: JobContext) -> None:
    await func(ctx)
