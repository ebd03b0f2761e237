"""The daemon's side of jobs in containers: `ctx.container`, re-attach, and gating.

- :class:`ContainerHost`: one per daemon (one `ContainerEngine`, one connection to
  dockerd), the container settings, and the node label that finds this daemon's
  containers again;
- :class:`JobContainers`: what `ctx.container(...)` delegates to for one job: pull
  (progress into the job), create with the slot's GPU only, stream the output into
  the job log and through the progress regex, stop and remove on cancel;
- re-attach (:meth:`ContainerHost.recover_slot`): a container belongs to dockerd, so
  a daemon that died leaves it running; at the next start the job that is still this
  node's and STARTED is run again by its handler, whose `ctx.container` call finds the
  running container by label and follows it from the `LogCursor` persisted beside the
  job log, instead of starting the script a second time;
- gating (:meth:`ContainerHost.gate`): a job whose Docker-image record needs more
  than the slot's GPU and driver offer is not acquired by that slot (the record, the
  fit and the gate's cache: :mod:`.images`).

The files of a job's containers live in ``<job root>/containers/``: ``run-id`` (this
run's id, saved before its first container is created and put on each container as a
label with the call's step, so that a restart knows this run's container whatever the
moment the daemon died at: running, it is followed; exited, completed; created but never
started, started; a container of the step without this run's id is an earlier attempt's
and goes), ``cursor.json`` (which call, the log cursor, how long the job log was then;
saved before the create) and ``step-N.exit`` (a call whose container already ended, so
that a re-run handler does not run it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from secrets import token_hex
from typing import Any, NamedTuple

from ..containers.engine import (
    ContainerEngine,
    ContainerError,
    ContainerRun,
    EngineFacts,
    EngineUnavailable,
    ImagePullError,
    PullProgress,
    RegistryAuthError,
)
from ..containers.spec import ContainerSpec, LogCursor, job_labels
from ..errors import JobFailed, RetryJob, ServerError
from ..hardware import GpuInfo
from ..logs import get_logger, one_line, scrub
from ..protocol import JobView, Phase
from .images import GATE_CACHE_MAX, Gate, ImageChoice, RecordFetcher, image_choice, image_fit, image_parameter

log = get_logger("ufdl_node.containers.engine")

CURSOR_SAVE_INTERVAL_S = 0.5  # the job log is cut back to the saved cursor on re-attach
FAIL_LINES = 5  # lines of a failed container's output in the job's error
REMOVAL_WAIT_S = 30.0  # at shutdown: the containers being removed in the background
LABEL_EXTRA_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")


class ContainerHost:
    """One per daemon: the engine, the container settings, this daemon's label and the gate."""

    def __init__(self, settings: Any, *, fetch_record: RecordFetcher | None = None,
                 engine: ContainerEngine | None = None) -> None:
        self.settings = settings
        self.engine = engine or ContainerEngine(getattr(settings, "docker_url", None))
        self._gate = Gate(fetch_record) if fetch_record is not None else None
        # Told when a job cannot talk to dockerd (NodeHealth.docker_failed): no container job
        # is taken until a probe says whether it answers.
        self.on_docker_error: Callable[[str], None] | None = None
        self._removals: set[asyncio.Task[None]] = set()

    def unreachable(self, error: ContainerError) -> RetryJob:
        """The hand-back of a job that could not use dockerd; the health check is told."""
        if self.on_docker_error is not None:
            self.on_docker_error(one_line(error))
        return RetryJob(f"cannot run a container on this node: {error}")

    def remove_later(self, run: ContainerRun) -> None:
        """Remove an exited container in the background: the job's outputs and its finish do
        not wait on dockerd (about 0.4 s a container). One a crash leaves behind is removed
        at the next start, as any container of a previous process."""
        task = asyncio.create_task(_remove_quietly(run), name=f"remove-container-{run.short_id}")
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    def node_label(self, node_pk: int) -> str:
        """The value of the node label of `node_pk`'s containers (the server is part of it)."""
        return f"{node_pk}@{self.settings.server_url}"

    def for_job(self, *, node_pk: int, slot: int, gpu: GpuInfo | None, job_pk: int,
                job_root: Path) -> JobContainers:
        """The `ctx.container` runner of one job on one slot."""
        return JobContainers(self, self.node_label(node_pk), str(slot), gpu, job_pk, job_root)

    async def close(self) -> None:
        """Close the connection to dockerd, once the removals under way are done; the
        containers still running keep running."""
        if self._removals:
            await asyncio.wait(set(self._removals), timeout=REMOVAL_WAIT_S)
        if self._gate is not None:
            await self._gate.close()
        await self.engine.close()

    # -- gating before acquire -------------------------------------------------------------

    @property
    def reading_records(self) -> bool:
        """Whether a job's docker-image record is being read for the gate: a job held back
        for it is work still to come (exit_when_idle waits for it)."""
        return self._gate is not None and bool(self._gate.pending)

    def gate(self, job: JobView, gpu: GpuInfo | None, slot_index: int) -> str | None:
        """Why a slot with `gpu` must not acquire `job` (its Docker image needs more), or None.

        A record not read yet holds the job back for one poll while it is read.
        """
        found = image_parameter(job)
        if found is None or self._gate is None:
            return None
        _, value, type_ = found
        known, record = self._gate.record(value, type_)
        reason = "reading the job's docker image record" if not known else \
            (image_fit(record, gpu) if record is not None else None)
        if reason is not None and known and (job.pk, slot_index, reason) not in self._gate.said:
            if len(self._gate.said) >= GATE_CACHE_MAX * 40:
                self._gate.said.clear()
            self._gate.said.add((job.pk, slot_index, reason))
            log.info("not acquiring: the slot cannot run the job's image", job_pk=job.pk,
                     slot=slot_index, reason=reason)
        return reason

    # -- recovery ------------------------------------------------------------------------------

    async def recover_slot(self, node_pk: int, job_root_of: Callable[[int], Path],
                           read_job: Callable[[int], Awaitable[JobView]], current: int | None,
                           can_run: Callable[[JobView], bool]) -> JobView | None:
        """The job to re-attach on this slot (still ours and STARTED, its container there), or None.

        Every other container of this node is stopped and removed: its job is no
        longer ours to finish, and the usual recovery hands it back.
        """
        try:
            found = await self.engine.find(job_labels(self.node_label(node_pk)))
        except ContainerError as e:
            log.info("containers not checked at start", node=node_pk, error=one_line(e))
            return None
        keep: JobView | None = None
        for run in found:
            pk = run.job_pk
            if keep is None and pk is not None and pk == current and job_root_of(pk).is_dir():
                keep = await self._still_ours(pk, node_pk, read_job, can_run)
                if keep is not None:
                    _cut_log_to_cursor(job_root_of(pk))
            if keep is not None and pk == keep.pk:
                # Each container of the job stays: its handler tells its own run's (by the
                # run label, set at create) from an earlier attempt's, and removes those.
                log.info("re-attaching to the container of a job left running", job_pk=pk,
                         container=run.short_id)
                continue
            log.info("removing a container left by a previous process", job_pk=pk, container=run.short_id)
            await _stop_and_remove(run, self.settings.cancel_grace_s)
        return keep

    async def sweep_job(self, node_pk: int, job_pk: int) -> None:
        """Stop and remove what is left of job `job_pk`'s containers on node `node_pk`."""
        try:
            for run in await self.engine.find(job_labels(self.node_label(node_pk), job_pk=job_pk)):
                log.info("removing a container its job no longer follows", job_pk=job_pk,
                         container=run.short_id)
                await _stop_and_remove(run, self.settings.cancel_grace_s)
        except ContainerError as e:
            log.warning("cannot remove the containers of a job", job_pk=job_pk, error=one_line(e))

    @staticmethod
    async def _still_ours(pk: int, node_pk: int, read_job: Callable[[int], Awaitable[JobView]],
                          can_run: Callable[[JobView], bool]) -> JobView | None:
        """Job `pk` when it is still this node's, STARTED, not cancelled and runnable here."""
        try:
            job = await read_job(pk)
        except (ServerError, KeyError, TypeError, ValueError) as e:
            log.warning("cannot read the job of a container", job_pk=pk, error=one_line(e))
            return None
        if job.held_by(node_pk) and job.phase is Phase.STARTED and not job.cancelled and can_run(job):
            return job
        return None


