"""Fixtures for the daemon's tests: an embedded server on loopback, an admin
client, the `test_job` template, jobs, and daemons that clean up after themselves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartServer, wait_for
from ufdl_node.client import UfdlClient
from ufdl_node.daemon.supervisor import Supervisor
from ufdl_node.protocol import phase
from ufdl_node.registry import Registry
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import NodeSettings, ServerSettings

HANDLERS = Path(__file__).parent / "handlers"
ADMIN_PW = "admin-pw-0123"
WORKER_PW = "worker-pw-4567"
FINAL = ("FINISHED", "ERRORED", "CANCELLED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_settings(data_dir: Path, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {"data_dir": data_dir, "port": 0, "admin": f"admin:{ADMIN_PW}",
                              "worker": f"worker:{WORKER_PW}", "log_level": "warning"}
    values.update(overrides)
    return ServerSettings(**values)


@pytest.fixture
def make_server(tmp_path: Path, embedded_servers: StartServer) -> Callable[..., Awaitable[EmbeddedServer]]:
    """Start embedded servers (stopped at the end of the test)."""
    count = 0

    async def make(**overrides: Any) -> EmbeddedServer:
        nonlocal count
        overrides.setdefault("data_dir", tmp_path / f"server-{count}")
        count += 1
        return await embedded_servers(server_settings(**overrides))

    return make


@pytest.fixture
async def server(make_server: Callable[..., Awaitable[EmbeddedServer]]) -> EmbeddedServer:
    return await make_server()


@pytest.fixture
async def admin(server: EmbeddedServer) -> AsyncIterator[UfdlClient]:
    async with UfdlClient(server.url, "admin", ADMIN_PW, retry_max_attempts=2,
                          retry_max_delay_s=0.2) as client:
        yield client


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry.load([HANDLERS], entry_points=False)


async def import_template(admin: UfdlClient, registry: Registry, name: str = "test_job") -> int:
    spec = registry.for_template(name, 1)
    assert spec is not None and spec.description is not None
    await admin.import_template(spec.description.import_spec(name))
    found = await admin.list_templates({"expressions": [{"type": "exact", "field": "name", "value": name}]})
    return int(found[0]["pk"])


@pytest.fixture
async def template(admin: UfdlClient, registry: Registry) -> int:
    return await import_template(admin, registry)


class Jobs:
    """Creates `test_job` jobs and waits on them."""

    def __init__(self, admin: UfdlClient, template_pk: int, marker_dir: Path) -> None:
        self.admin = admin
        self.template_pk = template_pk
        self.marker_dir = marker_dir

    async def create(self, mode: str = "ok", seconds: float = 0.0, size: int = 4096,
                     **extra: Any) -> dict[str, Any]:
        params = {"mode": {"value": mode, "type": "str"},
                  "seconds": {"value": seconds, "type": "float"},
                  "size": {"value": size, "type": "int"},
                  "marker_dir": {"value": str(self.marker_dir), "type": "str"}}
        return await self.admin.create_job(self.template_pk, {}, params, description=f"test {mode}",
                                           **extra)

    def release_gate(self, job: dict[str, Any] | int) -> None:
        """Let a job of mode "gated" end."""
        pk = job if isinstance(job, int) else job["pk"]
        (self.marker_dir / f"{pk}.go").touch()

    async def get(self, job: dict[str, Any] | int) -> dict[str, Any]:
        pk = job if isinstance(job, int) else job["pk"]
        return await self.admin.get_job(int(pk))

    async def wait(self, job: dict[str, Any] | int, until: Callable[[dict[str, Any]], bool],
                   timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            got = await self.get(job)
            if until(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"job {got['pk']} did not reach the state in {timeout_s} s: {got}")
            await asyncio.sleep(0.1)

    async def wait_final(self, job: dict[str, Any] | int, timeout_s: float = 30.0) -> dict[str, Any]:
        return await self.wait(job, lambda j: (phase(j) in FINAL and j["node"] is not None)
                               or (phase(j) == "CANCELLED"), timeout_s)

    async def subprocess_pids(self, job: dict[str, Any]) -> list[int]:
        """The pids a `subprocess` job wrote (its shell and its `sleep`), once both are written."""
        pid_file = self.marker_dir / f"{job['pk']}.pids"

        def read() -> list[int]:
            words = pid_file.read_text().split() if pid_file.exists() else []
            return [int(w) for w in words] if len(words) == 2 else []

        return await wait_for(read, what=f"job {job['pk']}'s subprocesses to start")

    async def wait_node_free(self, node_pk: int) -> None:
        """Wait until the node holds no job (its finish or release has landed)."""
        async def free() -> bool:
            return (await self.admin.get_node(node_pk))["current_job"] is None

        await wait_for(free, what=f"node {node_pk} to be freed")

    def runs(self, job: dict[str, Any]) -> int:
        marker = self.marker_dir / f"{job['pk']}.runs"
        return len(marker.read_text().splitlines()) if marker.exists() else 0


@pytest.fixture
def jobs(admin: UfdlClient, template: int, tmp_path: Path) -> Jobs:
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir(exist_ok=True)
    return Jobs(admin, template, marker_dir)


class JobsFactory:
    """Jobs (and an admin client, closed at the end) for a server a test started itself."""

    def __init__(self, registry: Registry, marker_dir: Path) -> None:
        self.registry = registry
        self.marker_dir = marker_dir
        self.clients: list[UfdlClient] = []

    async def admin_for(self, server: EmbeddedServer) -> UfdlClient:
        client = UfdlClient(server.url, "admin", ADMIN_PW, retry_max_attempts=2, retry_max_delay_s=0.2)
        self.clients.append(client)
        return client

    async def __call__(self, server: EmbeddedServer) -> Jobs:
        admin = await self.admin_for(server)
        return Jobs(admin, await import_template(admin, self.registry), self.marker_dir)


@pytest.fixture
async def jobs_factory(registry: Registry, tmp_path: Path) -> AsyncIterator[JobsFactory]:
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir(exist_ok=True)
    factory = JobsFactory(registry, marker_dir)
    yield factory
    for client in factory.clients:
        await client.close()


def node_settings(server: EmbeddedServer, tmp_path: Path, name: str = "a", **overrides: Any) -> NodeSettings:
    """Fast settings for a daemon against `server`; `name` keeps daemons apart."""
    values: dict[str, Any] = {
        "server_url": server.url, "username": "worker", "password": WORKER_PW,
        "node_ip": f"127.0.0.{ord(name[0]) % 200 + 2}", "gpu_indices": [0],
        "state_dir": tmp_path / f"node-{name}" / "state", "cache_dir": tmp_path / f"node-{name}" / "cache",
        "handler_dirs": [HANDLERS], "poll_interval_s": 0.2, "poll_jitter_s": 0.05,
        "poll_backoff_max_s": 0.5, "lifecycle_retry_max_s": 0.5,
        "progress_interval_s": 0.05, "cancel_check_interval_s": 0.2,
        "cancel_grace_s": 2.0, "grace_period_s": 5.0, "ping_interval_s": 0.5,
        "retry_max_attempts": 3, "retry_max_delay_s": 0.2, "request_timeout_s": 5.0,
    }
    values.update(overrides)
    return NodeSettings(**values)


class Daemon:
    """An in-process daemon (no signal handlers); `stop()` drains it like a SIGTERM."""

    def __init__(self, settings: NodeSettings, registry: Registry) -> None:
        self.supervisor = Supervisor(settings, registry=registry)
        self.task: asyncio.Task[int] = asyncio.create_task(self.supervisor.run())

    async def stop(self, timeout_s: float = 30.0) -> int:
        self.supervisor.handle_exit()
        return await asyncio.wait_for(self.task, timeout_s)

    def sample(self, name: str, **labels: str) -> float:
        """A value of the daemon's Prometheus registry (0 while nothing was recorded)."""
        return self.supervisor.metrics.registry.get_sample_value(name, labels) or 0.0

    def failed_polls(self) -> float:
        """How many find-work calls got no reply (the server was down)."""
        return self.sample("ufdl_node_api_calls_total", action="find_work", status="error")

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        # registered, recovered, and polling: the main loop has made one find-work call
        while len(self.supervisor.slots) < len(self.supervisor.settings.gpu_indices or [0]) \
                or not self.supervisor.server_reachable \
                or not self.sample("ufdl_node_poll_latency_seconds_count"):
            if self.task.done():
                raise AssertionError(f"daemon exited early with {self.task.result()}")
            if time.monotonic() > deadline:
                raise AssertionError("daemon did not register its nodes in time")
            await asyncio.sleep(0.05)


