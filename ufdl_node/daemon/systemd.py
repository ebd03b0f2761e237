"""A small systemd notify client (the sd_notify protocol), with no dependency.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``; the daemon says READY
once its nodes are registered, sends STATUS lines as work changes, WATCHDOG
keep-alives from its main loop, and STOPPING when it starts to drain. Outside
systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so the daemon calls them
unconditionally.

A send never raises. STATUS and WATCHDOG never block the event loop: when
systemd's queue is full they are dropped (logged at debug level; the next one
follows soon). READY and STOPPING must arrive, so they wait up to
``must_arrive_wait_s`` (2 s) for room in the queue: a lost READY would fail the
unit's start, a lost STOPPING its stop.

Wiring::

    notifier = Notifier.from_env(unset_environment=True)  # keep it from handler subprocesses
    ...register nodes...
    notifier.ready("2 slots idle")
    interval_s = notifier.watchdog_interval_s()  # None: no watchdog
    while running: notifier.watchdog(); await asyncio.sleep(interval_s)
    notifier.stopping("draining 1 job")
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping

from ..logs import get_logger, one_line

log = get_logger(__name__)

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# State changes systemd acts on; a STATUS or WATCHDOG line is replaced by the next one.
_MUST_ARRIVE = frozenset({"READY", "STOPPING"})


class Notifier:
    """Sends state changes to systemd's notify socket; does nothing without one."""

    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None,
                 must_arrive_wait_s: float = 2.0) -> None:
        """`address`: a socket path, or ``@name`` for an abstract socket; None disables."""
        self._address = _socket_address(address)
        self._must_arrive_wait_s = must_arrive_wait_s
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None, *,
                 unset_environment: bool = False) -> Notifier:
        """A notifier from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

        With `unset_environment`, those variables are removed afterwards, so that
        subprocesses (handlers) do not inherit them and talk to systemd.
        """
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=_watchdog_usec(env))
        if unset_environment:
            for key in _ENV_KEYS:
                env.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """True when there is a socket to talk to."""
        return self._address is not None

    def watchdog_interval_s(self) -> float | None:
        """How often to call :meth:`watchdog`: half of WatchdogSec, or None without a watchdog."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    # -- the messages ------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Start-up is done (nodes registered): systemd moves the unit to 'active'."""
        return self.notify(READY="1", STATUS=status)

    def status(self, text: str) -> bool:
        """A one-line status, shown by `systemctl status`."""
        return self.notify(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (draining jobs)."""
        return self.notify(STOPPING="1", STATUS=status)

    def watchdog(self) -> bool:
        """The main loop is alive: feeds WatchdogSec."""
        return self.notify(WATCHDOG="1")

    def notify(self, **fields: str | None) -> bool:
        """Send `fields` (None values left out) as one datagram; True when it was sent."""
        if self._address is None:
            return False
        lines = [f"{key}={_one_line(value)}" for key, value in fields.items() if value is not None]
        if not lines:
            return False
        try:
            # A socket per message, as sd_notify() does: nothing to close, nothing held
            # across a fork, and a message costs microseconds against a 30 s keep-alive.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Connected, so that a timeout waits for room in systemd's queue.
                sock.connect(self._address)
                must_arrive = not _MUST_ARRIVE.isdisjoint(fields)
                sock.settimeout(self._must_arrive_wait_s if must_arrive else 0.0)
                sock.send("\n".join(lines).encode("utf-8"))
        except OSError as e:  # no listener, queue full, socket gone: never worth a crash
            log.debug("sd_notify_failed", error=f"{type(e).__name__}: {e.strerror or e}",
                      message=lines[0])
            return False
        return True


def _socket_address(address: str | None) -> str | None:
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]  # abstract namespace
    if address.startswith("/"):
        return address
    # e.g. vsock:... from newer systemd in VMs: not supported here
    log.debug("sd_notify_unsupported_address", address=address)
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    # sd_watchdog_enabled(): WATCHDOG_PID, when set, must be ours.
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def _one_line(value: str) -> str:
    # a newline would start another field of the message
    return one_line(value, 1000)
