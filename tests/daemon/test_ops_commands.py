"""The operator's commands against the embedded server and a real daemon process: `nodes`, `cancel`,
`logs`, `outputs`, `unregister`."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import pytest

from ufdl_node.cli.opstools import output_file_name
from ufdl_node.client import UfdlClient
from ufdl_node.errors import ExitCode

from ..conftest import wait_for
from .conftest import ADMIN_PW, PYTHON, WORKER_PW, Jobs, daemon_process_env, phase, write_config
from .handlers.testjobs import expected_output
from .test_control import run_command

pytestmark = pytest.mark.slow
IP = "127.0.0.50"  # write_config's node_ip


def assert_one_line(stderr: str, *expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert len(stderr.splitlines()) == 1, stderr
    for text in expected:
        assert text in stderr, stderr


async def test_nodes_shows_this_hosts_nodes_with_their_state(server, jobs: Jobs, spawn, tmp_path):
    config = write_config(tmp_path / "node.toml", server.url, tmp_path)
    job = await jobs.create("gated", seconds=120.0)
    proc = spawn(config)
    await jobs.wait(job, lambda j: phase(j) == "STARTED", timeout_s=30)
    node = (await jobs.get(job))["node"]

    result = await run_command("nodes", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["pk"], r["ip"], r["index"], r["current_job"]) for r in rows] == [(node, IP, 0, job["pk"])]
    assert rows[0]["state"] == f"working on job {job['pk']}" and rows[0]["gpu"] == "none (CPU only)"
    text = await run_command("nodes", "--config", str(config))
    assert text.stdout.splitlines() == [line for line in text.stdout.splitlines() if line.startswith("node ")]
    assert f"node {node}  ip {IP}  index 0" in text.stdout and "working on job" in text.stdout, text.stdout

    jobs.release_gate(job)
    await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=30)
    rows = json.loads((await run_command("nodes", "--config", str(config), "--json")).stdout)
    assert rows[0]["state"] == "idle" and rows[0]["current_job"] is None, rows
    other = write_config(tmp_path / "other.toml", server.url, tmp_path, node_ip="127.0.0.99")
    none = await run_command("nodes", "--config", str(other))
    assert none.returncode == 0 and "no nodes of this host (ip 127.0.0.99)" in none.stdout
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(30) == 0


async def test_cancel_needs_an_admin_stops_the_job_and_leaves_an_ended_one(server, jobs: Jobs, spawn,
                                                                          tmp_path):
    config = write_config(tmp_path / "node.toml", server.url, tmp_path)
    admin = write_config(tmp_path / "admin.toml", server.url, tmp_path, username="admin", password=ADMIN_PW)
    job = await jobs.create("gated", seconds=120.0)  # never let end: the cancel ends it
    proc = spawn(config)
    await jobs.wait(job, lambda j: phase(j) == "STARTED", timeout_s=30)

    refused = await run_command("cancel", str(job["pk"]), "--config", str(config))
    assert refused.returncode == ExitCode.FAILURE
    assert_one_line(refused.stderr, "ufdl-node: cancel:", "does not let user 'worker'")
    done = await run_command("cancel", str(job["pk"]), "--config", str(admin))
    assert done.returncode == 0, done.stderr
    assert f"job {job['pk']} cancelled (it was STARTED; node" in done.stdout
    assert phase(await jobs.wait(job, lambda j: phase(j) == "CANCELLED", timeout_s=30)) == "CANCELLED"
    await wait_for(lambda: "cancel" in proc.log(), what="the daemon to see the cancel")
    again = await run_command("cancel", str(job["pk"]), "--config", str(admin))
    assert again.returncode == 0 and "has ended (CANCELLED): left as it is" in again.stdout
    missing = await run_command("cancel", "9999", "--config", str(admin))
    assert missing.returncode == ExitCode.FAILURE
    assert_one_line(missing.stderr, "no job 9999")
    bad = await run_command("cancel", "x", "--config", str(admin))
    assert bad.returncode == ExitCode.CONFIG and "not a job number" in bad.stderr
    wrong = write_config(tmp_path / "wrong.toml", server.url, tmp_path, password="not-it")
    denied = await run_command("cancel", str(job["pk"]), "--config", str(wrong))
    assert denied.returncode == ExitCode.AUTH
    assert_one_line(denied.stderr, "refused the credentials")
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(30) == 0


async def test_logs_local_while_running_follow_to_the_end_then_the_servers_log(server, jobs: Jobs, spawn,
                                                                              tmp_path):
    config = write_config(tmp_path / "node.toml", server.url, tmp_path, work_dir=str(tmp_path / "work"))
    waiting = await jobs.create()
    early = await run_command("logs", str(waiting["pk"]), "--config", str(config))
    assert early.returncode == ExitCode.FAILURE
    assert_one_line(early.stderr, f"job {waiting['pk']} has no log", "--follow waits for it")

    job = await jobs.create("gated", seconds=120.0)  # runs until the follow has shown its log
    proc = spawn(config)
    await jobs.wait(job, lambda j: phase(j) == "STARTED", timeout_s=30)
    local = tmp_path / "work" / f"job-{job['pk']}" / "job.log"
    await wait_for(lambda: local.exists() and "test job running" in local.read_text(), what="the job log")
    now = await run_command("logs", str(job["pk"]), "--config", str(config))
    assert now.returncode == 0 and "test job running" in now.stdout, now.stderr
    follow = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "ufdl_node", "logs", str(job["pk"]), "--follow", "--config", str(config),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=daemon_process_env())
    try:
        assert follow.stdout is not None
        shown = b""
        while b"test job running" not in shown:  # shown while the job still runs
            line = await asyncio.wait_for(follow.stdout.readline(), 60)
            assert line, f"--follow ended before showing the log: {shown!r}"
            shown += line
        assert follow.returncode is None and phase(await jobs.get(job)) == "STARTED"
        jobs.release_gate(job)
        _, stderr = await asyncio.wait_for(follow.communicate(), 60)
        assert follow.returncode == 0, stderr
    finally:
        if follow.returncode is None:
            follow.kill()
            await follow.wait()
    assert phase(await jobs.get(job)) == "FINISHED", "--follow ends when the job does"

    after = await run_command("logs", str(job["pk"]), "--config", str(config))  # from the `log` output
    assert after.returncode == 0, after.stderr
    assert any("test job running" in line for line in after.stdout.splitlines()), after.stdout
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(30) == 0


async def test_outputs_lists_and_downloads_and_no_name_leaves_the_directory(server, admin: UfdlClient,
                                                                            jobs: Jobs, spawn, tmp_path):
    config = write_config(tmp_path / "node.toml", server.url, tmp_path)
    job = await jobs.create("gated", seconds=120.0, size=10_000)  # STARTED until the upload is in
    proc = spawn(config)
    node = (await jobs.wait(job, lambda j: phase(j) == "STARTED", timeout_s=30))["node"]
    # An admin may add an output to any started job (the real server's rule too).
    await admin.upload_output(job["pk"], node, "../evil", "Blob", b"must stay inside")
    jobs.release_gate(job)
    await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=30)

    listed = await run_command("outputs", str(job["pk"]), "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    names = sorted(line.split("\t")[0] for line in listed.stdout.splitlines())
    assert names == ["../evil", "log", "result"], listed.stdout
    target = tmp_path / "out" / "here"
    got = await run_command("outputs", str(job["pk"]), "--dir", str(target), "--config", str(config))
    assert got.returncode == 0, got.stderr
    assert (target / "result").read_bytes() == expected_output(job["pk"], 10_000)
    files = sorted(p.name for p in target.iterdir())
    assert "log" in files and "result" in files and len(files) == 3, files
    (odd,) = [name for name in files if name.startswith("output-")]
    assert (target / odd).read_bytes() == b"must stay inside"
    assert not (tmp_path / "out" / "evil").exists()
    missing = await run_command("outputs", "9999", "--config", str(config))
    assert missing.returncode == ExitCode.FAILURE
    assert_one_line(missing.stderr, "no job 9999")
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(30) == 0


@pytest.mark.parametrize(("name", "safe"), [("model.pth", True), ("..", False), (".", False), ("", False),
                                            ("a/b", False), ("..\\x", False), ("a\0b", False),
                                            ("x" * 300, False), (".hidden", True), ("line\nbreak", False)])
def test_output_file_name_is_one_plain_name(name: str, safe: bool):
    assert output_file_name(name, "output-7") == (name if safe else "output-7")


async def _node_jobs(worker: UfdlClient, jobs: Jobs, node: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job `node` holds (acquired, never started) and one it runs (started)."""
    held, started = await jobs.create(), await jobs.create()
    await worker.acquire(held["pk"], node)
    await worker.acquire(started["pk"], node)
    await worker.start(started["pk"], node)
    return held, started