@pytest.fixture
async def start_daemon(tmp_path: Path, registry: Registry) -> AsyncIterator[Callable[..., Daemon]]:
    """Start in-process daemons against a server; stopped (drained) at the end of the test."""
    daemons: list[Daemon] = []

    def start(server: EmbeddedServer | str, name: str = "a", **overrides: Any) -> Daemon:
        if isinstance(server, str):
            settings = node_settings(_UrlOnly(server), tmp_path, name, **overrides)  # type: ignore[arg-type]
        else:
            settings = node_settings(server, tmp_path, name, **overrides)
        daemon = Daemon(settings, registry)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        if not daemon.task.done():
            daemon.supervisor.handle_exit()
            daemon.supervisor.handle_exit()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(daemon.task, 30)


class _UrlOnly:
    def __init__(self, url: str) -> None:
        self.url = url


def daemon_process_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


PYTHON = sys.executable


def write_config(path: Path, server_url: str, tmp_path: Path, **extra: Any) -> Path:
    """A fast daemon's TOML settings for `server_url`, mode 0600 (it holds the password)."""
    values: dict[str, Any] = {
        "server_url": server_url, "username": "worker", "password": WORKER_PW,
        "node_ip": "127.0.0.50", "gpu_indices": [0],
        "state_dir": str(tmp_path / "state"), "cache_dir": str(tmp_path / "cache"),
        "handler_dirs": [str(HANDLERS)], "poll_interval_s": 0.2, "poll_jitter_s": 0.05,
        "poll_backoff_max_s": 0.5, "lifecycle_retry_max_s": 0.5,
        "progress_interval_s": 0.1, "cancel_check_interval_s": 0.2,
        "cancel_grace_s": 2.0, "grace_period_s": 10.0, "ping_interval_s": 0.5,
        "retry_max_attempts": 3, "retry_max_delay_s": 0.2, "log_format": "json", "log_level": "debug",
    }
    values.update(extra)
    lines = []
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


