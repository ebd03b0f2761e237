"""Health that tells the truth: a full disk takes no job and makes /healthz 503 until space
returns; Docker down leaves container jobs alone and serves the others (ufdl_node/daemon/health.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

import ufdl_node.daemon.health as health_module
from tests.conftest import wait_for
from ufdl_node.cli.usertools import status_lines
from ufdl_node.daemon.health import disk_problem
from ufdl_node.daemon.systemd import Notifier
from ufdl_node.protocol import phase
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR, NodeSettings

from .conftest import HANDLERS, Daemon, Jobs, free_port, node_settings

MIB = 2**20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (unmounted at the end), or skip where mounting is not permitted."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` but for about `leave` bytes."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with filler.open("wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return filler


@pytest.fixture(autouse=True)
def quick_disk_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health_module, "DISK_CHECK_INTERVAL_S", 0.1)


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as reply:
        return reply.status, await reply.json()


async def test_full_work_disk_takes_no_job_says_why_and_recovers(server, jobs: Jobs, start_daemon,
                                                                small_disk: Path, tmp_path: Path) -> None:
    """A work disk below min_free_work_bytes: /healthz 503 with the reason, /status, the systemd
    STATUS line and the log (once) say it, no job is even listed; once space returns the node
    takes the job by itself."""
    status_port = free_port()
    daemon = start_daemon(server, work_dir=small_disk / "work", min_free_work_bytes=MIB,
                          status_listen=f"127.0.0.1:{status_port}")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    daemon.supervisor.notifier = Notifier(str(tmp_path / "notify"))
    await daemon.wait_ready()
    base = f"http://127.0.0.1:{status_port}"
    async with aiohttp.ClientSession() as http:
        assert (await _get(http, f"{base}/healthz"))[0] == 200
        with capture_logs() as logs:
            filler = fill(small_disk, leave=MIB // 2)

            async def unhealthy() -> dict[str, Any] | None:
                status, body = await _get(http, f"{base}/healthz")
                return body if status == 503 else None

            body = await wait_for(unhealthy, what="/healthz to answer 503 for the full disk")
            assert body["reason"].startswith(f"work_dir {small_disk / 'work'} is full"), body
            job = await jobs.create()
            lists = dict(daemon.supervisor.poller.lists)  # type: ignore[union-attr]
            await _settle(daemon, loops=5)
            assert phase(await jobs.get(job)) == "CREATED" and jobs.runs(job) == 0
            assert daemon.supervisor.poller.lists == lists, "a node with a full disk lists no jobs"  # type: ignore[union-attr]
            status = (await _get(http, f"{base}/status"))[1]
            assert status["healthy"] is False and status["not_taking"]["disk"] == status["reason"], status
            assert "is full" in status["not_taking"]["disk"], status
            said = _datagrams(notify)
            assert any("STATUS=" in m and "not taking jobs: work_dir" in m for m in said), said

            filler.unlink()
            await jobs.wait(job, lambda j: phase(j) == "FINISHED")
            assert (await _get(http, f"{base}/healthz"))[0] == 200
    notify.close()
    events = [entry["event"] for entry in logs if "disk" in entry["event"]]
    assert events == ["not taking jobs: the node's disk cannot take them",
                      "the node's disks are fine again; taking jobs"], events


def _datagrams(sock: socket.socket) -> list[str]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(65536).decode())
    return out


async def _settle(daemon: Any, loops: int) -> None:
    """Let the main loop go round `loops` more times."""
    supervisor = daemon.supervisor
    for _ in range(loops):
        tick = supervisor.last_loop_tick
        await wait_for(lambda t=tick: supervisor.last_loop_tick > t, what="another turn of the main loop")


def test_a_state_dir_that_cannot_be_written_is_a_problem(small_disk: Path, tmp_path: Path) -> None:
    """A full state disk is said even with the free-space check off: the journal lives there."""
    settings = NodeSettings(state_dir=small_disk / "state", cache_dir=tmp_path / "cache",
                            work_dir=tmp_path / "work", min_free_work_bytes=0)
    (small_disk / "state").mkdir()
    assert disk_problem(settings) is None
    fill(small_disk, leave=0)
    with contextlib.suppress(OSError):  # the last bytes a page at a time
        with (small_disk / "last").open("wb") as f:
            while True:
                f.write(b"\0" * 512)
                f.flush()
    problem = disk_problem(settings)
    assert problem is not None and "state_dir" in problem and "cannot be written" in problem, problem


def test_min_free_work_bytes_above_the_free_space_is_a_problem(tmp_path: Path) -> None:
    """No mount needed: a minimum larger than any disk says which place and how much it needs."""
    settings = NodeSettings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
                            work_dir=tmp_path / "work", min_free_work_bytes=2**62)
    problem = disk_problem(settings)
    assert problem is not None and problem.startswith(f"work_dir {tmp_path / 'work'} is full"), problem


async def test_enospc_mid_run_hands_the_job_back_then_gives_up(server, jobs: Jobs, start_daemon) -> None:
    """A handler meeting ENOSPC: handed back as the node's disk (not the job) is full, counted
    against max_attempts, so a job that fills every disk still ends ERRORED saying why."""
    job = await jobs.create("disk_full")
    start_daemon(server, max_attempts=2)
    # The last attempt's end: the hand-back passes through ERRORED too (finish, reset, release).
    done = await jobs.wait(job, lambda j: phase(j) == "ERRORED" and "gave up" in (j["error_reason"] or ""),
                           timeout_s=40)
    assert jobs.runs(job) == 2
    reason = done["error_reason"]
    assert reason.startswith("the node's disk is full: ") and "No space left on device" in reason, reason
    assert "(gave up after 2 attempts)" in reason, reason


def docker_less_settings(server: Any, tmp_path: Path, templates: Path, **extra: Any) -> NodeSettings:
    return node_settings(server, tmp_path, handler_dirs=[HANDLERS, SHIPPED_HANDLERS_DIR],
                         docker_template_dirs=[templates],
                         docker_url=f"unix://{tmp_path}/no-docker.sock", **extra)


DOCKER_TEMPLATE = """
template = "docker_hello"
image = "busybox:latest"
gpu = false
commands = ["echo hello"]
"""


async def test_docker_down_leaves_container_jobs_and_runs_the_others(server, admin, jobs: Jobs,
                                                                     tmp_path: Path) -> None:
    """A node whose Docker socket does not exist: the container job stays in the pool, the plain
    job runs, /status says why, and the log says it once."""
    templates = tmp_path / "docker.d"
    templates.mkdir()
    (templates / "docker_hello.toml").write_text(DOCKER_TEMPLATE)
    status_port = free_port()
    settings = docker_less_settings(server, tmp_path, templates, status_listen=f"127.0.0.1:{status_port}",
                                    docker_probe_interval_s=0.2)
    node_registry = Registry.load(settings.handler_dirs, entry_points=False, settings=settings)
    spec = node_registry.for_template("docker_hello", 1)
    assert spec is not None and spec.description is not None and spec.needs.docker, node_registry.problems
    await admin.import_template(spec.description.import_spec("docker_hello"))
    by_name = {"type": "exact", "field": "name", "value": "docker_hello"}
    found = await admin.list_templates({"expressions": [by_name]})
    container_job = await admin.create_job(int(found[0]["pk"]), {}, {})
    with capture_logs() as logs:
        daemon = Daemon(settings, node_registry)
        try:
            plain = await jobs.create()
            await jobs.wait(plain, lambda j: phase(j) == "FINISHED")
            await _settle(daemon, loops=5)
            assert phase(await admin.get_job(container_job["pk"])) == "CREATED"
            ended = {o: daemon.sample("ufdl_node_jobs_total", outcome=o) for o in ("finished", "retried")}
            assert ended == {"finished": 1, "retried": 0}, "the container job was never taken"
            async with aiohttp.ClientSession() as http:
                healthz = await _get(http, f"http://127.0.0.1:{status_port}/healthz")
                status = (await _get(http, f"http://127.0.0.1:{status_port}/status"))[1]
        finally:
            assert await daemon.stop() == 0
    assert healthz[0] == 200, healthz  # the node still serves its other templates
    reason = status["not_taking"]["docker"]
    assert reason.startswith("Docker unreachable:") and "no-docker.sock" in reason, status
    assert status["not_taking"]["disk"] is None, status
    shown = [line for line in status_lines(status, "endpoint") if line.startswith("not taking")]
    assert shown == [f"not taking container jobs: {reason}"], shown  # `ufdl-node status`
    said = [entry for entry in logs if "container jobs" in entry["event"]]
    assert [entry["event"] for entry in said] == ["not taking container jobs (the others go on)"], said