async def test_unregister_hands_back_then_removes_what_the_server_lets(server, jobs: Jobs, spawn, tmp_path):
    config = write_config(tmp_path / "node.toml", server.url, tmp_path)
    proc = spawn(config)
    job = await jobs.create()
    await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=30)
    busy = await run_command("unregister", "--config", str(config))
    assert busy.returncode == ExitCode.FAILURE
    assert_one_line(busy.stderr, "a daemon runs these nodes, stop it first")
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(30) == 0

    async with UfdlClient(server.url, "worker", WORKER_PW) as worker:
        worked = await worker.find_node(IP, 0)
        assert worked is not None
        spare = await worker.create_node({"ip": IP, "index": 1, "cpu_mem": 2**30})
        held, started = await _node_jobs(worker, jobs, int(worked["pk"]))
        result = await run_command("unregister", "--config", str(config))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"node {worked['pk']} (index 0): handed back job(s) ") and \
            "kept by the server" in lines[0], lines
        assert lines[1] == f"node {spare['pk']} (index 1): removed", lines
        for pk in (held["pk"], started["pk"]):
            back = await jobs.get(pk)
            assert back["node"] is None and phase(back) == "CREATED", back
        assert (await worker.get_node(int(worked["pk"])))["current_job"] is None
        assert await worker.find_node(IP, 1) is None
    again = await run_command("unregister", "--config", str(config))
    assert again.returncode == 0 and "handed back" not in again.stdout, again.stdout

