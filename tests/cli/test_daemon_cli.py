"""`run` and `status` as an operator meets them: directories checked first, a wrong server_url said
once, and what the running daemon is doing, from its status endpoint or its state directory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ufdl_node.client import UfdlClient
from ufdl_node.errors import ExitCode
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR, directory_problem

from .conftest import ADMIN_PW, WORKER_PW, ufdl_node

READ_ONLY = Path("/sys/ufdl-node-test")  # sysfs is read-only, even for root
needs_read_only = pytest.mark.skipif(directory_problem(READ_ONLY) is None, reason="/sys is writable here")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, url: str, **extra: object) -> Path:
    values: dict[str, object] = {"server_url": url, "state_dir": str(path.parent / "state"),
                                 "cache_dir": str(path.parent / "cache"), "gpu_indices": [0],
                                 "poll_interval_s": 0.2, "grace_period_s": 0}
    lines = [f"{key} = {json.dumps(value)}" for key, value in (values | extra).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_one_line(stderr: str, *expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert len(stderr.splitlines()) == 1, stderr
    for text in expected:
        assert text in stderr, stderr


def test_run_with_state_dir_under_a_file_is_one_line_and_exit_2(tmp_path):
    """A state_dir that cannot be created (a file in the way): one line naming it, exit 2."""
    (tmp_path / "a-file").write_text("")
    config = write_config(tmp_path / "c.toml", "http://127.0.0.1:9",
                          state_dir=str(tmp_path / "a-file" / "s"), work_dir=str(tmp_path / "work"))
    result = ufdl_node("run", "--config", str(config), env={"UFDL_NODE_PASSWORD": "x"})
    assert result.returncode == ExitCode.CONFIG
    assert_one_line(result.stderr, "ufdl-node: config: state_dir", "is not a directory")


@needs_read_only
def test_run_with_a_read_only_state_dir_is_one_line_and_exit_2(tmp_path):
    """A read-only state_dir: one line, exit 2 (not a traceback and exit 1, a systemd restart loop)."""
    config = write_config(tmp_path / "c.toml", "http://127.0.0.1:9", state_dir=str(READ_ONLY),
                          work_dir=str(tmp_path / "work"))
    result = ufdl_node("run", "--config", str(config), env={"UFDL_NODE_PASSWORD": "x"})
    assert result.returncode == ExitCode.CONFIG
    assert_one_line(result.stderr, f"state_dir {READ_ONLY}", "not writable")


@needs_read_only
async def test_check_config_checks_every_directory_one_line_each(server, tmp_path):
    """check-config says ok (stdout) or the problem (stderr) for state, cache and work dirs, one line
    each, and exits 2 on any (a directory is a setting to fix, as for `run`)."""
    config = write_config(tmp_path / "c.toml", server.url, cache_dir=str(READ_ONLY))
    result = await asyncio.to_thread(ufdl_node, "check-config", "--config", str(config),
                                     env={"UFDL_NODE_PASSWORD": WORKER_PW})
    assert result.returncode == ExitCode.CONFIG
    out = result.stdout.splitlines()
    assert f"ok: state_dir {tmp_path / 'state'} is writable" in out
    assert f"ok: work_dir {tmp_path / 'state' / 'work'} is writable" in out
    problems = [line for line in result.stderr.splitlines() if ": warning: " not in line]
    assert problems == [f"ufdl-node: check-config: cache_dir {READ_ONLY}: cannot be "
                        "created in /sys: not writable (Permission denied)"]


async def test_first_start_against_a_wrong_server_url_says_so_once(tmp_path, wait_for):
    """A server never reached at the first start: one warning naming it and check-config, not one a round."""
    url = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "c.toml", url, retry_max_attempts=1, poll_backoff_max_s=0.2,
                          log_level="debug", log_format="json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    env["UFDL_NODE_PASSWORD"] = "x"
    daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "ufdl_node", "run", "--config",
                                                  str(config), env=env, stderr=asyncio.subprocess.PIPE,
                                                  stdout=asyncio.subprocess.DEVNULL)
    events: list[dict] = []

    async def read() -> None:
        assert daemon.stderr is not None
        async for raw in daemon.stderr:
            events.append(json.loads(raw))

    reader = asyncio.create_task(read())
    await wait_for(lambda: sum(e["event"] == "startup call failed; retrying" for e in events) >= 4,
                   what="four failed rounds")
    daemon.send_signal(signal.SIGTERM)
    await asyncio.wait_for(daemon.wait(), 60)
    await reader
    said = [e for e in events if "never reached" in e["event"]]
    assert len(said) == 1, said
    assert said[0]["server"] == url and "ufdl-node check-config" in said[0]["event"]


@asynccontextmanager
async def running_daemon(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`ufdl-node run --config CONFIG`, stopped with SIGTERM at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ufdl_node", "run", "--config", str(config),
        env=env | {"UFDL_NODE_PASSWORD": WORKER_PW},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield daemon
    finally:
        if daemon.returncode is None:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.wait(), 60)


async def long_job(url: str) -> int:
    spec = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False).for_template("demo_train", 1)
    assert spec is not None and spec.description is not None
    async with UfdlClient(url, "admin", ADMIN_PW) as admin:
        await admin.import_template(spec.description.import_spec("demo_train"))
        template = (await admin.list_templates({}))[0]
        job = await admin.create_job(int(template["pk"]),
                                     {"dataset": {"value": 1, "type": spec.description.inputs["dataset"]}},
                                     {"epochs": {"value": 200, "type": "int"},
                                      "epoch_seconds": {"value": 0.3, "type": "float"}})
    return int(job["pk"])


async def status_of(config: Path, *more: str):
    return await asyncio.to_thread(ufdl_node, "status", "--config", str(config), *more)


async def test_status_reads_the_state_directory_when_the_endpoint_is_off(server, tmp_path, wait_for):
    """Without status_listen, `status` shows the slot's node, job, template, phase, progress and the
    server from the daemon's snapshot; after the daemon stops it says so and exits 1."""
    pk = await long_job(server.url)
    config = write_config(tmp_path / "c.toml", server.url)
    async with running_daemon(config):
        async def busy():
            result = await status_of(config)
            return result if "% running" in result.stdout and " 0% " not in result.stdout else None

        shown = await wait_for(busy, timeout_s=60, what="a slot with progress")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith("daemon: running") and "from the snapshot" in lines[0]
        assert lines[1] == f"server: {server.url} reachable"
        # (a node without Docker shows "not taking container jobs: ..." before its slots)
        slots = [line for line in lines[2:] if line.startswith("slot ")]
        assert slots[0].startswith(f"slot 0 (node 1): job {pk} demo_train STARTED "), lines
    stopped = await status_of(config)
    assert stopped.returncode == ExitCode.FAILURE
    assert stopped.stdout.startswith("daemon: not running (last seen ")


async def test_status_reads_the_endpoint_when_it_is_on(server, tmp_path, wait_for):
    """With status_listen, `status --json` answers from the endpoint with the slot's job."""
    pk = await long_job(server.url)
    config = write_config(tmp_path / "c.toml", server.url, status_listen=f"127.0.0.1:{free_port()}")
    async with running_daemon(config):
        async def busy():
            result = await status_of(config, "--json")
            if result.returncode != 0:
                return None
            data = json.loads(result.stdout)
            return data if data["slots"] and data["slots"][0]["job"] else None

        data = await wait_for(busy, timeout_s=60, what="a busy slot at the endpoint")
    assert data["source"] == "endpoint" and data["server_reachable"] is True
    assert data["slots"][0]["job"]["pk"] == pk and data["slots"][0]["job"]["template"] == "demo_train"


def test_status_without_a_daemon_is_one_line_and_exit_1(tmp_path):
    """No endpoint and no snapshot: one line saying where it looked, exit 1."""
    config = write_config(tmp_path / "c.toml", "http://127.0.0.1:9")
    result = ufdl_node("status", "--config", str(config))
    assert result.returncode == ExitCode.FAILURE
    assert_one_line(result.stderr, "ufdl-node: status: no daemon status", str(tmp_path / "state"))
