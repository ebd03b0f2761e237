"""One daemon per state directory: an flock held for the process's life, dropped by the kernel."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from .conftest import DaemonProcess, write_config

pytestmark = pytest.mark.slow


async def _holds_lock(proc: DaemonProcess, state_dir: Path, wait_for) -> None:
    lock = state_dir / "ufdl-node.lock"
    await wait_for(lambda: lock.exists() and lock.read_text().strip() == str(proc.proc.pid),
                   what=f"daemon {proc.proc.pid} to hold the lock")


async def test_second_daemon_on_the_same_state_dir_refuses_with_one_line(server, spawn, tmp_path, wait_for):
    """A second daemon on a locked state directory exits 2 naming the first one's pid; the first runs on."""
    config = write_config(tmp_path / "node.toml", server.url, tmp_path)
    first = spawn(config)
    await _holds_lock(first, tmp_path / "state", wait_for)
    second = spawn(config)
    assert await second.wait(30) == 2, second.log()
    expected = f"another ufdl-node (pid {first.proc.pid}) is using {tmp_path / 'state'}"
    lines = second.log().splitlines()
    assert len(lines) == 1 and expected in lines[0], second.log()
    assert first.proc.poll() is None
    first.proc.send_signal(signal.SIGTERM)
    assert await first.wait(30) == 0, first.log()


async def test_lock_of_a_killed_daemon_is_not_stale(server, spawn, tmp_path, wait_for):
    """After SIGKILL the kernel has dropped the lock: the next daemon on the directory starts."""
    config = write_config(tmp_path / "node.toml", server.url, tmp_path)
    first = spawn(config)
    await _holds_lock(first, tmp_path / "state", wait_for)
    first.proc.send_signal(signal.SIGKILL)
    assert await first.wait(10) == -signal.SIGKILL
    second = spawn(config)
    await _holds_lock(second, tmp_path / "state", wait_for)
    second.proc.send_signal(signal.SIGTERM)
    assert await second.wait(30) == 0, second.log()
