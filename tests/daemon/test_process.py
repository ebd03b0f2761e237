"""The daemon as a real process: config file, signals, systemd notifications, status endpoint, logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ..conftest import wait_for
from .conftest import ADMIN_PW, PYTHON, WORKER_PW, Jobs, daemon_process_env, free_port, phase, write_config

pytestmark = pytest.mark.slow


async def test_sigkill_mid_job_then_restart_recovers_the_job(server, jobs: Jobs, spawn, tmp_path):
    """A daemon killed with SIGKILL mid-job and started again hands the job back, and it then finishes."""
    config = write_config(tmp_path / "node.toml", server.url, tmp_path)
    job = await jobs.create("gated", seconds=120.0)  # its end cannot come before the kill
    first = spawn(config)
    await jobs.wait(job, lambda j: phase(j) == "STARTED", timeout_s=30)
    # STARTED on the server comes a moment before the handler runs: kill once it does.
    await wait_for(lambda: jobs.runs(job) == 1, timeout_s=30, what="the handler to run")
    first.proc.send_signal(signal.SIGKILL)
    assert await first.wait(10) == -signal.SIGKILL
    assert phase(await jobs.get(job)) == "STARTED"
    jobs.release_gate(job)  # the second run need not wait
    second = spawn(config)
    done = await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=40)
    assert jobs.runs(job) == 2, "the job should have run once in each process"
    assert done["error_reason"] is None
    second.proc.send_signal(signal.SIGTERM)
    assert await second.wait(20) == 0, second.log()


async def test_sigterm_drains_and_exits_zero(server, jobs: Jobs, spawn, tmp_path):
    """SIGTERM: stop taking work, let the running job finish, exit 0; a second job stays untouched."""
    config = write_config(tmp_path / "node.toml", server.url, tmp_path)
    job = await jobs.create("gated", seconds=120.0)  # still running when the SIGTERM lands
    proc = spawn(config)
    await jobs.wait(job, lambda j: phase(j) == "STARTED", timeout_s=30)
    waiting = await jobs.create()
    proc.proc.send_signal(signal.SIGTERM)
    await wait_for(lambda: "signal received" in proc.log(), what="the daemon to take the SIGTERM")
    assert proc.proc.poll() is None, "the daemon waits for its running job"
    jobs.release_gate(job)
    assert await proc.wait(30) == 0, proc.log()
    assert phase(await jobs.get(job)) == "FINISHED"
    assert (await jobs.get(waiting))["node"] is None


async def test_second_sigterm_stops_at_once(server, jobs: Jobs, spawn, tmp_path, wait_for):
    """A second SIGTERM stops the daemon now (exit 4), leaving the job for the next start to recover."""
    config = write_config(tmp_path / "node.toml", server.url, tmp_path, grace_period_s=60)
    job = await jobs.create("gated", seconds=120.0)  # never let end: the second SIGTERM must stop it
    proc = spawn(config)
    await jobs.wait(job, lambda j: phase(j) == "STARTED", timeout_s=30)
    proc.proc.send_signal(signal.SIGTERM)
    await wait_for(lambda: "signal received" in proc.log(), what="the daemon to take the first SIGTERM")
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(15) == 4, proc.log()


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    return sock, path


def _drain(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_systemd_notify_status_endpoint_metrics_and_redaction(server, jobs: Jobs, spawn, tmp_path,
                                                                    wait_for):
    """A real process: sd_notify messages, /healthz, /status, /metrics, and no secret in its logs."""
    sock, path = _notify_socket(tmp_path)
    status_port = free_port()
    config = write_config(tmp_path / "node.toml", server.url, tmp_path,
                          status_listen=f"127.0.0.1:{status_port}")
    created = [await jobs.create(seconds=0.3) for _ in range(3)]
    created.append(await jobs.create("fail"))
    proc = spawn(config, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    messages: list[str] = []

    async def collect() -> None:  # read as systemd would: a full datagram queue drops messages
        while True:
            messages.extend(_drain(sock))
            await asyncio.sleep(0.02)

    collector = asyncio.create_task(collect())
    await wait_for(lambda: any("READY=1" in m for m in messages), timeout_s=30, what="READY=1")
    for job in created:
        await jobs.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"), timeout_s=30)
    base = f"http://127.0.0.1:{status_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as reply:
            assert reply.status == 200, await reply.text()

        async def all_counted() -> dict[str, Any] | None:
            # The server shows a job ended as soon as the finish lands: the daemon counts it
            # once the reply is back, a moment later on a loaded machine.
            async with http.get(f"{base}/status") as reply:
                status: dict[str, Any] = await reply.json()
            return status if status["slots"][0]["jobs_done"] >= 4 else None

        status = await wait_for(all_counted, what="the daemon to count the four jobs")
        assert status["slots"][0]["node"], status
        async with http.get(f"{base}/metrics") as reply:
            metrics = await reply.text()
    assert 'ufdl_node_jobs_total{outcome="finished"} 3.0' in metrics, metrics
    assert 'ufdl_node_jobs_total{outcome="errored"} 1.0' in metrics
    assert 'ufdl_node_api_calls_total{action="finish",status="200"}' in metrics
    await wait_for(lambda: any("WATCHDOG=1" in m for m in messages), what="a WATCHDOG=1 ping")
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(20) == 0, proc.log()
    collector.cancel()
    messages += _drain(sock)
    sock.close()
    text = "\n".join(messages)
    assert "WATCHDOG=1" in text, messages
    assert "STATUS=" in text and "STOPPING=1" in text, messages
    log = proc.log()
    for secret in (WORKER_PW, ADMIN_PW):
        assert secret not in log
    assert "eyJ" not in log, "a JWT reached the log"
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    job_lines = [line for line in lines if line.get("job_pk") == created[0]["pk"]]
    assert job_lines and all("slot" in line and "template" in line for line in job_lines
                             if line.get("event") == "job started"), job_lines


async def test_run_command_against_a_server_process(tmp_path, registry, jobs_factory, wait_for):
    """`ufdl-node server` and `ufdl-node run --config` as two processes run a job end to end."""
    port = free_port()
    env = daemon_process_env(UFDL_NODE_SERVER_ADMIN=f"admin:{ADMIN_PW}",
                             UFDL_NODE_SERVER_WORKER=f"worker:{WORKER_PW}")
    server_log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([PYTHON, "-m", "ufdl_node", "server", "--port", str(port),
                               "--data-dir", str(tmp_path / "data")], stdout=server_log,
                              stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return True
            except OSError:
                return False

        await wait_for(listening, interval_s=0.1, what="the server process to listen")

        class _Url:
            def __init__(self, url: str) -> None:
                self.url = url

        jobs = await jobs_factory(_Url(url))
        job = await jobs.create(seconds=0.2)
        config = write_config(tmp_path / "node.toml", url, tmp_path, exit_when_idle=True)
        daemon = subprocess.run([PYTHON, "-m", "ufdl_node", "run", "--config", str(config)],
                                capture_output=True, text=True, timeout=60,
                                env=daemon_process_env())
        assert daemon.returncode == 0, daemon.stdout + daemon.stderr
        assert phase(await jobs.get(job)) == "FINISHED"
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
        server_log.close()
    os.sync()
