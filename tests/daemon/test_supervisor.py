"""The supervisor starts, supervises and stops the slots' loops and holds nothing per job:
what it says of them (systemd STATUS), and a slot loop that dies of a bug."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.conftest import wait_for
from ufdl_node.daemon.slot import Slot
from ufdl_node.daemon.systemd import Notifier
from ufdl_node.protocol import phase

from .conftest import Jobs


def _datagrams(sock: socket.socket) -> list[str]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(65536).decode())
    return out


async def test_the_status_line_follows_the_busy_slots(server, jobs: Jobs, start_daemon,
                                                      tmp_path: Path) -> None:
    """While a job runs the systemd STATUS line says "1 of 1 slots busy", and "0 of 1" once it ended."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    daemon = start_daemon(server)
    daemon.supervisor.notifier = Notifier(str(tmp_path / "notify"))
    try:
        await daemon.wait_ready()
        job = await jobs.create("gated", seconds=120.0)  # busy until the test has seen it so
        said: list[str] = []

        def last_status() -> str:
            said.extend(m for m in _datagrams(notify) if "STATUS=" in m)
            return said[-1] if said else ""

        await wait_for(lambda: "STATUS=1 of 1 slots busy" in last_status(), what="STATUS: the job")
        jobs.release_gate(job)
        await jobs.wait(job, lambda j: phase(j) == "FINISHED")
        await wait_for(lambda: "STATUS=0 of 1 slots busy" in last_status(), what="STATUS: none")
    finally:
        notify.close()


async def test_a_slot_loop_that_dies_of_a_bug_is_started_again(server, jobs: Jobs, start_daemon,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a slot's loop (here: its idle ping raises once) is logged, the loop starts again,
    and the slot goes on taking jobs."""
    calls = 0
    original = Slot._ping_when_idle

    async def buggy(self: Slot, source: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ZeroDivisionError("a bug in the slot's loop")
        await original(self, source)  # type: ignore[arg-type]

    monkeypatch.setattr(Slot, "_ping_when_idle", buggy)
    with capture_logs() as logs:
        daemon = start_daemon(server)
        await daemon.wait_ready()
        await wait_for(lambda: calls >= 3, what="the slot's loop to ask again after its crash")
        job = await jobs.create()
        await jobs.wait(job, lambda j: phase(j) == "FINISHED")
    crashed = [e for e in logs if e["event"] == "slot crashed; starting it again"]
    assert len(crashed) == 1 and "ZeroDivisionError" in crashed[0]["error"], crashed
    assert not daemon.task.done()
