"""The daemon: `ufdl-node run`.

``Supervisor.run()`` reads top-down: startup → register → recover → main loop
(a task per slot, each looping acquire → run → report with the poller as its source of
candidates; the watchdog) → drain → shutdown. The supervisor starts, supervises and
stops the slots and holds nothing per job. Signals are handled in one place
(``capture_signals``) and can be left out when the daemon is embedded (dry-run,
demo, tests): the first SIGTERM/SIGINT stops taking work and drains, a second
stops now.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from .. import __version__
from ..backoff import Backoff
from ..client import UfdlClient
from ..errors import (
    AuthenticationFailed,
    ConfigError,
    ExitCode,
    MalformedReply,
    PluginError,
    RefusedError,
    TransientError,
)
from ..hardware import HardwareInfo, detect_hardware, node_fields, node_ip, slot_indices
from ..logs import get_logger, one_line, register_secret
from ..metrics import Metrics
from ..registry import Registry
from ..settings import PASSWORD_ENV, NodeSettings, root_password_warning
from .containers import ContainerHost
from .control import DaemonControl
from .crashes import LoopLagWatch
from .health import NodeHealth
from .identity import NodeLock
from .images import record_fetcher
from .job import SHUTDOWN
from .journal import Journal
from .poller import Contact, Offer, Poller
from .recovery import Recovery
from .slot import Slot
from .state import NodeState, StateDirLock
from .systemd import Notifier

__all__ = ["ExitCode", "Supervisor", "run_daemon"]

T = TypeVar("T")
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FIRST_RETRY_S = 0.5  # the first wait of a startup call through an outage
SUPERVISE_TICK_S = 1.0  # the longest the main loop sleeps between looks at its slots


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
        self.contact = Contact(on_change=self._notify_status)  # whether the server answers
        self._first_contact = False  # reached, or said once that it was not (a wrong server_url)
        self._tick = time.monotonic()  # the main loop's last look at its slots
        self._tasks: dict[Slot, asyncio.Task[None]] = {}  # each slot's loop
        self._busy_said = 0  # the busy slots the last STATUS line counted
        self._status_server: Any = None
        self._snapshot: Any = None
        self._left_behind: dict[Slot, int | None] = {}  # a node's current_job found at registration
        self.containers: ContainerHost | None = None
        self.health: NodeHealth | None = None  # disks and Docker: what stops acquisitions
        self.state = NodeState(settings.state_dir / "state.json")
        self.journal = Journal(settings.state_dir / "journal", starts=self.state)
        self._lock = StateDirLock(settings.state_dir)
        self._node_lock: NodeLock | None = None  # one daemon per node identity on this host
        self.ip = ""  # the address this daemon's nodes are registered under
        self._lag_watch: asyncio.Task[None] | None = None
        self.control = DaemonControl(self)  # control: pause, resume, reload (control.py)

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
        register_secret(password, public=settings.username)
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
        self.poller = Poller(self.client, self.registry, settings, self.metrics, self.health, self.contact,
                             stopping=self.should_exit.is_set)
        self.poller.paused = lambda: self.control.paused  # control: pause, resume
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
        """What a previous process left (recovery.py); a job whose container still runs is
        followed again by its slot, which starts at once."""
        assert self.client is not None and self.registry is not None
        recovery = Recovery(client=self.client, registry=self.registry, settings=self.settings,
                            journal=self.journal, state=self.state, containers=self.containers,
                            until_reachable=self._until_reachable)
        reattach = await recovery.run(self.slots, self._left_behind)
        self._left_behind.clear()
        for slot, offer in reattach.items():
            self._start_slot(slot, offer)
        await asyncio.sleep(0)  # the re-attached slots mark themselves busy

    async def main_loop(self) -> None:
        """Start each slot's loop and supervise them until told to stop (or, with
        exit_when_idle, until every slot has found no work left)."""
        for slot in self.slots:
            if slot not in self._tasks:
                self._start_slot(slot)
        watchdog = asyncio.create_task(self._watchdog_loop(), name="watchdog")
        stop = asyncio.create_task(self.should_exit.wait(), name="should-exit")
        try:
            while not self.should_exit.is_set():
                self._tick = time.monotonic()
                if self.health is not None:  # in a thread, at most every few seconds
                    await self.health.refresh()
                self._restart_crashed()
                if (busy := sum(slot.busy for slot in self.slots)) != self._busy_said:
                    self._busy_said = busy
                    self._notify_status()  # the systemd STATUS line: "N of M slots busy"
                running = [task for task in self._tasks.values() if not task.done()]
                if not running:
                    self.log.info("no work left; exiting (exit_when_idle)")
                    break
                tick_s = min(self.settings.poll_interval_s, SUPERVISE_TICK_S)
                await asyncio.wait([*running, stop], timeout=tick_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watchdog, stop):
                task.cancel()
            await asyncio.gather(watchdog, stop, return_exceptions=True)

    async def drain(self) -> None:
        """Let running jobs finish for grace_period_s, then stop them and hand them back."""
        if self.poller is not None:
            self.poller.wake()  # idle slots see the stop and end
        if any(slot.busy for slot in self._tasks):
            self.notifier.stopping()
            self.log.info("draining", running=sum(slot.busy for slot in self._tasks),
                          grace_period_s=self.settings.grace_period_s)
            self._notify_status("draining")
            if not self.force_exit:
                await self._wait_tasks(self.settings.grace_period_s)
            if self._running() and not self.force_exit:
                for slot in self._running():
                    slot.request_stop(SHUTDOWN)
                # stopping the handler, uploading the log and handing back take a while; a job
                # whose success is journaled is not waited for through an outage: the next
                # start completes it
                await self._wait_tasks(self.settings.cancel_grace_s + 60, until=self._only_reports_wait)
        else:
            await self._wait_tasks(SUPERVISE_TICK_S)  # idle slots end once woken
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        if self.poller is not None:
            await self.poller.close()

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
        await self.control.close()  # control: a reload under way
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

    # -- the slots' tasks -----------------------------------------------------------------

    def _start_slot(self, slot: Slot, first: Offer | None = None) -> None:
        assert self.poller is not None
        task = asyncio.create_task(slot.serve(self.poller, self.should_exit.is_set, first),
                                   name=f"slot-{slot.index}")
        task.add_done_callback(lambda _: self._notify_status())
        self._tasks[slot] = task

    def _restart_crashed(self) -> None:
        """A slot's loop that died of a bug is said and started again (its job, if any, was
        ended by the slot: a bug inside a job's run is the slot's to report)."""
        for slot, task in list(self._tasks.items()):
            if task.done() and not task.cancelled() and task.exception() is not None \
                    and not self.should_exit.is_set():
                error = task.exception()
                self.contact.last_error = f"{type(error).__name__}: {one_line(error)}"
                self.log.error("slot crashed; starting it again", slot=slot.index,
                               error=self.contact.last_error, exc_info=error)
                self._start_slot(slot)

    def _running(self) -> list[Slot]:
        """The slots whose loop still runs a job."""
        return [slot for slot, task in self._tasks.items() if slot.busy and not task.done()]

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
        if self.poller is not None:
            self.poller.wake()  # idle slots see the stop at once

    @property
    def server_reachable(self) -> bool:
        return self.contact.reachable

    @property
    def last_error(self) -> str | None:
        return self.contact.last_error

    @property
    def last_loop_tick(self) -> float:
        """When a slot last asked the poller for work (a poll), or the main loop last looked
        at its slots, whichever is later."""
        polled = self.poller.last_turn if self.poller is not None else float("-inf")
        return max(polled, self._tick)

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
                    "pk": job.pk, "template": job.template, "phase": slot.phase or "ACQUIRED",
                    "progress": job.progress,
                    "data": job.progress_data, "running_s": round(time.time() - job.started_at, 1)},
            })
        ok, reason = self.healthy()
        return {"version": __version__, "server": self.settings.server_url, "healthy": ok, "reason": reason,
                "uptime_s": round(time.time() - self.started_at, 1), "stopping": self.should_exit.is_set(),
                "server_reachable": self.server_reachable, "last_error": self.last_error, "slots": slots,
                "not_taking": self.health.status() if self.health is not None else None,
                **self.control.status_fields()}  # control: paused, reloads

    def _running_jobs(self) -> dict[str, object]:
        """The jobs running now, for the warning of a blocked event loop."""
        return {"jobs": [slot.job.pk for slot in self.slots if slot.job is not None]}

    def _notify_status(self, state: str | None = None) -> None:
        busy = sum(1 for s in self.slots if s.busy)
        text = self.control.status_prefix() + (state or f"{busy} of {len(self.slots)} slots busy")  # control:
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

    async def _until_reachable(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Startup calls wait out an outage (server down at boot), until a signal says stop.

        A refusal propagates as it is (RefusedError): the caller decides what it means.
        """
        backoff = Backoff(FIRST_RETRY_S, self.settings.poll_backoff_max_s)
        while True:
            try:
                result = await call()
                self.contact.up()
                self._first_contact = True
                return result
            except (TransientError, MalformedReply) as e:
                # garbage from a server (or a proxy in front of it) is waited out like an outage
                self.contact.down(e)
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
        """Sleep, but wake at once when a signal arrives."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.should_exit.wait(), timeout=max(seconds, 0))

    async def _wait_tasks(self, timeout_s: float, until: Callable[[], bool] | None = None) -> None:
        """Wait for the slots' loops to end (those running a job finish it first)."""
        deadline = time.monotonic() + timeout_s
        while (pending := [t for t in self._tasks.values() if not t.done()]) and not self.force_exit \
                and not (until is not None and until()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            step = min(remaining, 0.5) if until is not None else remaining  # `until` is read again
            await asyncio.wait(pending, timeout=step, return_when=asyncio.ALL_COMPLETED)

    def _only_reports_wait(self) -> bool:
        """Whether every running job's handler has succeeded (journaled) and its report waits
        out an outage: the journal keeps it for the next start to complete."""
        return all(slot.job is not None and self.journal.succeeded(slot.job.pk) and slot.reporter.waiting_out
                   for slot, task in self._tasks.items() if not task.done())


def _signal_name(sig: int | None) -> str | None:
    """SIGINT, not <Signals.SIGINT: 2>."""
    if sig is None:
        return None
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


async def run_daemon(settings: NodeSettings, *, signals: bool = True, **kwargs: Any) -> ExitCode:
    """Run the daemon until it is told to stop; returns an ExitCode."""
    supervisor = Supervisor(settings, **kwargs)
    if not signals:
        return await supervisor.run()
    with supervisor.capture_signals(), supervisor.control.capture_signals():  # control: USR1, USR2, HUP
        return await supervisor.run()