class DaemonProcess:
    """`ufdl-node run --config CONFIG` as a child process, its output in `log_path`."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.log_file = log_path.open("ab")
        self.proc = subprocess.Popen([PYTHON, "-m", "ufdl_node", "run", "--config", str(config)],
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env=daemon_process_env(**(env or {})))

    async def wait(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon still running after {timeout_s} s:\n{self.log()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemon processes from a config file (and extra environment); killed at the end."""
    procs: list[DaemonProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        proc = DaemonProcess(config, tmp_path / f"daemon-{len(procs)}.log", env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


SOAK_HANDLERS = Path(__file__).parent.parent / "soak" / "handlers"


class SoakJobs:
    """`soak_job` jobs (tests/soak/handlers) on one server, and what their invocations recorded."""

    def __init__(self, admin: UfdlClient, template_pk: int, record_dir: Path) -> None:
        self.admin, self.template_pk, self.record_dir = admin, template_pk, record_dir

    async def create(self, mode: str = "ok", seconds: float = 0.0) -> dict[str, Any]:
        params = {"mode": {"value": mode, "type": "str"}, "seconds": {"value": seconds, "type": "float"},
                  "record_dir": {"value": str(self.record_dir), "type": "str"}}
        return await self.admin.create_job(self.template_pk, {}, params, description=f"soak_job {mode}")

    def release_gate(self, pk: int) -> None:
        """Let job `pk` end its wait now (soakjobs: `seconds` at most, less once the gate exists)."""
        (self.record_dir / f"{pk}.go").touch()

    def lines(self, pk: int, what: str) -> list[str]:
        path = self.record_dir / f"{pk}.inv"
        return [x for x in path.read_text().splitlines() if x.startswith(what)] if path.exists() else []

    def starts(self, pk: int) -> int:
        return len(self.lines(pk, "start"))

    async def wait(self, pk: int, wanted: str, wait_for: Any) -> dict[str, Any]:
        """The job once it is `wanted` with a node (a hand-back's ERRORED is on the way to none)."""
        async def reached() -> dict[str, Any] | None:
            job = await self.admin.get_job(pk)
            return job if phase(job) == wanted and job["node"] is not None else None

        found: dict[str, Any] = await wait_for(reached, timeout_s=40, what=f"job {pk} to be {wanted}")
        return found
