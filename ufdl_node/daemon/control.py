"""Operating a running daemon without a restart: pause, resume and reload.

- **Pause** (``SIGUSR1``, ``ufdl-node pause``): the daemon acquires nothing new; the
  jobs it runs go on to their end, idle nodes keep pinging. The state is kept in
  ``<state_dir>/paused``, so that a daemon restarted while paused (a reboot, a
  ``systemctl restart``) stays paused until it is resumed.
- **Resume** (``SIGUSR2``, ``ufdl-node resume``): it takes work again at once.
- **Reload** (``SIGHUP``, ``systemctl reload ufdl-node``): the handlers are loaded
  again from ``handler_dirs`` and the entry points, and with them the docker template
  definitions of ``docker_template_dirs``; new jobs are matched against the new set,
  running jobs keep the handler they started with. A reload that fails (two handlers
  claim one template) keeps the handlers loaded before, and says why in the log and in
  ``last_error``. The settings file is not read again: a change there needs a restart.

The daemon side is :class:`DaemonControl`, one per supervisor; its hooks in the
supervisor are marked ``# control:``. The command side is :func:`signal_daemon`: it
finds the daemon of a state directory by the pid in its lock file, and checks that the
lock is held (the daemon runs) before it signals; signalling is what the operating
system allows (the daemon's user or root), no endpoint needs to take commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PluginError
from ..logs import get_logger, one_line
from ..registry import Registry
from .state import LOCK_FILE

if TYPE_CHECKING:
    from .supervisor import Supervisor

PAUSED_FILE = "paused"
PAUSE_SIGNAL = signal.SIGUSR1
RESUME_SIGNAL = signal.SIGUSR2
RELOAD_SIGNAL = signal.SIGHUP
CONTROL_SIGNALS = (PAUSE_SIGNAL, RESUME_SIGNAL, RELOAD_SIGNAL)

log = get_logger("ufdl_node.supervisor")


class DaemonControl:
    """The pause flag and the reload of one daemon."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.marker = supervisor.settings.state_dir / PAUSED_FILE
        self.paused = self.marker.exists()
        if self.paused:  # say why a daemon that just started takes no work
            log.warning("starting paused, as it was paused before: no job is taken until `ufdl-node resume`",
                        marker=str(self.marker))
        self.reloads = 0  # completed reloads, for /status and the tests
        self._reloading: asyncio.Task[None] | None = None
        self._snapshot_write: asyncio.Future[None] | None = None

    # -- pause and resume -----------------------------------------------------------------------

    def pause(self) -> None:
        """Acquire nothing new from now on; the running jobs go on."""
        if not self.paused:
            running = [slot.job.pk for slot in self.supervisor.slots if slot.job is not None]
            log.info("paused: no new jobs are taken; the running ones go on", running=running)
        self.paused = True
        with contextlib.suppress(OSError):  # kept for a restart; the pause holds without it
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
        self._changed()

    def resume(self) -> None:
        """Take work again."""
        if self.paused:
            log.info("resumed: taking work again")
        self.paused = False
        with contextlib.suppress(OSError):
            self.marker.unlink(missing_ok=True)
        self._changed()

    def stop_taking(self) -> bool:
        """Whether a follow-on job may not be acquired now: stopping, or paused."""
        return self.paused or self.supervisor.should_exit.is_set()

    def _changed(self) -> None:
        """Say the change at once: the systemd STATUS line, the snapshot `status` reads, the loop."""
        self.supervisor._notify_status()
        if self.supervisor.poller is not None:
            self.supervisor.poller.wake()  # idle slots ask again: a resume takes work at once
        snapshot = self.supervisor._snapshot
        if snapshot is not None:
            self._snapshot_write = asyncio.ensure_future(snapshot.write())

    # -- reload ----------------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload in a task (from a signal handler): one at a time, a second request waits."""
        previous = self._reloading

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await self.reload()

        self._reloading = asyncio.create_task(run(), name="reload")

    async def reload(self) -> bool:
        """Load the handlers (and the docker definitions) again; True when the new set is in use."""
        sup = self.supervisor
        log.info("reloading handlers and docker template definitions")
        try:
            registry = await asyncio.to_thread(Registry.load, sup.settings.handler_dirs,
                                               settings=sup.settings)
        except PluginError as e:
            sup.contact.last_error = f"reload refused, the handlers loaded before stay: {one_line(e)}"
            log.error("reload failed; the handlers loaded before stay", error=one_line(e))
            self._changed()
            return False
        self.install(registry)
        self.reloads += 1
        log.info("reloaded", handlers=[s.name for s in registry.specs()], templates=registry.templates(),
                 problems=len(registry.problems))
        self._changed()
        return True

    def install(self, registry: Registry) -> None:
        """Match new jobs against `registry` from now on; running jobs keep their handler."""
        sup = self.supervisor
        sup.registry = registry
        if sup.poller is not None:
            sup.poller.use_registry(registry)
        if sup.health is not None:  # whether Docker matters depends on the handlers
            sup.health.use_specs(registry.specs())
        if sup.poller is not None:
            sup.poller.wake()

    async def close(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            await asyncio.gather(self._reloading, return_exceptions=True)

    # -- status ----------------------------------------------------------------------------------

    def status_fields(self) -> dict[str, Any]:
        return {"paused": self.paused, "reloads": self.reloads}

    def status_prefix(self) -> str:
        """What the systemd STATUS line starts with."""
        return "paused (running jobs finish, none taken); " if self.paused else ""

    # -- signals ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGUSR1 pauses, SIGUSR2 resumes, SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        actions: dict[int, Callable[[], None]] = {PAUSE_SIGNAL: self.pause, RESUME_SIGNAL: self.resume,
                                                  RELOAD_SIGNAL: self.request_reload}
        for sig, action in actions.items():
            loop.add_signal_handler(sig, action)
        try:
            yield
        finally:
            for sig in actions:
                loop.remove_signal_handler(sig)


# -- the command side ----------------------------------------------------------------------------


class NotRunning(Exception):
    """No daemon holds the state directory."""


def daemon_pid(state_dir: Path) -> int:
    """The pid of the daemon that holds `state_dir`'s lock; NotRunning when none does."""
    path = state_dir / LOCK_FILE
    try:
        f = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        raise NotRunning(f"no daemon lock in {state_dir}") from None
    except OSError as e:
        raise NotRunning(f"cannot read {path}: {e.strerror} (run this as the daemon's user, or root)") \
            from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a daemon runs
        else:
            raise NotRunning(f"no daemon holds {path}")
        text = f.read().strip()
    if not text.isdigit() or int(text) <= 1:
        raise NotRunning(f"{path} names no process")
    return int(text)


def signal_daemon(state_dirs: list[Path], sig: int) -> tuple[int, Path]:
    """Send `sig` to the daemon of the first of `state_dirs` one runs in; (pid, state dir)."""
    reasons = []
    for state_dir in dict.fromkeys(state_dirs):
        try:
            pid = daemon_pid(state_dir)
        except NotRunning as e:
            reasons.append(str(e))
            continue
        os.kill(pid, sig)
        return pid, state_dir
    raise NotRunning("; ".join(reasons))


def paused_marker(state_dir: Path) -> Path:
    """The file whose presence says the daemon of `state_dir` is paused."""
    return state_dir / PAUSED_FILE
