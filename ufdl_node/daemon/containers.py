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
  than the slot's GPU and driver offer is not acquired by that slot.

The files of a job's containers live in ``<job root>/containers/``: ``cursor.json``
(which call, the log cursor, how long the job log was then) and ``step-N.exit`` (a
call whose container already ended, so that a re-run handler does not run it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..container_spec import ContainerSpec, LogCursor, job_labels
from ..containers import (
    ContainerEngine,
    ContainerError,
    ContainerRun,
    EngineFacts,
    ImagePullError,
    PullProgress,
    RegistryAuth,
    RegistryAuthError,
)
from ..errors import JobFailed, RetryJob, ServerError
from ..hardware import GpuInfo
from ..logs import get_logger, one_line, register_secret, scrub
from ..protocol import JobView, Phase
from ..transport import NO_BODY, Transport
from ..work.records import docker_image
from ..work.server import ServerAccess

log = get_logger("ufdl_node.containers")

CURSOR_SAVE_INTERVAL_S = 0.5  # the job log is cut back to the saved cursor on re-attach
FAIL_LINES = 5  # lines of a failed container's output in the job's error
GATE_CACHE_S = 600.0  # a Docker-image record is read again after this long
GATE_CACHE_MAX = 256
LABEL_EXTRA_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass(frozen=True)
class ImageChoice:
    """What to run: the reference, the registry credentials, whether it may use a GPU."""

    ref: str
    auth: RegistryAuth | None = None
    cpu_only: bool = False
    record_name: str | None = None  # None: a plain reference, not a record


def image_choice(image: str | Mapping[str, Any]) -> ImageChoice:
    """A plain reference, or a Docker-image record (``url``, ``registry_*``, ``cpu``)."""
    if isinstance(image, str):
        if not image.strip():
            raise JobFailed("container: the image reference is empty")
        return ImageChoice(image.strip())
    if not isinstance(image, Mapping) or not isinstance(image.get("url"), str) or not image["url"].strip():
        raise JobFailed(f"container: {one_line(repr(image), 80)} is neither an image reference "
                        "nor a docker image record with a url")
    auth = None
    user, password = image.get("registry_username"), image.get("registry_password")
    if isinstance(user, str) and user and isinstance(password, str) and password:
        register_secret(password)
        server = image.get("registry_url") if isinstance(image.get("registry_url"), str) else None
        auth = RegistryAuth(user, password, _registry_server(server))
    name = f"{image.get('name')} v{image.get('version')}" if image.get("name") else image["url"].strip()
    return ImageChoice(image["url"].strip(), auth, bool(image.get("cpu")), name)


def _registry_server(url: str | None) -> str | None:
    """The host[:port] of a registry URL as the record gives it (with or without scheme)."""
    if not url:
        return None
    text = url.split("://", 1)[-1]
    return text.split("/", 1)[0] or None


def _version(text: Any) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", str(text or ""))
    return tuple(int(p) for p in parts) if parts else None


def image_fit(record: Mapping[str, Any], gpu: GpuInfo | None,
              driver_version: str | None = None) -> str | None:
    """None when a slot with `gpu` can run the image of `record`, else why not (one line)."""
    if record.get("cpu") is True:
        return None
    name = f"docker image {record.get('name') or record.get('url') or record.get('pk')}"
    if gpu is None:
        return f"{name} needs a GPU (its record is not marked cpu); this slot has none"
    raw_cuda = record.get("cuda_version")
    cuda: Mapping[str, Any] = raw_cuda if isinstance(raw_cuda, Mapping) else {}
    driver = gpu.driver_version or driver_version
    wanted, have = _version(cuda.get("min_driver_version")), _version(driver)
    if wanted is not None and have is not None and have < wanted:
        return (f"{name} needs NVIDIA driver >= {cuda.get('min_driver_version')} "
                f"(CUDA {cuda.get('version')}); GPU {gpu.index} has {driver}")
    generation = record.get("min_hardware_generation")
    if isinstance(generation, Mapping):
        try:
            low = float(generation.get("min_compute_capability") or 0)
        except (TypeError, ValueError):
            low = 0.0
        if gpu.compute_capability < low:
            return (f"{name} needs hardware generation {generation.get('generation')} (compute capability "
                    f">= {low:g}); GPU {gpu.index} has {gpu.compute_capability:g}")
    return None


def image_parameter(job: JobView) -> tuple[str, Any, str] | None:
    """(name, value, type) of the job's Docker-image parameter, if it has one."""
    values = job.raw.get("parameter_values")
    if not isinstance(values, Mapping):
        return None
    for name, entry in values.items():
        if isinstance(entry, Mapping) and "DockerImage" in str(entry.get("type") or ""):
            return str(name), entry.get("value"), str(entry.get("type"))
    return None


RecordFetcher = Callable[[Any, str], Awaitable[dict[str, Any]]]
GATE_RETRY_S = 30.0  # reading a record for gating: a short budget, the next poll asks again


class _TransportIO:
    """The work toolkit's ServerIO over the daemon's client (its one exchange, no retries)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @staticmethod
    def _path(path: str, params: Mapping[str, str] | None) -> str:
        return path + ("?" + urllib.parse.urlencode(params) if params else "")

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, str] | None = None) -> Any:
        return await self.transport._request("docker record", method, self._path(path, params),
                                             json_body=NO_BODY if json is None else json)

    def stream(self, method: str, path: str, *, json: Any = None,
               params: Mapping[str, str] | None = None) -> AbstractAsyncContextManager[Any]:
        return self.transport._response("docker record", method, self._path(path, params),
                                        json_body=NO_BODY if json is None else json)


def record_fetcher(transport: Transport) -> RecordFetcher:
    """Reads the Docker-image record a job parameter names, through the daemon's client."""
    access = ServerAccess(_TransportIO(transport), retry_s=GATE_RETRY_S)

    async def fetch(value: Any, type_: str) -> dict[str, Any]:
        return await docker_image(access, value, type_)

    return fetch


@dataclass
class _Gate:
    """Docker-image records by parameter value, read in the background (the poll is synchronous)."""

    fetch: RecordFetcher
    records: dict[str, tuple[float, dict[str, Any] | None]] = field(default_factory=dict)
    pending: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    said: set[tuple[int, int, str]] = field(default_factory=set)

    def record(self, value: Any, type_: str) -> tuple[bool, dict[str, Any] | None]:
        """(known, record); a record not known yet is read in the background."""
        key = json.dumps([value, type_], sort_keys=True, default=str)
        cached = self.records.get(key)
        if cached is not None and time.monotonic() - cached[0] < GATE_CACHE_S:
            return True, cached[1]
        if key not in self.pending:
            self.pending[key] = asyncio.create_task(self._load(key, value, type_), name="docker-record")
        return False, None

    async def _load(self, key: str, value: Any, type_: str) -> None:
        try:
            record: dict[str, Any] | None = await self.fetch(value, type_)
        except (JobFailed, ServerError, ValueError, TypeError, KeyError) as e:
            # Not gated then: the handler reads it again and fails the job with the reason.
            log.info("docker image record not readable for gating", value=one_line(value, 80),
                     error=one_line(e))
            record = None
        if len(self.records) >= GATE_CACHE_MAX:
            self.records.pop(next(iter(self.records)))
        self.records[key] = (time.monotonic(), record)
        self.pending.pop(key, None)

    async def close(self) -> None:
        for task in self.pending.values():
            task.cancel()
        await asyncio.gather(*self.pending.values(), return_exceptions=True)
        self.pending.clear()


class ContainerHost:
    """One per daemon: the engine, the container settings, this daemon's label and the gate."""

    def __init__(self, settings: Any, *, fetch_record: RecordFetcher | None = None,
                 engine: ContainerEngine | None = None) -> None:
        self.settings = settings
        self.engine = engine or ContainerEngine(getattr(settings, "docker_url", None))
        self._gate = _Gate(fetch_record) if fetch_record is not None else None

    def node_label(self, node_pk: int) -> str:
        """The value of the node label of `node_pk`'s containers (the server is part of it)."""
        return f"{node_pk}@{self.settings.server_url}"

    def for_job(self, *, node_pk: int, slot: int, gpu: GpuInfo | None, job_pk: int,
                job_root: Path) -> JobContainers:
        """The `ctx.container` runner of one job on one slot."""
        return JobContainers(self, self.node_label(node_pk), str(slot), gpu, job_pk, job_root)

    async def close(self) -> None:
        """Close the connection to dockerd; the containers keep running."""
        if self._gate is not None:
            await self._gate.close()
        await self.engine.close()

    # -- gating before acquire -------------------------------------------------------------

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
            job: JobView | None = None
            if pk is not None and pk == current and keep is None and job_root_of(pk).is_dir():
                try:
                    job = await read_job(pk)
                except (ServerError, KeyError, TypeError, ValueError) as e:
                    log.warning("cannot read the job of a container", job_pk=pk, error=one_line(e))
            if pk is not None and job is not None and job.held_by(node_pk) and job.phase is Phase.STARTED \
                    and not job.cancelled and can_run(job):
                keep = job
                _cut_log_to_cursor(job_root_of(pk))
                log.info("re-attaching to the container of a job left running", job_pk=pk,
                         container=run.short_id)
                continue
            log.info("removing a container left by a previous process", job_pk=pk, container=run.short_id)
            await _stop_and_remove(run, self.settings.cancel_grace_s)
        return keep


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

    async def run(self, ctx: Any, image: str | Mapping[str, Any], command: Sequence[str] | str, *,
                  progress_regex: str | re.Pattern[str] | None = None, env: Mapping[str, str] | None = None,
                  binds: Sequence[str] = (), check: bool = True) -> int:
        """Run `command` in `image` for the job of `ctx`; its exit code (JobFailed if non-zero
        and `check`). See :meth:`ufdl_node.api.JobContext.container`."""
        self._step += 1
        step = self._step
        self.dir.mkdir(parents=True, exist_ok=True)
        done = self.dir / f"step-{step}.exit"
        if done.exists():  # ran to its end before a restart: not again
            code = int(done.read_text().strip() or "0")
            ctx.log.info("container step already ran before the restart", step=step, exit_code=code)
            return self._check(code, [], check)
        choice = image_choice(image)
        if choice.record_name is not None and not choice.cpu_only and self.gpu is None:
            raise JobFailed(f"docker image {choice.record_name} needs a GPU (its record is not marked cpu); "
                            "this slot has none")
        labels = job_labels(self.node_label, self.slot, self.job_pk)
        existing = [r for r in await self._find(labels) if r.labels.get(_STEP_LABEL) == str(step)]
        if existing and not (self.dir / "cursor.json").exists():
            # Not a re-attach (a fresh run empties the job's directory): a container left by an
            # earlier attempt whose removal failed. It must not pass for this run's.
            for stale in existing:
                await _stop_and_remove(stale, 0)
            existing = []
        if existing:
            run, cursor = existing[-1], self._saved_cursor(step)
            ctx.log.info("re-attached to the job's container", container=run.short_id, step=step)
        else:
            run, cursor = await self._start(ctx, choice, command, env, binds, step), None
        pattern = re.compile(progress_regex) if isinstance(progress_regex, str) else progress_regex
        try:
            code, tail = await self._follow(ctx, run, cursor, step, pattern)
        except BaseException:
            # Cancelled (server cancel, timeout, shutdown, forced stop): the container goes too.
            await _stop_and_remove_surely(run, ctx.cancel_grace_s)
            raise
        done.write_text(str(code))
        with contextlib.suppress(ContainerError):
            await run.remove()
        ctx.log.info("container exited", container=run.short_id, exit_code=code)
        return self._check(code, tail, check)

    def _check(self, code: int, tail: list[str], check: bool) -> int:
        if code != 0 and check:
            last = " | ".join(one_line(line, 200) for line in tail[-FAIL_LINES:])
            raise JobFailed(f"the container exited with {code}" + (f"; last lines: {last}" if last else ""))
        return code

    async def _find(self, labels: Mapping[str, str]) -> list[ContainerRun]:
        try:
            return await self.host.engine.find(labels)
        except ContainerError as e:
            raise RetryJob(f"cannot run a container on this node: {e}") from None

    def _saved_cursor(self, step: int) -> LogCursor | None:
        saved = _read_json(self.dir / "cursor.json")
        if not isinstance(saved, dict) or saved.get("step") != step or not saved.get("timestamp"):
            return None
        return LogCursor(str(saved["timestamp"]), int(saved.get("seen") or 1))

    async def _start(self, ctx: Any, choice: ImageChoice, command: Sequence[str] | str,
                     env: Mapping[str, str] | None, binds: Sequence[str], step: int) -> ContainerRun:
        settings = self.host.settings
        await self._pull(ctx, choice)
        use_gpu = self.gpu is not None and not choice.cpu_only
        extra_labels = {str(k): str(v) for k, v in (settings.docker_labels or {}).items()}
        extra_labels[_STEP_LABEL] = str(step)
        try:
            spec = ContainerSpec(
                image=choice.ref, command=command, node=self.node_label, slot=self.slot, job_pk=self.job_pk,
                work_dir=Path(ctx.work_dir).resolve(), cache_dir=Path(ctx.cache_dir).resolve(),
                env={**(settings.docker_env or {}), **_gpu_env(self.gpu if use_gpu else None), **(env or {})},
                binds=[*settings.docker_binds, *binds], user=settings.docker_user,
                shm_size_bytes=settings.docker_shm_size_bytes, network_mode=settings.docker_network_mode,
                gpu_uuid=(self.gpu.uuid or str(self.gpu.index)) if use_gpu and self.gpu else None,
                labels=extra_labels)
            run = await self.host.engine.start(spec)
        except ContainerError as e:
            raise JobFailed(str(e)) from None
        # A re-attach before the first saved cursor reads the output from its start: the
        # job log is cut back to here so that no line is in it twice.
        self._save_cursor(step, None, self.job_root / "job.log")
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
            raise RetryJob(f"cannot run a container on this node: {e}") from None

    async def _follow(self, ctx: Any, run: ContainerRun, cursor: LogCursor | None, step: int,
                      pattern: re.Pattern[str] | None) -> tuple[int, list[str]]:
        """Copy the container's lines into the job log (and progress) until it exits."""
        tail: list[str] = []
        saved_at = 0.0
        log_path = self.job_root / "job.log"
        async for line in run.lines(after=cursor):
            text = scrub(line.text.rstrip()[:10000])
            if text:
                ctx.io.write_log(text)
                tail = [*tail, text][-FAIL_LINES:]
                if pattern is not None:
                    ctx._parse_progress(pattern, text)
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


_STEP_LABEL = "org.ufdl.node.step"


def _gpu_env(gpu: GpuInfo | None) -> dict[str, str]:
    # The device request exposes only that GPU; inside it is device 0 whatever its index outside.
    return {"NVIDIA_VISIBLE_DEVICES": gpu.uuid or str(gpu.index)} if gpu is not None else {}
