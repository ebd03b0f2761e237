"""The daemon: `ufdl-node run`.

``Supervisor.run()`` reads top-down: startup → register → recover → main loop
(poller, slots, watchdog) → drain → shutdown. Signals are handled in one place
(``capture_signals``) and can be left out when the daemon is embedded (dry-run,
demo, tests): the first SIGTERM/SIGINT stops taking work and drains, a second
stops now.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from .. import __version__
from ..api import HandlerSpec
from ..client import UfdlClient
from ..errors import (
    AuthenticationFailed,
    ConfigError,
    ExitCode,
    MalformedReply,
    PluginError,
    RefusedError,
    ServerError,
    TransientError,
)
from ..hardware import HardwareInfo, detect_hardware, node_fields, node_ip, slot_indices
from ..logs import get_logger, one_line, register_secret
from ..metrics import Metrics
from ..protocol import JobView
from ..registry import Registry
from ..settings import PASSWORD_ENV, NodeSettings, root_password_warning
from .backoff import Backoff
from .containers import ContainerHost
from .crashes import LoopLagWatch, end_poison_job
from .health import NodeHealth
from .identity import NodeLock
from .images import record_fetcher
from .job import SHUTDOWN, Outcome
from .journal import Journal
from .poller import Poller
from .slot import Follow, Slot
from .state import NodeState, StateDirLock
from .systemd import Notifier

__all__ = ["ExitCode", "Supervisor", "run_daemon"]

T = TypeVar("T")
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FIRST_RETRY_S = 0.5  # the first wait of a startup call through an outage
FIRST_POLL_RETRY_S = 1.0  # the first wait of the poll loop after a failed find-work


class Supervisor:
    """Registers one node per slot, polls for work and runs it, drains on shutdown."""

    def __init__(self, settings: NodeSettings, *, registry: Registry | None = None,
                 hardware: HardwareInfo | None = None, metrics: Metrics | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.hardware = hardware
        self.metrics = metrics or Metrics()
        # Handler subprocesses must not inherit NOTIFY_SOCKET and talk to systemd for us.
        self.notifier = notifier or Notifier.from_env(unset_environment=True)
        self.log = get_logger("ufdl_node.supervisor")
        self.client: UfdlClient | None = None
        self.poller: Poller | None = None
        self.slots: list[Slot] = []
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self.started_at = time.time()
        self.last_error: str | None = None
        self.server_reachable = False
        self._first_contact = False  # reached, or said once that it was not (a wrong server_url)
        self.last_loop_tick = time.monotonic()
        self._wake = asyncio.Event()
        self._tasks: dict[Slot, asyncio.Task[Outcome]] = {}
        self._status_server: Any = None
        self._snapshot: Any = None
        self._left_behind: dict[Slot, int | None] = {}  # a node's current_job found at registration
        self.containers: ContainerHost | None = None
        self.health: NodeHealth | None = None  # disks and Docker: what stops acquisitions
        self.state = NodeState(settings.state_dir / "state.json")
        self.journal = Journal(settings.state_dir / "journal", keep_work_dirs=settings.keep_work_dirs,
                               starts=self.state)
        self._lock = StateDirLock(settings.state_dir)
        self._node_lock: NodeLock | None = None  # one daemon per node identity on this host
        self.ip = ""  # the address this daemon's nodes are registered under
        self._lag_watch: asyncio.Task[None] | None = None

    # -- the lifecycle, top-down ---------------------------------------------------------

    async def run(self) -> ExitCode:
        """Run until told to stop (or idle, with exit_when_idle); the process's exit code."""
        try:
            await self.startup()
            if not self.should_exit.is_set():
                await self.register()
            if not self.should_exit.is_set():
                await self.recover()
                self.notifier.ready()
                self._notify_status()
                await self.main_loop()
            await self.drain()
        except AuthenticationFailed as e:
            self.log.error("the server refused the credentials", error=one_line(e))
            return ExitCode.AUTH
        except (ConfigError, PluginError) as e:
            self.log.error("cannot start", error=one_line(e))
            return ExitCode.CONFIG
        except RefusedError as e:  # a startup call the server refuses for good
            self.log.error("cannot start", error=f"the server refused: {one_line(e)}")
            return ExitCode.CONFIG
        except (TransientError, MalformedReply):
            if not self.should_exit.is_set():
                raise
            # told to stop while the server was still unreachable at startup: nothing is held
        finally:
            await self.shutdown()
        return ExitCode.FORCED if self.force_exit else ExitCode.OK

    async def startup(self) -> None:
        """Lock the state directory, load handlers, find the hardware, make the client and log in."""
        settings = self.settings
        self._lock.acquire()  # before anything else: a second daemon must not recover our jobs
        password = settings.resolved_password()
        register_secret(password)
        self._forget_environment_password()
        if self.registry is None:
            self.registry = Registry.load(settings.handler_dirs, settings=settings)
        if self.hardware is None:
            self.hardware = await asyncio.to_thread(detect_hardware)  # NVML calls block
        self.ip = settings.node_ip or node_ip()
        # Before anything else is started: a second daemon for these nodes must not run.
        self._node_lock = NodeLock(settings.server_url, self.ip,
                                   slot_indices(self.hardware, settings.gpu_indices), settings.state_dir)
        self._node_lock.acquire()
        # From here to the shutdown: a handler that blocks the loop is named (recovery and drain too).
        self._lag_watch = asyncio.create_task(LoopLagWatch(self._running_jobs).run(), name="loop-lag-watch")
        assert settings.work_dir is not None
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        from .status import SnapshotWriter, snapshot_path

        self._snapshot = SnapshotWriter(snapshot_path(settings.state_dir), self.status)
        await self._snapshot.start()
        self.client = UfdlClient(settings.server_url, settings.username, password,
                                 request_timeout_s=settings.request_timeout_s,
                                 upload_timeout_s=settings.upload_timeout_s,
                                 retry_max_attempts=settings.retry_max_attempts,
                                 retry_max_delay_s=settings.retry_max_delay_s,
                                 metrics=self.metrics)
        self.containers = ContainerHost(settings, fetch_record=record_fetcher(self.client))
        self.health = NodeHealth(settings, self.containers.engine, self.registry.specs())
        self.containers.on_docker_error = self.health.docker_failed
        self.health.on_change = self._notify_status
        await self.health.start()  # Docker probed once now (bounded), then in the background
        self.poller = Poller(self.client, self.registry, settings, self.metrics, self.health)
        if settings.status_listen:
            from .status import StatusServer

            self._status_server = StatusServer(settings.status_listen, status=self.status,
                                               healthy=self.healthy, metrics=self.metrics,
                                               allow_public=settings.status_allow_public)
            await self._status_server.start()
            self.log.info("status endpoint listening", url=self._status_server.url)
        self.log.info("ufdl-node starting", version=__version__, server=settings.server_url,
                      handlers=[s.name for s in self.registry.specs()], gpus=len(self.hardware.gpus))
        await self._until_reachable("login", self.client.login)

    async def register(self) -> None:
        """One node per slot: find it by ip and index and update it, or create it."""
        assert self.client is not None and self.hardware is not None
        client, hardware, ip = self.client, self.hardware, self.ip
        rows = await self._until_reachable("hardware", client.hardware_generations)
        for index in slot_indices(hardware, self.settings.gpu_indices):
            fields = node_fields(hardware, index, rows)
            found = await self._until_reachable("find node", functools.partial(client.find_node, ip, index))
            if found is None:
                node = await self._until_reachable(
                    "create node", functools.partial(client.create_node, {"ip": ip, "index": index} | fields))
            else:
                node = await self._until_reachable(
                    "update node", functools.partial(client.update_node, int(found["pk"]), fields))
                node["current_job"] = found.get("current_job", node.get("current_job"))
            gpu = next((g for g in hardware.gpus if g.index == index), None)
            slot = Slot(index=index, node_pk=int(node["pk"]), gpu=gpu, client=client,
                        settings=self.settings, metrics=self.metrics, state=self.state,
                        containers=self.containers, journal=self.journal)
            self._left_behind[slot] = node.get("current_job")
            self.slots.append(slot)
            self.log.info("node registered", slot=index, node=node["pk"], ip=ip)
        self.metrics.slots.set(len(self.slots))

    async def recover(self) -> None:
        """What a previous process left: journaled jobs, current jobs, holds never started,
        hand-backs half done."""
        assert self.client is not None
        client = self.client
        # First the journal: a job whose handler had ended is finished, not run again.
        reporters = {slot.node_pk: slot.reporter for slot in self.slots}
        ended = await self._until_reachable("recover", functools.partial(self.journal.recover, reporters))
        reattached: set[int] = set()
        for slot in self.slots:
            current = self._left_behind.pop(slot, None)
            if current in ended or (current is not None and await self._poisoned(slot, current)):
                current = None  # the journal finished it, or the node died running it too often
            if await self._reattach(slot, current):
                if current is not None:
                    reattached.add(current)
                current = None  # its job goes on: not the usual error, reset, release
            await self._until_reachable("recover", functools.partial(slot.reporter.recover, current))
        # A job left mid-handler runs again from scratch, unless its container was re-attached.
        self.journal.clean_mid_handler(keep=reattached)
        by_node = {slot.node_pk: slot for slot in self.slots}
        for pk in self.state.pending_handbacks():
            try:
                reply = await self._until_reachable("recover", functools.partial(client.get_job, pk))
                job = JobView.parse(reply)
            except (RefusedError, KeyError, TypeError, ValueError) as e:  # say, the job is gone
                self.log.info("forgetting a hand-back", job_pk=pk, reason=one_line(e))
                self.state.end_handback(pk)
                continue
            holder = by_node.get(job.holder) if job.holder is not None else None
            if holder is None:
                self.state.end_handback(pk)
            else:
                complete = functools.partial(holder.reporter.complete_handback, job)
                await self._until_reachable("recover", complete)

    async def _poisoned(self, slot: Slot, pk: int) -> bool:
        """Whether job `pk`, left running on `slot` by a process that died, was ended ERRORED
        for having taken the node down too often (crashes.py)."""
        root = self.journal.mid_handler.get(pk, self.settings.job_work_root / f"job-{pk}")
        return await self._until_reachable("recover", functools.partial(
            end_poison_job, slot.reporter, self.state, pk, root, self.settings.max_crash_restarts))

    async def _reattach(self, slot: Slot, current: int | None) -> bool:
        """Follow the container a previous process left running for `slot`'s current job
        (it is still ours and STARTED); any other container of the node goes."""
        assert self.containers is not None and self.client is not None and self.registry is not None
        client, registry, work_root = self.client, self.registry, self.settings.job_work_root

        async def read_job(pk: int) -> JobView:
            reply = await self._until_reachable("recover", functools.partial(client.get_job, pk))
            return JobView.parse(reply)

        def can_run(job: JobView) -> bool:
            return registry.for_template(job.template_name, job.template_version or 0) is not None

        job = await self.containers.recover_slot(slot.node_pk, lambda pk: work_root / f"job-{pk}",
                                                 read_job, current, can_run)
        if job is None:
            return False
        spec = registry.for_template(job.template_name, job.template_version or 0)
        assert spec is not None
        self._tasks[slot] = asyncio.create_task(self._run_reattached(slot, job, spec),
                                                name=f"slot-{slot.index}-job-{job.pk}")
        await asyncio.sleep(0)  # the slot marks itself busy before the first poll
        return True

    async def _run_reattached(self, slot: Slot, job: JobView, spec: HandlerSpec) -> Outcome:
        """Run a re-attached job; then no container of it is left, even where its handler
        ended (say, failed) before it followed the container."""
        try:
            return await self._run_slot(slot, job, spec, reattach=True)
        finally:
            if self.containers is not None:
                await asyncio.shield(self.containers.sweep_job(slot.node_pk, job.pk))

    async def main_loop(self) -> None:
        """Poll for work and hand it to idle slots until told to stop."""
        watchdog = asyncio.create_task(self._watchdog_loop(), name="watchdog")
        backoff = Backoff(FIRST_POLL_RETRY_S, self.settings.poll_backoff_max_s)
        try:
            while not self.should_exit.is_set():
                self.last_loop_tick = time.monotonic()
                idle = [slot for slot in self.slots if not slot.busy]
                if self.health is not None:  # in a thread, at most every few seconds
                    await self.health.refresh()
                wait_s = self.settings.poll_interval_s + random.uniform(0, self.settings.poll_jitter_s)
                if idle:
                    started, failed = await self._poll(idle)
                    if failed:
                        wait_s = backoff.next_delay() or self.settings.poll_backoff_max_s
                    else:
                        backoff.reset()
                    reading = self.containers is not None and self.containers.reading_records
                    if self.settings.exit_when_idle and not started and not self._tasks and not reading:
                        self.log.info("no work left; exiting (exit_when_idle)")
                        break
                await self._sleep(wait_s)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def drain(self) -> None:
        """Let running jobs finish for grace_period_s, then stop them and hand them back."""
        if not self._tasks:
            return
        self.notifier.stopping()
        self.log.info("draining", running=len(self._tasks), grace_period_s=self.settings.grace_period_s)
        self._notify_status("draining")
        if not self.force_exit:
            await self._wait_tasks(self.settings.grace_period_s)
        if self._tasks and not self.force_exit:
            for slot in list(self._tasks):
                slot.request_stop(SHUTDOWN)
            # stopping the handler, uploading the log and handing back take a while; a job
            # whose success is journaled is not waited for through an outage: the next
            # start completes it
            await self._wait_tasks(self.settings.cancel_grace_s + 60, until=self._only_reports_wait)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    async def shutdown(self) -> None:
        """Close the status endpoint and the client; unlock the node and the state directory."""
        if self._node_lock is None or not self._node_lock.held:
            # Refused at a lock, or stopped before: nothing was started, the error said why.
            self._lock.release()
            return
        self.notifier.stopping()
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            await asyncio.gather(self._lag_watch, return_exceptions=True)
        if self.health is not None:
            await self.health.close()
        if self._snapshot is not None:
            await self._snapshot.stop()
        if self._status_server is not None:
            await self._status_server.stop()
        if self.containers is not None:
            await self.containers.close()
        if self.client is not None:
            await self.client.close()
        await self.journal.settle()  # the records' fsyncs end before the next process may start
        self._node_lock.release()
        self._lock.release()
        self.log.info("ufdl-node stopped", forced=self.force_exit)

    # -- polling and the slots' tasks --------------------------------------------------------

    async def _poll(self, idle: list[Slot]) -> tuple[int, bool]:
        """One round of the poller: (jobs started, whether the server failed transiently)."""
        assert self.poller is not None
        await self.poller.ping_idle(idle)
        try:
            started = await self.poller.poll_once(idle, self._launch, self.should_exit.is_set)
        except TransientError as e:
            self._server_down(e)
            return 0, True
        except ServerError as e:  # a refusal or a garbage reply: say so, try again later
            self.last_error = one_line(e)
            self.log.warning("find-work failed", error=self.last_error)
            return 0, False
        if not self.server_reachable:
            self.log.info("server reachable")
        self.server_reachable = True
        return started, False

    def _launch(self, slot: Slot, held: JobView, spec: HandlerSpec) -> None:
        self._tasks[slot] = asyncio.create_task(self._run_slot(slot, held, spec),
                                                name=f"slot-{slot.index}-job-{held.pk}")

    async def _run_slot(self, slot: Slot, held: JobView, spec: HandlerSpec, *,
                        reattach: bool = False) -> Outcome:
        """Run `held` on `slot`, then each job the slot acquired while the one before finished."""
        assert self.poller is not None
        follow = functools.partial(self.poller.next_for, stopping=self.should_exit.is_set)
        outcome = Outcome.ERRORED
        try:
            while True:
                outcome = await self._run_one(slot, held, spec, reattach, follow)
                following = slot.take_next()
                if following is None:
                    return outcome
                held, spec = following
                reattach = False
                if self.should_exit.is_set():  # acquired just as the stop came: back to the pool
                    await slot.reporter.release_quietly(held.pk)
                    self.poller.forget(held.pk, back_in_pool=True)
                    return outcome
                task = asyncio.current_task()
                if task is not None:
                    task.set_name(f"slot-{slot.index}-job-{held.pk}")
        finally:
            self._tasks.pop(slot, None)
            self._notify_status()
            if outcome is not Outcome.RELEASED:
                self._wake.set()  # poll again at once: a slot is free

    async def _run_one(self, slot: Slot, held: JobView, spec: HandlerSpec, reattach: bool,
                       follow: Follow) -> Outcome:
        assert self.poller is not None
        outcome = Outcome.ERRORED
        try:
            outcome = await slot.run(held, spec, reattach=reattach, follow=follow)
            return outcome
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not take the daemon down
            self.last_error = one_line(e)
            self.log.exception("slot crashed", slot=slot.index)
            return Outcome.ERRORED
        finally:
            if outcome is not Outcome.FINISHED and self.health is not None:
                self.health.suspect()  # a full disk fails jobs: checked again before the next one
            if outcome is Outcome.RELEASED:
                self.poller.cool_down(held.pk)  # it could not start here: leave it to others a while
            else:
                self.poller.forget(held.pk, back_in_pool=outcome in (Outcome.RETRIED, Outcome.ABORTED))

    # -- signals, health, status ---------------------------------------------------------------

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """First SIGTERM/SIGINT: drain. Second: stop now."""
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig)
        try:
            yield
        finally:
            for sig in HANDLED_SIGNALS:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int | None = None) -> None:
        if self.should_exit.is_set():
            self.log.warning("second signal: stopping now", signal=_signal_name(sig))
            self.force_exit = True
            for task in self._tasks.values():
                task.cancel()
        else:
            self.log.info("signal received: stopping, running jobs get the grace period",
                          signal=_signal_name(sig))
            self.should_exit.set()
        self._wake.set()

    def healthy(self) -> tuple[bool, str]:
        loop_age = time.monotonic() - self.last_loop_tick
        if loop_age > self.settings.poll_interval_s + self.settings.poll_jitter_s + 30:
            return False, f"main loop stalled for {loop_age:.0f} s"
        if self.health is not None and (problem := self.health.unhealthy()) is not None:
            return False, problem
        if not self.server_reachable:
            return False, f"server unreachable: {self.last_error or 'not contacted yet'}"
        return True, "ok"

    def status(self) -> dict[str, Any]:
        slots = []
        for slot in self.slots:
            job = slot.job
            slots.append({
                "index": slot.index, "node": slot.node_pk, "busy": job is not None,
                "gpu": slot.gpu.name if slot.gpu is not None else None,
                "jobs_done": slot.jobs_done, "last_error": slot.last_error,
                "not_acquired": slot.not_acquired,
                "job": None if job is None else {
                    "pk": job.pk, "template": job.template, "phase": _phase_on(slot),
                    "progress": job.progress,
                    "data": job.progress_data, "running_s": round(time.time() - job.started_at, 1)},
            })
        ok, reason = self.healthy()
        return {"version": __version__, "server": self.settings.server_url, "healthy": ok, "reason": reason,
                "uptime_s": round(time.time() - self.started_at, 1), "stopping": self.should_exit.is_set(),
                "server_reachable": self.server_reachable, "last_error": self.last_error, "slots": slots,
                "not_taking": self.health.status() if self.health is not None else None}

    def _running_jobs(self) -> dict[str, object]:
        """The jobs running now, for the warning of a blocked event loop."""
        return {"jobs": [slot.job.pk for slot in self.slots if slot.job is not None]}

    def _notify_status(self, state: str | None = None) -> None:
        busy = sum(1 for s in self.slots if s.busy)
        text = state or f"{busy} of {len(self.slots)} slots busy"
        if self.last_error:
            text += f"; last error: {one_line(self.last_error, 120)}"
        if self.health is not None:
            text += self.health.status_line()
        self.notifier.status(text)

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval_s()
        if interval is None:
            return
        while True:
            # Fed from the event loop: a blocked loop stops the keep-alives and systemd restarts us.
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- helpers ---------------------------------------------------------------------------

    def _forget_environment_password(self) -> None:
        """Keep the password out of the environment jobs' processes inherit, and warn where
        /proc still shows it (it keeps the environment the process started with)."""
        warning = root_password_warning()
        if os.environ.pop(PASSWORD_ENV, None) is not None and warning is not None:
            self.log.warning(warning)

    def _server_down(self, e: Exception) -> None:
        message = one_line(e)
        if self.server_reachable or self.last_error != message:
            self.log.warning("server unreachable; backing off", error=message)
        self.server_reachable = False
        self.last_error = message
        self._notify_status()

    async def _until_reachable(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Startup calls wait out an outage (server down at boot), until a signal says stop.

        A refusal propagates as it is (RefusedError): the caller decides what it means.
        """
        backoff = Backoff(FIRST_RETRY_S, self.settings.poll_backoff_max_s)
        while True:
            try:
                result = await call()
                self.server_reachable = self._first_contact = True
                return result
            except (TransientError, MalformedReply) as e:
                # garbage from a server (or a proxy in front of it) is waited out like an outage
                self._server_down(e)
                if not self._first_contact:
                    self._first_contact = True  # say it once: retrying goes on quietly
                    self.log.warning("the server was never reached; still trying. Check server_url and "
                                     "the network with: ufdl-node check-config --config FILE",
                                     server=self.settings.server_url)
                if self.should_exit.is_set():
                    raise
                self.log.debug("startup call failed; retrying", action=what)
                await self._sleep(backoff.next_delay() or self.settings.poll_backoff_max_s)
                if self.should_exit.is_set():
                    raise

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when a slot frees up or a signal arrives."""
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0))

    async def _wait_tasks(self, timeout_s: float, until: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while self._tasks and not self.force_exit and not (until is not None and until()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            step = min(remaining, 0.5) if until is not None else remaining  # `until` is read again
            await asyncio.wait(list(self._tasks.values()), timeout=step)

    def _only_reports_wait(self) -> bool:
        """Whether every running job's handler has succeeded (journaled) and its report waits
        out an outage: the journal keeps it for the next start to complete."""
        return all(slot.job is not None and self.journal.succeeded(slot.job.pk) and slot.reporter.waiting_out
                   for slot in self._tasks)


def _signal_name(sig: int | None) -> str | None:
    """SIGINT, not <Signals.SIGINT: 2>."""
    if sig is None:
        return None
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _phase_on(slot: Slot) -> str:
    """The phase of the job a slot runs, for /status: STARTED once its start went through."""
    run = getattr(slot, "_current", None)
    return str(run.view.phase) if run is not None else "ACQUIRED"


async def run_daemon(settings: NodeSettings, *, signals: bool = True, **kwargs: Any) -> ExitCode:
    """Run the daemon until it is told to stop; returns an ExitCode."""
    supervisor = Supervisor(settings, **kwargs)
    if not signals:
        return await supervisor.run()
    with supervisor.capture_signals():
        return await supervisor.run()
