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
import enum
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

from .. import __version__
from ..client import UfdlClient, pk_of
from ..errors import (
    AuthenticationFailed,
    ConfigError,
    MalformedReply,
    PluginError,
    RefusedError,
    ServerError,
    TransientError,
)
from ..hardware import HardwareInfo, detect_hardware, node_fields, node_ip, slot_indices
from ..logs import get_logger, one_line, register_secret
from ..metrics import Metrics
from ..registry import Registry
from ..settings import NodeSettings
from .slot import SHUTDOWN_REASON, Slot
from .state import NodeState
from .systemd import Notifier

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
COOLDOWN_MAX_S = 600.0  # longest a job that could not start here is left to other nodes


class ExitCode(enum.IntEnum):
    """What `ufdl-node run` exits with."""

    OK = 0  # stopped cleanly: every job finished or was handed back
    FAILURE = 1  # an unexpected error
    CONFIG = 2  # bad settings or handlers
    AUTH = 3  # the server refused the credentials
    FORCED = 4  # a second signal: stopped at once; the next start recovers


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
        self.slots: list[Slot] = []
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self.started_at = time.time()
        self.last_error: str | None = None
        self.server_reachable = False
        self.last_loop_tick = time.monotonic()
        self._wake = asyncio.Event()
        self._tasks: dict[Slot, asyncio.Task[str]] = {}
        self._status_server: Any = None
        self._skipped: set[int] = set()
        self._left_behind: dict[Slot, int | None] = {}  # a node's current_job found at registration
        self._last_idle_ping = time.monotonic()
        self._cooldown: dict[int, tuple[float, float]] = {}  # job pk -> (retry after, last delay)
        self.state = NodeState(settings.state_dir / "state.json")

    # -- the lifecycle, top-down ---------------------------------------------------------

    async def run(self) -> int:
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
        except (TransientError, MalformedReply):
            if not self.should_exit.is_set():
                raise
            # told to stop while the server was still unreachable at startup: nothing is held
        finally:
            await self.shutdown()
        return ExitCode.FORCED if self.force_exit else ExitCode.OK

    async def startup(self) -> None:
        settings = self.settings
        password = settings.resolved_password()
        register_secret(password)
        if self.registry is None:
            self.registry = Registry.load(settings.handler_dirs, settings=settings)
        if self.hardware is None:
            self.hardware = await asyncio.to_thread(detect_hardware)  # NVML calls block
        assert settings.work_dir is not None
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.client = UfdlClient(settings.server_url, settings.username, password,
                                 request_timeout_s=settings.request_timeout_s,
                                 upload_timeout_s=settings.upload_timeout_s,
                                 retry_max_attempts=settings.retry_max_attempts,
                                 retry_max_delay_s=settings.retry_max_delay_s,
                                 metrics=self.metrics)
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
        client, hardware = self.client, self.hardware
        ip = self.settings.node_ip or node_ip()
        rows = await self._until_reachable("hardware", client.hardware_generations)
        for index in slot_indices(hardware, self.settings.gpu_indices):
            fields = node_fields(hardware, index, rows)
            found = await self._until_reachable("find node", lambda i=index: client.find_node(ip, i))
            if found is None:
                node = await self._until_reachable(
                    "create node", lambda i=index, f=fields: client.create_node({"ip": ip, "index": i, **f}))
            else:
                node = await self._until_reachable(
                    "update node", lambda n=found, f=fields: client.update_node(int(n["pk"]), f))
                node["current_job"] = found.get("current_job", node.get("current_job"))
            gpu = next((g for g in hardware.gpus if g.index == index), None)
            slot = Slot(index=index, node_pk=int(node["pk"]), gpu=gpu, client=client,
                        settings=self.settings, metrics=self.metrics, state=self.state)
            self._left_behind[slot] = node.get("current_job")
            self.slots.append(slot)
            self.log.info("node registered", slot=index, node=node["pk"], ip=ip)
        self.metrics.slots.set(len(self.slots))

    async def recover(self) -> None:
        """What a previous process left: current jobs, holds never started, hand-backs half done."""
        assert self.client is not None
        client = self.client
        for slot in self.slots:
            current = self._left_behind.pop(slot, None)
            await self._until_reachable("recover", lambda s=slot, c=current: s.recover(c))
        by_node = {slot.node_pk: slot for slot in self.slots}
        for pk in self.state.pending_handbacks():
            try:
                job = await self._until_reachable("recover", lambda p=pk: client.get_job(p))
            except ConfigError as e:  # refused (say, the job is gone): nothing left to hand back
                self.log.info("forgetting a hand-back", job_pk=pk, reason=one_line(e))
                self.state.end_handback(pk)
                continue
            holder = by_node.get(pk_of(job.get("node")))
            if holder is None:
                self.state.end_handback(pk)
            else:
                await self._until_reachable("recover", lambda s=holder, j=job: s.complete_handback(j))

    async def main_loop(self) -> None:
        """Poll for work and hand it to idle slots until told to stop."""
        watchdog = asyncio.create_task(self._watchdog_loop(), name="watchdog")
        try:
            failures = 0
            while not self.should_exit.is_set():
                self.last_loop_tick = time.monotonic()
                idle = [slot for slot in self.slots if not slot.busy]
                wait_s = self.settings.poll_interval_s + random.uniform(0, self.settings.poll_jitter_s)
                if idle:
                    await self._ping_idle(idle)
                    try:
                        started = await self.poll_once(idle)
                        failures = 0
                    except TransientError as e:
                        failures += 1
                        self._server_down(e)
                        wait_s = min(2.0 ** (failures - 1), self.settings.poll_backoff_max_s)
                        started = 0
                    except ServerError as e:  # a refusal or a garbage reply: say so, try again later
                        self.last_error = one_line(e)
                        self.log.warning("find-work failed", error=self.last_error)
                        started = 0
                    if self.settings.exit_when_idle and not started and not self._tasks:
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
                slot.request_stop(SHUTDOWN_REASON)
            # stopping the handler, uploading the log and handing back take a while
            await self._wait_tasks(self.settings.cancel_grace_s + 60)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    async def shutdown(self) -> None:
        self.notifier.stopping()
        if self._status_server is not None:
            await self._status_server.stop()
        if self.client is not None:
            await self.client.close()
        self.log.info("ufdl-node stopped", forced=self.force_exit)

    # -- polling ---------------------------------------------------------------------------

    async def poll_once(self, idle: list[Slot]) -> int:
        """One find-work call offers its jobs to the idle slots; returns how many started."""
        assert self.client is not None and self.registry is not None
        began = time.monotonic()
        # One try: the main loop backs off by itself, capped so that a server that comes
        # back is seen within poll_backoff_max_s.
        jobs = await self.client.find_work(node_id=idle[0].node_pk, retry=False)
        self.metrics.poll_latency.observe(time.monotonic() - began)
        if not self.server_reachable:
            self.log.info("server reachable")
        self.server_reachable = True
        started = 0
        for job in jobs:
            if not idle or self.should_exit.is_set():
                break
            picked = self._pick_slot(job, idle)
            if picked is None:
                continue
            slot, spec = picked
            try:
                held = await slot.try_acquire(job)
            except (ServerError, KeyError, TypeError, ValueError) as e:
                self.log.warning("acquire failed", job_pk=job.get("pk"), error=one_line(e))
                continue
            if held is None:
                continue  # lost the race: the next candidate
            idle.remove(slot)
            started += 1
            self._tasks[slot] = asyncio.create_task(self._run_slot(slot, held, spec),
                                                    name=f"slot-{slot.index}-job-{job['pk']}")
        return started

    def _pick_slot(self, job: Any, idle: list[Slot]) -> tuple[Slot, Any] | None:
        assert self.registry is not None
        try:
            pk = int(job["pk"])
            name, version = str(job["template"]["name"]), int(job["template"]["version"])
        except (KeyError, TypeError, ValueError):
            self.log.warning("skipping a malformed job from the server", job=one_line(job, 200))
            return None
        cooling = self._cooldown.get(pk)
        if cooling is not None and time.monotonic() < cooling[0]:
            return None
        spec = self.registry.for_template(name, version)
        if spec is None:
            self._skip_once(pk, "no handler for this template; not acquiring", template=name,
                            version=version)
            return None
        for slot in idle:
            why_not = slot.can_serve(spec)
            if why_not is None:
                return slot, spec
        self._skip_once(pk, "no idle slot meets the handler's needs", template=name)
        return None

    async def _ping_idle(self, idle: list[Slot]) -> None:
        """Every ping_interval_s, idle nodes ping (busy ones ping from their job), so last_seen
        says they are alive, and release any job they hold but never started (an acquire
        whose reply was lost)."""
        now = time.monotonic()
        if now - self._last_idle_ping < self.settings.ping_interval_s:
            return
        self._last_idle_ping = now
        assert self.client is not None
        for slot in idle:
            try:
                await self.client.ping(slot.node_pk, retry=False)  # the poll says if the server is down
                await slot.release_strays()
            except ServerError as e:
                self.log.debug("ping failed", node=slot.node_pk, error=one_line(e))
                return

    def _skip_once(self, pk: int, message: str, **values: Any) -> None:
        if pk not in self._skipped:
            if len(self._skipped) >= 10_000:  # bounded: at worst a job is mentioned again
                self._skipped.clear()
            self._skipped.add(pk)
            self.log.info(message, job_pk=pk, **values)

    async def _run_slot(self, slot: Slot, held: dict[str, Any], spec: Any) -> str:
        outcome = "errored"
        try:
            outcome = await slot.run(held, spec)
            return outcome
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not take the daemon down
            self.last_error = one_line(e)
            self.log.exception("slot crashed", slot=slot.index)
            return "errored"
        finally:
            self._tasks.pop(slot, None)
            self._notify_status()
            if outcome == "released":
                # It could not start here: leave it to other nodes for a while (backing off
                # per job), rather than acquiring and releasing it again at once.
                self._cool_down(int(held["pk"]))
            else:
                self._cooldown.pop(int(held["pk"]), None)
                self._wake.set()  # poll again at once: a slot is free

    def _cool_down(self, pk: int) -> None:
        now = time.monotonic()
        # A daemon runs for weeks: forget jobs whose cool-down ended long ago (others took them).
        for stale in [p for p, (until, _) in self._cooldown.items() if until < now - COOLDOWN_MAX_S]:
            del self._cooldown[stale]
        last = self._cooldown.get(pk, (0.0, 0.0))[1]
        delay = min(max(last * 2, self.settings.poll_interval_s), COOLDOWN_MAX_S)
        self._cooldown[pk] = (now + delay, delay)

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
            self.log.warning("second signal: stopping now", signal=sig)
            self.force_exit = True
            for task in self._tasks.values():
                task.cancel()
        else:
            self.log.info("signal received: stopping, running jobs get the grace period", signal=sig)
            self.should_exit.set()
        self._wake.set()

    def healthy(self) -> tuple[bool, str]:
        loop_age = time.monotonic() - self.last_loop_tick
        if loop_age > self.settings.poll_interval_s + self.settings.poll_jitter_s + 30:
            return False, f"main loop stalled for {loop_age:.0f} s"
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
                "job": None if job is None else {
                    "pk": job.pk, "template": job.template, "progress": job.progress,
                    "data": job.progress_data, "running_s": round(time.time() - job.started_at, 1)},
            })
        ok, reason = self.healthy()
        return {"version": __version__, "server": self.settings.server_url, "healthy": ok, "reason": reason,
                "uptime_s": round(time.time() - self.started_at, 1), "stopping": self.should_exit.is_set(),
                "last_error": self.last_error, "slots": slots}

    def _notify_status(self, state: str | None = None) -> None:
        busy = sum(1 for s in self.slots if s.busy)
        text = state or f"{busy} of {len(self.slots)} slots busy"
        if self.last_error:
            text += f"; last error: {one_line(self.last_error, 120)}"
        self.notifier.status(text)

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval_s()
        if interval is None:
            return
        while True:
            # Fed from the event loop: a blocked loop stops the keep-alives and systemd restarts us.
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- helpers -------------------------------------------------------------------------------

    def _server_down(self, e: Exception) -> None:
        message = one_line(e)
        if self.server_reachable or self.last_error != message:
            self.log.warning("server unreachable; backing off", error=message)
        self.server_reachable = False
        self.last_error = message
        self._notify_status()

    async def _until_reachable(self, what: str, call: Any) -> Any:
        """Startup calls wait out an outage (server down at boot), until a signal says stop."""
        delay = 0.5
        while True:
            try:
                result = await call()
                self.server_reachable = True
                return result
            except (TransientError, MalformedReply) as e:
                # garbage from a server (or a proxy in front of it) is waited out like an outage
                self._server_down(e)
                if self.should_exit.is_set():
                    raise
                await self._sleep(min(delay, self.settings.poll_backoff_max_s))
                delay *= 2
                if self.should_exit.is_set():
                    raise
            except AuthenticationFailed:
                raise
            except RefusedError as e:
                raise ConfigError(f"{what}: the server refused: {one_line(e)}") from None

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when a slot frees up or a signal arrives."""
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0))

    async def _wait_tasks(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._tasks and not self.force_exit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.wait(list(self._tasks.values()), timeout=remaining)


async def run_daemon(settings: NodeSettings, *, signals: bool = True, **kwargs: Any) -> int:
    """Run the daemon until it is told to stop; returns an ExitCode."""
    supervisor = Supervisor(settings, **kwargs)
    if not signals:
        return await supervisor.run()
    with supervisor.capture_signals():
        return await supervisor.run()