async def probe_docker(url: str | None = None) -> EngineFacts:
    """What `hwinfo` and `check-config` say about Docker: reachable, version, NVIDIA runtime."""
    async with ContainerEngine(url) as engine:
        return await engine.probe()


def _cut_log_to_cursor(job_root: Path) -> None:
    """Cut the job log back to where the saved cursor was written: the lines after it
    are read again from the container, so they must not be there twice."""
    saved = _read_json(job_root / "containers" / "cursor.json")
    size = saved.get("log_bytes") if isinstance(saved, dict) else None
    log_path = job_root / "job.log"
    if isinstance(size, int) and log_path.exists() and log_path.stat().st_size > size:
        with log_path.open("r+b") as f:
            f.truncate(size)


async def _remove_quietly(run: ContainerRun) -> None:
    with contextlib.suppress(ContainerError):
        await run.remove()


async def _stop_and_remove(run: ContainerRun, grace_s: float) -> None:
    try:
        await run.stop(grace_s)
    finally:
        with contextlib.suppress(ContainerError):
            await run.remove()


async def _stop_and_remove_surely(run: ContainerRun, grace_s: float) -> None:
    """_stop_and_remove that no further cancellation cuts short: a container must not outlive
    a Ctrl-C (the engine closes once its caller has returned)."""
    cleanup = asyncio.ensure_future(_stop_and_remove(run, grace_s))
    while not cleanup.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(cleanup)
    cleanup.result()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: Any) -> None:
    """Whole or not at all (a temporary file renamed over); no fsync: the job log it
    describes is not fsynced either, and a daemon killed outright loses neither."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    os.replace(tmp, path)


class JobContainers:
    """`ctx.container` for one job: each call is a numbered step, run once even across restarts."""

    def __init__(self, host: ContainerHost, node_label: str, slot: str, gpu: GpuInfo | None,
                 job_pk: int, job_root: Path) -> None:
        self.host = host
        self.node_label = node_label
        self.slot = slot
        self.gpu = gpu
        self.job_pk = job_pk
        self.job_root = job_root
        self.dir = job_root / "containers"
        self._step = 0
        self._in_flight = 0  # calls of run() not returned yet
        self._last_exit: int | None = None
        self._tail: list[str] = []  # the last lines of the last container (for its failure)
        self.held_stop: Callable[[], object] | None = None  # a drain's stop, held (JobRun.accepts)

    @property
    def work_done(self) -> bool:
        """Whether a container ran here and the last one exited 0, with none running now."""
        return self._in_flight == 0 and self._last_exit == 0

    async def run(self, ctx: Any, image: str | Mapping[str, Any], command: Sequence[str] | str, *,
                  progress_regex: str | re.Pattern[str] | None = None, env: Mapping[str, str] | None = None,
                  binds: Sequence[str] = (), check: bool = True, shm_size_bytes: int | None = None) -> int:
        """Run `command` in `image` for the job of `ctx`; its exit code (JobFailed if non-zero
        and `check`). See :meth:`ufdl_node.api.JobContext.container`."""
        self._in_flight += 1
        try:
            code = await self._run_step(ctx, image, command, progress_regex, env,
                                        _Extra(binds, shm_size_bytes))
        finally:
            self._in_flight -= 1
        self._last_exit = code
        return self._check(code, self._tail, check)

    async def _run_step(self, ctx: Any, image: str | Mapping[str, Any], command: Sequence[str] | str,
                        progress_regex: str | re.Pattern[str] | None, env: Mapping[str, str] | None,
                        extra: _Extra) -> int:
        self._tail = []
        self._step += 1
        step = self._step
        self.dir.mkdir(parents=True, exist_ok=True)
        done = self.dir / f"step-{step}.exit"
        if done.exists():  # ran to its end before a restart: not again
            code = int(done.read_text().strip() or "0")
            ctx.log.info("container step already ran before the restart", step=step, exit_code=code)
            return code
        choice = image_choice(image)
        if choice.record_name is not None and not choice.cpu_only and self.gpu is None:
            raise JobFailed(f"docker image {choice.record_name} needs a GPU (its record is not marked cpu); "
                            "this slot has none")
        run = await self._ours(ctx, step)
        cursor = self._saved_cursor(step) if run is not None else None
        if run is not None:
            ctx.log.info("re-attached to the job's container", container=run.short_id, step=step)
        else:
            if self.held_stop is not None:  # a drain waits for no new container: the stop applies
                self.held_stop()
                await asyncio.Event().wait()  # until the slot cancels the handler
            run = await self._start(ctx, choice, command, env, extra, step)
        pattern = re.compile(progress_regex) if isinstance(progress_regex, str) else progress_regex
        try:
            code, tail = await self._follow(ctx, run, cursor, step, pattern)
        except BaseException:
            # Cancelled (server cancel, timeout, shutdown, forced stop): the container goes too.
            await _stop_and_remove_surely(run, ctx.cancel_grace_s)
            raise
        done.write_text(str(code))
        self.host.remove_later(run)
        ctx.log.info("container exited", container=run.short_id, exit_code=code)
        self._tail = tail
        return code

    async def _ours(self, ctx: Any, step: int) -> ContainerRun | None:
        """This run's container of `step`, left by a process that died (running, exited, or
        created but not started: it is started now), or None. Any other container of the
        job's step is an earlier attempt's (its removal failed): it goes."""
        labels = job_labels(self.node_label, self.slot, self.job_pk)
        existing = [r for r in await self._find(labels) if r.labels.get(_STEP_LABEL) == str(step)]
        run_id = _read_text(self.dir / RUN_ID_FILE)
        ours = [r for r in existing if run_id and r.labels.get(_RUN_LABEL) == run_id]
        for stale in existing:
            if stale not in ours:
                await _stop_and_remove(stale, 0)
        for extra in ours[:-1]:  # never two: the newest is followed
            await _stop_and_remove(extra, 0)
        if not ours:
            return None
        try:
            if await ours[-1].start_if_created():
                ctx.log.info("started the job's container created before the restart",
                             container=ours[-1].short_id, step=step)
        except ContainerError as e:
            raise RetryJob(f"cannot run a container on this node: {e}") from None
        return ours[-1]

    def _run_id(self) -> str:
        """This run's id (one per work directory: a re-attach keeps it), made and saved before
        the first container is created, so that a container found later is known as this
        run's whatever the moment the daemon died at."""
        path = self.dir / RUN_ID_FILE
        run_id = _read_text(path)
        if not run_id:
            run_id = token_hex(8)
            _write_text(path, run_id)
        return run_id

    def _check(self, code: int, tail: list[str], check: bool) -> int:
        if code != 0 and check:
            last = " | ".join(one_line(line, 200) for line in tail[-FAIL_LINES:])
            raise JobFailed(f"the container exited with {code}" + (f"; last lines: {last}" if last else ""))
        return code

    async def _find(self, labels: Mapping[str, str]) -> list[ContainerRun]:
        try:
            return await self.host.engine.find(labels)
        except ContainerError as e:
            raise self.host.unreachable(e) from None

    def _saved_cursor(self, step: int) -> LogCursor | None:
        saved = _read_json(self.dir / "cursor.json")
        if not isinstance(saved, dict) or saved.get("step") != step or not saved.get("timestamp"):
            return None
        return LogCursor(str(saved["timestamp"]), int(saved.get("seen") or 1))

    async def _start(self, ctx: Any, choice: ImageChoice, command: Sequence[str] | str,
                     env: Mapping[str, str] | None, extra: _Extra, step: int) -> ContainerRun:
        settings = self.host.settings
        await self._pull(ctx, choice)
        use_gpu = self.gpu is not None and not choice.cpu_only
        extra_labels = {str(k): str(v) for k, v in (settings.docker_labels or {}).items()}
        extra_labels[_STEP_LABEL] = str(step)
        extra_labels[_RUN_LABEL] = self._run_id()
        try:
            spec = ContainerSpec(
                image=choice.ref, command=command, node=self.node_label, slot=self.slot, job_pk=self.job_pk,
                work_dir=Path(ctx.work_dir).resolve(), cache_dir=Path(ctx.cache_dir).resolve(),
                env={**(settings.docker_env or {}), **_gpu_env(self.gpu if use_gpu else None), **(env or {})},
                binds=[*settings.docker_binds, *extra.binds], user=settings.docker_user,
                shm_size_bytes=extra.shm_size_bytes or settings.docker_shm_size_bytes,
                network_mode=settings.docker_network_mode,
                gpu_uuid=(self.gpu.uuid or str(self.gpu.index)) if use_gpu and self.gpu else None,
                labels=extra_labels)
            # Before the create: a daemon that dies from here on finds the container by its
            # labels, and a re-attach reads its output from the start, the job log cut back
            # to here so that no line is in it twice.
            self._save_cursor(step, None, self.job_root / "job.log")
            run = await self.host.engine.start(spec)
        except EngineUnavailable as e:
            raise self.host.unreachable(e) from None
        except ContainerError as e:
            raise JobFailed(str(e)) from None
        ctx.log.info("container started", container=run.short_id, image=choice.ref, step=step,
                     gpu=spec.gpu_uuid)
        return run

    async def _pull(self, ctx: Any, choice: ImageChoice) -> None:
        def on_progress(progress: PullProgress) -> None:
            ctx.io.write_log(scrub(f"pull {choice.ref}: {progress.status}"))
            if progress.fraction is not None:
                ctx.progress(progress.fraction, stage="pull")

        try:
            await self.host.engine.ensure_image(choice.ref, auth=choice.auth,
                                                policy=self.host.settings.docker_pull_policy,
                                                on_progress=on_progress)
        except RegistryAuthError as e:
            # Another node (or this one later, with the record fixed) may pull it: hand it back.
            raise RetryJob(str(e)) from None
        except ImagePullError as e:
            raise JobFailed(str(e)) from None
        except ContainerError as e:
            raise self.host.unreachable(e) from None

    async def _follow(self, ctx: Any, run: ContainerRun, cursor: LogCursor | None, step: int,
                      pattern: re.Pattern[str] | None) -> tuple[int, list[str]]:
        """Copy the container's lines into the job log (and progress) until it exits."""
        tail: list[str] = []
        saved_at = 0.0
        log_path = self.job_root / "job.log"
        async for line in run.lines(after=cursor):
            # A tqdm bar is one Docker log line of updates joined by \r: each goes through the
            # progress regex, so that progress moves within it; the job log keeps the last
            # (what a terminal would show), not thousands of updates an epoch.
            pieces = [p.rstrip() for p in line.text.split("\r")]
            if pattern is not None:
                for piece in pieces:
                    if piece:
                        ctx._parse_progress(pattern, piece)
            text = scrub(next((p for p in reversed(pieces) if p), "")[:10000])
            if text:
                ctx.io.write_log(text)
                tail = [*tail, text][-FAIL_LINES:]
            now = time.monotonic()
            if run.cursor is not None and now - saved_at >= CURSOR_SAVE_INTERVAL_S:
                saved_at = now
                self._save_cursor(step, run.cursor, log_path)
        code = await run.wait()
        if code != 0 and not tail:
            with contextlib.suppress(ContainerError):
                tail = await run.last_lines(FAIL_LINES)
        return code, tail

    def _save_cursor(self, step: int, cursor: LogCursor | None, log_path: Path) -> None:
        try:
            size = log_path.stat().st_size if log_path.exists() else 0
            _write_json(self.dir / "cursor.json", {
                "step": step, "timestamp": cursor.timestamp if cursor else None,
                "seen": cursor.seen if cursor else 0, "log_bytes": size})
        except OSError as e:
            log.warning("cannot save the container log cursor", error=one_line(e))


class _Extra(NamedTuple):
    """A step's own container settings: extra binds, its /dev/shm (None: the node's)."""

    binds: Sequence[str]
    shm_size_bytes: int | None


_STEP_LABEL = "org.ufdl.node.step"
_RUN_LABEL = "org.ufdl.node.run"
RUN_ID_FILE = "run-id"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _gpu_env(gpu: GpuInfo | None) -> dict[str, str]:
    # The device request exposes only that GPU; inside it is device 0 whatever its index outside.
    return {"NVIDIA_VISIBLE_DEVICES": gpu.uuid or str(gpu.index)} if gpu is not None else {}
