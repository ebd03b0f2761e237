"""Operating a running daemon process: `ufdl-node pause` / `resume` and `systemctl reload` (SIGHUP).

Real daemon processes against the embedded server on loopback, real commands, real signals.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.daemon.status import read_snapshot, snapshot_path
from ufdl_node.errors import ExitCode

from ..conftest import wait_for
from .conftest import HANDLERS, PYTHON, Jobs, daemon_process_env, free_port, phase, write_config

pytestmark = pytest.mark.slow


def command(*args: str) -> subprocess.CompletedProcess[str]:
    """`ufdl-node ARGS` as a real process (blocking: call it in a thread)."""
    return subprocess.run([PYTHON, "-m", "ufdl_node", *args], capture_output=True, text=True, timeout=120,
                          env=daemon_process_env(), stdin=subprocess.DEVNULL)


async def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(command, *args)


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    return sock, path


def _drain(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.append(sock.recv(4096).decode())
        except BlockingIOError:
            return into


async def _status(config: Path) -> dict[str, Any]:
    result = await run_command("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


async def test_pause_lets_the_running_job_finish_takes_nothing_new_and_resume_takes_work(
        server, jobs: Jobs, spawn, tmp_path):
    """pause on a daemon with a running job: the job finishes, nothing new is acquired, `status`,
    the snapshot and the systemd STATUS line say paused; resume takes work again."""
    sock, notify = _notify_socket(tmp_path)
    messages: list[str] = []
    config = write_config(tmp_path / "node.toml", server.url, tmp_path,
                          status_listen=f"127.0.0.1:{free_port()}")
    running = await jobs.create("gated", seconds=120.0)  # still running when the pause lands
    proc = spawn(config, env={"NOTIFY_SOCKET": notify})
    await jobs.wait(running, lambda j: phase(j) == "STARTED", timeout_s=30)

    paused = await run_command("pause", "--config", str(config))
    assert paused.returncode == ExitCode.OK, paused.stderr
    assert "paused the daemon" in paused.stdout
    waiting = await jobs.create()
    assert phase(await jobs.get(running)) == "STARTED"
    jobs.release_gate(running)
    assert phase(await jobs.wait(running, lambda j: phase(j) in ("FINISHED", "ERRORED"))) == "FINISHED"
    ended = time.monotonic()

    status = await _status(config)  # from the status endpoint's /status
    assert status["paused"] is True and status["source"] == "endpoint", status
    snapshot = read_snapshot(snapshot_path(tmp_path / "state"))
    assert snapshot is not None and snapshot["paused"] is True, snapshot
    text = await run_command("status", "--config", str(config))
    assert "paused: running jobs finish" in text.stdout, text.stdout
    nodes = json.loads((await run_command("nodes", "--config", str(config), "--json")).stdout)
    assert nodes[0]["paused"] is True and nodes[0]["state"] == "idle (paused: takes no new job)", nodes
    await wait_for(lambda: any("STATUS=paused" in m for m in _drain(sock, messages)),
                   what="a systemd STATUS line that says paused")
    # ten poll intervals since the slot was free (the checks above took most of them): a daemon
    # taking work would have acquired it
    await asyncio.sleep(max(0.0, ended + 2.0 - time.monotonic()))
    assert (await jobs.get(waiting))["node"] is None, proc.log()

    resumed = await run_command("resume", "--config", str(config))
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    done = await jobs.wait(waiting, lambda j: phase(j) == "FINISHED", timeout_s=30)
    assert done["node"] is not None
    assert (await _status(config))["paused"] is False
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(30) == 0, proc.log()
    sock.close()


async def test_a_pause_outlasts_a_restart(server, jobs: Jobs, spawn, tmp_path):
    """A daemon restarted while paused stays paused until resumed."""
    config = write_config(tmp_path / "node.toml", server.url, tmp_path)
    first = spawn(config)
    await wait_for(lambda: (tmp_path / "state" / "status.json").exists(), what="the first snapshot")
    assert (await run_command("pause", "--config", str(config))).returncode == 0
    first.proc.send_signal(signal.SIGTERM)
    assert await first.wait(30) == 0, first.log()
    second = spawn(config)
    waiting = await jobs.create()
    await wait_for(lambda: "node registered" in second.log(), timeout_s=30, what="the second start")
    assert "starting paused" in second.log()
    await asyncio.sleep(1.5)
    assert (await jobs.get(waiting))["node"] is None, second.log()
    assert (await run_command("resume", "--config", str(config))).returncode == 0
    await jobs.wait(waiting, lambda j: phase(j) == "FINISHED", timeout_s=30)
    second.proc.send_signal(signal.SIGTERM)
    assert await second.wait(30) == 0


async def test_pause_without_a_daemon_is_one_line_and_exit_1(tmp_path):
    config = write_config(tmp_path / "node.toml", "http://127.0.0.1:9", tmp_path)
    result = await run_command("pause", "--config", str(config))
    assert result.returncode == ExitCode.FAILURE
    assert len(result.stderr.splitlines()) == 1 and "no running daemon" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


NEW_HANDLER = '''
from ufdl_node.api import JobContext, TemplateDescription, handler


@handler("reloaded_job", description=TemplateDescription(job_type="Export", description="added by a reload"))
async def run(ctx: JobContext) -> None:
    ctx.log.info("the reloaded handler ran")
'''


async def test_sighup_loads_a_new_handler_without_dropping_the_running_job(
        server, admin, jobs: Jobs, spawn, tmp_path):
    """systemctl reload (SIGHUP) with a job running: the job finishes, and a job of a template
    that only the newly added handler serves runs (on the other slot, the first job still running)."""
    extra = tmp_path / "extra-handlers"
    extra.mkdir()
    # Two slots: the free one would take the new job if a handler served it before the reload.
    config = write_config(tmp_path / "node.toml", server.url, tmp_path,
                          handler_dirs=[str(HANDLERS), str(extra)], gpu_indices=[0, 1])
    running = await jobs.create("gated", seconds=120.0)  # runs across the reload
    proc = spawn(config)
    await jobs.wait(running, lambda j: phase(j) == "STARTED", timeout_s=30)

    (extra / "reloaded.py").write_text(NEW_HANDLER)
    from ufdl_node.registry import Registry

    spec = Registry.load([extra], entry_points=False).for_template("reloaded_job", 1)
    assert spec is not None and spec.description is not None
    await admin.import_template(spec.description.import_spec("reloaded_job"))
    template = (await admin.list_templates({"expressions": [
        {"type": "exact", "field": "name", "value": "reloaded_job"}]}))[0]
    new = await admin.create_job(int(template["pk"]), {}, {}, description="after the reload")
    await asyncio.sleep(1.0)
    assert (await jobs.get(new))["node"] is None, "no handler for it before the reload"

    proc.proc.send_signal(signal.SIGHUP)
    done = await jobs.wait(new, lambda j: phase(j) in ("FINISHED", "ERRORED"), timeout_s=30)
    assert phase(done) == "FINISHED", done
    assert phase(await jobs.get(running)) == "STARTED", "the reload left the running job alone"
    jobs.release_gate(running)
    assert phase(await jobs.wait(running, lambda j: phase(j) in ("FINISHED", "ERRORED"))) == "FINISHED"
    assert "reloaded" in proc.log()
    assert (await _status(config))["reloads"] == 1
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(30) == 0, proc.log()


CLASHING_HANDLER = '''
from ufdl_node.api import JobContext, handler


@handler("test_job")
async def run(ctx: JobContext) -> None:
    pass
'''


async def test_a_reload_that_fails_keeps_the_handlers_loaded_before(server, jobs: Jobs, spawn, tmp_path):
    """Two handlers claiming one template after a reload: the old set stays, the error is said."""
    extra = tmp_path / "extra-handlers"
    extra.mkdir()
    config = write_config(tmp_path / "node.toml", server.url, tmp_path,
                          handler_dirs=[str(HANDLERS), str(extra)])
    proc = spawn(config)
    await wait_for(lambda: "node registered" in proc.log(), timeout_s=30, what="the start")
    (extra / "clash.py").write_text(CLASHING_HANDLER)
    proc.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: "reload failed" in proc.log(), what="the failed reload")
    job = await jobs.create()
    assert phase(await jobs.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"))) == "FINISHED"
    status = await _status(config)
    assert status["reloads"] == 0 and "reload refused" in status["last_error"], status
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(30) == 0, proc.log()
