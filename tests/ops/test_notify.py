"""The systemd notify client against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ufdl_node.daemon.systemd import Notifier

from .conftest import NotifyListener


def test_ready_reaches_a_path_socket(notify_socket: NotifyListener) -> None:
    """READY=1 (with a status line) arrives on a socket given by path."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.ready("2 slots idle")
    assert notify_socket.receive() == {"READY": "1", "STATUS": "2 slots idle"}


def test_messages_reach_an_abstract_socket(abstract_notify_socket: NotifyListener) -> None:
    """An '@name' NOTIFY_SOCKET is the abstract namespace."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": abstract_notify_socket.address})
    notifier.watchdog()
    assert abstract_notify_socket.receive() == {"WATCHDOG": "1"}


def test_status_and_stopping(notify_socket: NotifyListener) -> None:
    """STATUS and STOPPING are sent as systemd spells them."""
    notifier = Notifier(notify_socket.address)
    notifier.status("1 of 2 slots busy")
    notifier.stopping("draining")
    assert notify_socket.receive() == {"STATUS": "1 of 2 slots busy"}
    assert notify_socket.receive() == {"STOPPING": "1", "STATUS": "draining"}


def test_a_status_cannot_inject_fields(notify_socket: NotifyListener) -> None:
    """A newline in a status (an error message) cannot start another field such as READY."""
    Notifier(notify_socket.address).status("last error: boom\nREADY=1")
    assert notify_socket.receive() == {"STATUS": "last error: boom READY=1"}


def test_without_notify_socket_everything_is_a_no_op() -> None:
    """Outside systemd the calls do nothing and report that nothing was sent."""
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()
    assert notifier.watchdog_interval_s() is None


def test_a_send_failure_does_not_raise() -> None:
    """A socket path with no listener is logged at debug level and the call returns False."""
    with tempfile.TemporaryDirectory(prefix="ufdl-n") as tmp:
        notifier = Notifier(str(Path(tmp) / "gone"))
        assert notifier.enabled and not notifier.ready()


def test_a_full_socket_does_not_block(notify_socket: NotifyListener) -> None:
    """When systemd does not read, sends fail fast instead of blocking the event loop."""
    notifier = Notifier(notify_socket.address)
    started = time.monotonic()
    results = [notifier.status("x" * 500) for _ in range(5000)]
    # blocking sends would never return here; the bound is slack for a loaded machine
    assert not all(results) and time.monotonic() - started < 20


def test_ready_waits_for_room_in_a_full_queue(notify_socket: NotifyListener) -> None:
    """READY must arrive: with the queue full it waits until systemd reads."""
    notifier = Notifier(notify_socket.address)
    while notifier.status("filler"):
        pass
    reader = threading.Timer(0.2, lambda: notify_socket.sock.recv(4096))
    reader.start()
    try:
        assert notifier.ready()
    finally:
        reader.join()


def test_ready_gives_up_when_nobody_reads(notify_socket: NotifyListener) -> None:
    """A READY that finds no room within must_arrive_wait_s is dropped without raising."""
    notifier = Notifier(notify_socket.address, must_arrive_wait_s=0.1)
    while notifier.status("filler"):
        pass
    started = time.monotonic()
    assert not notifier.stopping()
    # it waited (about must_arrive_wait_s), then gave up; the upper bound is slack for load
    assert 0.05 < time.monotonic() - started < 10


def test_unsupported_address_disables_the_notifier() -> None:
    """A NOTIFY_SOCKET that is neither a path nor '@name' (vsock:) disables notifications."""
    assert not Notifier("vsock:2:1234").enabled


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """WatchdogSec=60 means a keep-alive every 30 seconds."""
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(env).watchdog_interval_s() == 30.0


def test_watchdog_for_another_pid_is_ignored() -> None:
    """WATCHDOG_PID naming another process (we are its child) means no watchdog for us."""
    env = {"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(env).watchdog_interval_s() is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_invalid_watchdog_usec_means_no_watchdog(usec: str) -> None:
    """An empty, zero, negative or non-numeric WATCHDOG_USEC disables the watchdog."""
    assert Notifier.from_env({"WATCHDOG_USEC": usec}).watchdog_interval_s() is None


def test_unset_environment_keeps_variables_from_subprocesses(notify_socket: NotifyListener) -> None:
    """With unset_environment the variables are removed, and the notifier still works."""
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "1000000", "PATH": "/bin"}
    notifier = Notifier.from_env(env, unset_environment=True)
    assert env == {"PATH": "/bin"}
    assert notifier.watchdog_interval_s() == 0.5 and notifier.watchdog()
    assert notify_socket.receive() == {"WATCHDOG": "1"}


def test_each_message_is_its_own_datagram(notify_socket: NotifyListener) -> None:
    """Two calls give two datagrams, and nothing more is queued."""
    notifier = Notifier(notify_socket.address)
    notifier.watchdog()
    notifier.watchdog()
    assert notify_socket.receive() == notify_socket.receive() == {"WATCHDOG": "1"}
    assert not notify_socket.pending()


def test_a_sent_datagram_is_one_message(notify_socket: NotifyListener) -> None:
    """All fields of one call travel in one datagram (systemd reads them atomically)."""
    Notifier(notify_socket.address).ready("up")
    notify_socket.sock.settimeout(2)
    assert notify_socket.sock.recv(4096, socket.MSG_PEEK).decode() == "READY=1\nSTATUS=up"
