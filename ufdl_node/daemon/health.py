"""Node-wide conditions that stop acquisitions: a full disk, a state directory that
cannot be written, Docker down.

A node that takes jobs it cannot run is a black hole: every job it takes fails at
once, and other nodes never get them. :class:`NodeHealth` is asked by the poller
before each job is offered to a slot:

- disks: the free space of ``work_dir`` and ``cache_dir`` must be at least
  ``min_free_work_bytes``, that of ``state_dir`` at least the smaller of that and
  :data:`STATE_MIN_FREE_BYTES`, and a small file must be writable in ``state_dir``
  (the journal and the state file live there). Checked in a thread, at most every
  :data:`DISK_CHECK_INTERVAL_S` (and at the next poll after a job that did not
  finish); while one fails, no job is acquired at all, ``/healthz`` is 503 with the
  reason, and the node resumes by itself once the check passes again.
- Docker: while dockerd cannot be reached, jobs that need it (a handler whose
  ``Needs.docker`` is set, such as the ``docker`` handler's templates, or a job with a
  Docker-image parameter) are not acquired; the other templates are served. Docker is
  probed at the start (when some handler needs it), every ``docker_probe_interval_s``
  while it is down, and at once when a container job meets an unreachable dockerd.

Each change is logged once (going bad as a warning, coming back as info), not per poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from ..api import HandlerSpec
from ..containers.engine import ContainerEngine
from ..hardware import free_disk_bytes
from ..logs import get_logger, one_line
from ..protocol import JobView
from ..settings import NodeSettings
from .images import image_parameter
from .state import write_whole

log = get_logger("ufdl_node.health")

DISK_CHECK_INTERVAL_S = 5.0  # statvfs and one small write, in a thread, at most this often
STATE_MIN_FREE_BYTES = 64 * 2**20  # the state directory holds small files: journal, state.json, starts.log
PROBE_FILE = ".health-probe"


def needs_docker(spec: HandlerSpec, job: JobView | None = None) -> bool:
    """Whether a job of `spec` (and `job`, with its parameters) needs a reachable dockerd."""
    return spec.needs.docker or (job is not None and image_parameter(job) is not None)


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def disk_problem(settings: NodeSettings) -> str | None:
    """Why the node's disks cannot take a job now, or None (blocking: call it in a thread)."""
    assert settings.work_dir is not None
    minimum = settings.min_free_work_bytes
    places = [("work_dir", settings.work_dir, minimum), ("cache_dir", settings.cache_dir, minimum),
              ("state_dir", settings.state_dir, min(minimum, STATE_MIN_FREE_BYTES))]
    for name, path, need in places:
        if not need:
            continue
        try:
            free = free_disk_bytes(path)
        except OSError as e:
            return f"{name} {path} cannot be checked: {e.strerror or e}"
        if free < need:
            return f"{name} {path} is full: {_mib(free)} free, needs {_mib(need)} (min_free_work_bytes)"
    try:
        write_whole(settings.state_dir / PROBE_FILE, f"{time.time()}\n", durable=False)
    except OSError as e:
        return f"state_dir {settings.state_dir} cannot be written: {e.strerror or one_line(e)}"
    return None


