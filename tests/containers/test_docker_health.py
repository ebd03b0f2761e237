"""Docker going away and coming back: container jobs wait in the pool, then run, with no
restart of the node (ufdl_node/daemon/health.py). Needs a running dockerd."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from structlog.testing import capture_logs

from tests.conftest import wait_for
from tests.daemon.conftest import Daemon
from ufdl_node.api import HandlerSpec, Needs
from ufdl_node.containers.engine import ContainerEngine
from ufdl_node.daemon.health import NodeHealth
from ufdl_node.protocol import phase
from ufdl_node.settings import NodeSettings

from .test_daemon_docker import Harness
from .test_daemon_docker import daemon as daemon  # the fixtures
from .test_daemon_docker import harness as harness

DOCKER_SOCKET = "/var/run/docker.sock"


def _docker_url_of(tmp_path: Path) -> tuple[str, Path]:
    link = tmp_path / "docker.sock"
    return f"unix://{link}", link


class DockerProxy:
    """A unix socket forwarding to dockerd; `stop()` is dockerd going down (its connections close)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(DOCKER_SOCKET)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()
        self.path.unlink(missing_ok=True)


async def test_container_job_waits_while_docker_is_down_and_runs_once_it_is_back(
        harness: Harness, daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """The node starts with no Docker at its socket: the container job is not taken; once the
    socket is there the re-probe notices it and the job runs, without a restart."""
    url, link = _docker_url_of(tmp_path)
    job = await harness.create(epochs=1)
    with capture_logs() as logs:
        node = daemon(docker_url=url, docker_probe_interval_s=0.3)
        await node.wait_ready()
        await wait_for(lambda: node.supervisor.health is not None and node.supervisor.health.docker,
                       what="the node to find Docker down")
        for _ in range(5):  # some polls: the job stays in the pool
            tick = node.supervisor.last_loop_tick
            await wait_for(lambda t=tick: node.supervisor.last_loop_tick > t, what="a poll")
        assert phase(await harness.admin.get_job(int(job["pk"]))) == "CREATED" and harness.runs(job) == 0
        os.symlink(DOCKER_SOCKET, link)
        await harness.wait(job, lambda j: phase(j) == "FINISHED", what="the job to run once Docker is back")
    assert harness.runs(job) == 1
    said = [entry["event"] for entry in logs if "container jobs" in entry["event"]]
    assert said == ["not taking container jobs (the others go on)",
                    "Docker reachable again; taking container jobs"], said


async def test_docker_gone_mid_life_hands_the_job_back_once_and_takes_no_more(
        harness: Harness, daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """Docker answers at the start, then goes down: the first container job is handed back (not
    ERRORED), the node probes at once and takes no container job again while Docker is down."""
    url, path = _docker_url_of(tmp_path)
    proxy = DockerProxy(path)
    await proxy.start()
    node = daemon(docker_url=url, docker_probe_interval_s=30.0)  # only a job's error probes sooner
    await node.wait_ready()
    assert node.supervisor.health is not None and node.supervisor.health.docker is None
    await proxy.stop()
    job = await harness.create(epochs=1)
    await wait_for(lambda: node.supervisor.health is not None and node.supervisor.health.docker,
                   what="the job's error to make the node probe Docker")
    for _ in range(10):
        tick = node.supervisor.last_loop_tick
        await wait_for(lambda t=tick: node.supervisor.last_loop_tick > t, what="a poll")
    got = await harness.admin.get_job(int(job["pk"]))
    assert phase(got) == "CREATED", got
    assert node.sample("ufdl_node_jobs_total", outcome="retried") == 1
    assert node.sample("ufdl_node_jobs_total", outcome="errored") == 0


async def test_a_jobs_docker_error_holds_container_jobs_until_the_probe_answers(
        engine: ContainerEngine, tmp_path: Path) -> None:
    """A job's Docker error that was not Docker being down (the probe answers) holds container
    jobs back only until the probe, which then asks the poller for a full list."""
    settings = NodeSettings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    container = HandlerSpec(name="c", templates=("c",), func=_noop, needs=Needs(docker=True))
    plain = HandlerSpec(name="p", templates=("p",), func=_noop)
    health = NodeHealth(settings, engine, [container, plain])
    await health.probe_docker()
    assert health.docker is None and health.gate(container) is None
    health.docker_failed("cannot list containers: it broke")
    assert health.gate(container) == "checking Docker after a job's error: cannot list containers: it broke"
    assert health.gate(plain) is None
    await health.probe_docker()
    assert health.gate(container) is None and health.recoveries == 1 and health.docker is None


async def _noop(ctx: object) -> None:
    return None
