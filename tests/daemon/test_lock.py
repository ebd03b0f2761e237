"""One daemon per state directory, and one per node identity on a host: flocks held for the
process's life, dropped by the kernel."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ufdl_node.daemon.identity import NodeLock
from ufdl_node.errors import ConfigError

from .conftest import DaemonProcess, phase, write_config

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


async def test_second_daemon_for_the_same_node_refuses_with_one_line(server, jobs, spawn, tmp_path, wait_for):
    """Another state directory, the same server, ip and GPU index (the same node record): the
    second daemon exits 2 naming the first and the lock; the first runs its job once, to FINISHED."""
    first_config = write_config(tmp_path / "a.toml", server.url, tmp_path / "a")
    second_config = write_config(tmp_path / "b.toml", server.url, tmp_path / "b")
    job = await jobs.create("gated", seconds=120.0)  # the first runs it while the second is refused
    first = spawn(first_config)
    await jobs.wait(job, lambda j: phase(j) == "STARTED")
    second = spawn(second_config)
    assert await second.wait(30) == 2, second.log()
    jobs.release_gate(job)
    lock = NodeLock(server.url, "127.0.0.50", [0], tmp_path / "b" / "state").path_of(0)
    expected = (f"another ufdl-node (pid {first.proc.pid}, state directory {tmp_path / 'a' / 'state'}) "
                f"runs node 127.0.0.50/0 of {server.url}; lock {lock}")
    lines = second.log().splitlines()
    assert len(lines) == 1 and expected in lines[0], second.log()
    assert not (tmp_path / "b" / "state" / "journal").exists(), "the refused daemon must start nothing"
    done = await jobs.wait_final(job)
    assert phase(done) == "FINISHED" and done["error_reason"] is None, done
    assert jobs.runs(done) == 1
    assert first.proc.poll() is None
    first.proc.send_signal(signal.SIGTERM)
    assert await first.wait(30) == 0, first.log()
    # The lock went with the first daemon: the second configuration starts now.
    third = spawn(second_config)
    assert lock is not None
    await wait_for(lambda: lock.read_text().split()[:1] == [str(third.proc.pid)],
                   what="the daemon of the second configuration to hold the node lock")
    third.proc.send_signal(signal.SIGTERM)
    assert await third.wait(30) == 0, third.log()


def test_node_locks_are_per_server_ip_and_index(tmp_path: Path):
    """The identity is server (case and trailing slash aside), ip and GPU index; released locks free it."""
    def lock(url: str, ip: str, indices: list[int]) -> NodeLock:
        return NodeLock(url, ip, indices, tmp_path / "state", directories=[tmp_path / "run"])

    held = lock("http://Example.org:8000", "10.0.0.1", [0, 1])
    held.acquire()
    with pytest.raises(ConfigError, match=r"runs node 10\.0\.0\.1/1 of http://example\.org:8000/; lock "):
        lock("http://example.org:8000/", "10.0.0.1", [2, 1]).acquire()
    others = [lock("http://example.org:8000", "10.0.0.1", [2]),
              lock("http://example.org:8000", "10.0.0.2", [0]),
              lock("http://example.org:8001", "10.0.0.1", [0])]
    for other in others:
        other.acquire()
        assert other.held
    again = lock("http://example.org:8000", "10.0.0.1", [2, 1])
    with pytest.raises(ConfigError):
        again.acquire()
    assert not again.held, "a refusal must not keep the locks it took before"
    for other in [held, *others]:
        other.release()
    again.acquire()
    assert again.held
    again.release()