class NodeHealth:
    """The disks' and Docker's state, re-checked as the poll goes (see the module's docstring)."""

    def __init__(self, settings: NodeSettings, engine: ContainerEngine | None,
                 specs: list[HandlerSpec]) -> None:
        self.settings = settings
        self.engine = engine
        self.use_specs(specs)
        self.disk: str | None = None  # why no job is acquired at all, or None
        self.docker: str | None = None  # why no container job is acquired, or None
        self._docker_suspect: str | None = None  # a job's Docker error, until a probe says more
        self.on_change: Callable[[], None] | None = None  # the systemd STATUS line
        self.recoveries = 0  # how many times a problem went away (the poller then lists all jobs)
        self._disk_at = float("-inf")
        self._probe_now = asyncio.Event()
        self._prober: asyncio.Task[None] | None = None

    def use_specs(self, specs: list[HandlerSpec]) -> None:
        """Whether Docker matters, from the handlers (again after a reload: daemon/control.py)."""
        self.docker_wanted = self.engine is not None and any(spec.needs.docker for spec in specs)
        # Every handler needs Docker: Docker down leaves the node nothing to do (then /healthz is 503).
        self.docker_only = self.docker_wanted and all(spec.needs.docker for spec in specs)

    # -- what the poller and the status ask ------------------------------------------------

    def blocked(self) -> str | None:
        """Why this node takes no job at all now, or None."""
        return self.disk

    def unhealthy(self) -> str | None:
        """What /healthz says: a disk problem, or Docker down on a node that runs only containers."""
        return self.disk or (self.docker if self.docker_only else None)

    def status_line(self) -> str:
        """What the systemd STATUS line adds: why jobs are not taken, or nothing."""
        if self.disk is not None:
            return f"; not taking jobs: {one_line(self.disk, 120)}"
        return f"; no container jobs: {one_line(self.docker, 120)}" if self.docker is not None else ""

    def gate(self, spec: HandlerSpec, job: JobView | None = None) -> str | None:
        """Why a job of `spec` must not be acquired now, or None."""
        if self.disk is not None:
            return self.disk
        docker = self.docker or self._docker_suspect
        if docker is not None and needs_docker(spec, job):
            return docker
        return None

    def status(self) -> dict[str, Any]:
        """For /status: what stops acquisitions now (None where nothing does)."""
        return {"disk": self.disk, "docker": self.docker if self.docker_wanted else None,
                "docker_checked": self.docker_wanted}

    # -- the checks --------------------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> None:
        """Re-check the disks if the last check is older than DISK_CHECK_INTERVAL_S."""
        now = time.monotonic()
        if not force and now - self._disk_at < DISK_CHECK_INTERVAL_S:
            return
        self._disk_at = now
        self._set_disk(await asyncio.to_thread(disk_problem, self.settings))

    def suspect(self) -> None:
        """A job did not finish: the disks are checked again at the next poll, whatever the interval."""
        self._disk_at = float("-inf")

    def docker_failed(self, error: str) -> None:
        """A container job could not use dockerd: no container job is taken until a probe,
        at once, says whether it answers (a job that fails for another reason costs one probe)."""
        if self.docker_wanted and self.docker is None:
            self._docker_suspect = f"checking Docker after a job's error: {error}"
            self._probe_now.set()

    def _set_disk(self, problem: str | None) -> None:
        was, self.disk = self.disk, problem
        self._changed(was, problem, "not taking jobs: the node's disk cannot take them",
                      "the node's disks are fine again; taking jobs")

    def _set_docker(self, problem: str | None) -> None:
        was, self.docker = self.docker, problem
        self._changed(was, problem, "not taking container jobs (the others go on)",
                      "Docker reachable again; taking container jobs")

    def _changed(self, was: str | None, problem: str | None, down: str, up: str) -> None:
        """Say a change of one check once (not per poll), count a recovery, tell the status."""
        if (was is None) == (problem is None):
            return
        if problem is not None:
            log.warning(down, reason=problem)
        else:
            log.info(up)
            self.recoveries += 1
        if self.on_change is not None:
            self.on_change()

    async def probe_docker(self) -> None:
        """Ask dockerd once (async, bounded by the engine's probe timeout)."""
        if not self.docker_wanted or self.engine is None:
            return
        facts = await self.engine.probe()
        if self._docker_suspect is not None and facts.reachable:
            self.recoveries += 1  # the jobs left out while it was in doubt: listed again
        self._docker_suspect = None
        self._set_docker(None if facts.reachable else f"Docker unreachable: {facts.reason}")

    # -- the prober's task ------------------------------------------------------------------

    async def start(self) -> None:
        """Probe Docker now (when some handler needs it), then in the background."""
        if not self.docker_wanted:
            return
        await self.probe_docker()
        self._prober = asyncio.create_task(self._probe_loop(), name="docker-probe")

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None

    async def _probe_loop(self) -> None:
        """Re-probe every docker_probe_interval_s while Docker is down (and at once when a job
        found it gone); while it is up, every ten intervals, to notice it going."""
        interval = self.settings.docker_probe_interval_s
        while True:
            wait = interval if self.docker is not None else interval * 10
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._probe_now.wait(), wait)
            self._probe_now.clear()
            try:
                await self.probe_docker()
            except Exception as e:  # a bug of the probe must not end the re-probing
                log.warning("Docker probe failed", error=one_line(e))

