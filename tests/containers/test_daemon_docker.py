"""`docker` handler jobs through the daemon on the embedded server, in real containers."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import StartServer, wait_for
from tests.daemon.conftest import (
    ADMIN_PW,
    PYTHON,
    WORKER_PW,
    Daemon,
    daemon_process_env,
    node_settings,
    server_settings,
)
from ufdl_node.client import UfdlClient
from ufdl_node.containers.engine import ContainerEngine
from ufdl_node.containers.spec import LABEL_JOB, ContainerSpec
from ufdl_node.daemon.logoutput import LOG_NAME, LOG_TYPE, log_lines
from ufdl_node.protocol import phase
from ufdl_node.registry import Registry
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import SHIPPED_HANDLERS_DIR, NodeSettings

from .conftest import TEST_IMAGE, TEST_NODE, delete_image
from .conftest import Registry as DockerRegistry

SESSION_LABEL = "org.ufdl.node.test-session"
# gate=1: after its epochs the script waits for /markers/<pk>.go (Harness.release_gate), so that a
# test acting on a running container cannot lose a race with its end.
SCRIPT = ('echo run >> /markers/${job_pk}.runs; i=1; while [ $i -le ${epochs} ]; do '
          'echo "epoch $i/${epochs}"; sleep ${delay}; i=$((i+1)); done; '
          'if [ ${gate} = 1 ]; then while [ ! -e /markers/${job_pk}.go ]; do sleep 0.05; done; fi; '
          'mkdir -p out; echo trained-${job_pk} > out/model.bin; exit ${exit_code}')
TEMPLATE = f"""
template = "docker_epochs"
image = "{TEST_IMAGE}"
gpu = false
commands = [{json.dumps(SCRIPT)}]
progress_regex = 'epoch (?P<step>\\d+)/(?P<total>\\d+)'
outputs = [{{ name = "model", type = "Blob", path = "out", zip = true }}]

[parameters.epochs]
types = ["int"]
default = 3
[parameters.delay]
types = ["float"]
default = 0.1
[parameters.exit_code]
types = ["int"]
default = 0
[parameters.gate]
types = ["int"]
default = 0
"""
RECORD_TEMPLATE = """
template = "docker_record"
image = "docker_image"
gpu = false
commands = ["echo hello from the registry image"]

[parameters.docker_image]
types = ["PK<DockerImage<Domain<'Image Classification'>, Framework<'mmclass', '0.25.0'>>>"]
"""


class Harness:
    """An embedded server, its admin client, the docker templates, and the node's settings."""

    def __init__(self, server: EmbeddedServer, admin: UfdlClient, tmp_path: Path) -> None:
        self.server = server
        self.admin = admin
        self.tmp_path = tmp_path
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        self.markers.chmod(0o777)  # the container runs as the daemon's user, or nobody under root
        self.templates = tmp_path / "docker.d"
        self.templates.mkdir()
        (self.templates / "docker_epochs.toml").write_text(TEMPLATE)
        (self.templates / "docker_record.toml").write_text(RECORD_TEMPLATE)
        self.template_pks: dict[str, int] = {}
        self.watchers: list[asyncio.Task[None]] = []
        self.extra: dict[str, Any] = {}  # settings a test adds to every node's (before it starts one)

    def overrides(self) -> dict[str, Any]:
        """The docker settings of a test node (besides the fast ones of node_settings)."""
        return {"handler_dirs": [SHIPPED_HANDLERS_DIR], "docker_template_dirs": [self.templates],
                "docker_binds": [f"{self.markers}:/markers"], "docker_labels": {SESSION_LABEL: TEST_NODE},
                "docker_shm_size_bytes": 64 * 2**20, "cancel_grace_s": 2.0, **self.extra}

    def settings(self, **extra: Any) -> NodeSettings:
        return node_settings(self.server, self.tmp_path, **{**self.overrides(), **extra})

    async def import_templates(self) -> None:
        registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False, settings=self.settings())
        for name in ("docker_epochs", "docker_record"):
            spec = registry.for_template(name, 1)
            assert spec is not None and spec.description is not None, registry.problems
            await self.admin.import_template(spec.description.import_spec(name))
            found = await self.admin.list_templates(
                {"expressions": [{"type": "exact", "field": "name", "value": name}]})
            self.template_pks[name] = int(found[0]["pk"])

    async def create(self, template: str = "docker_epochs", **params: Any) -> dict[str, Any]:
        types = {bool: "bool", int: "int", float: "float", str: "str"}
        values = {name: {"value": value, "type": types[type(value)]} for name, value in params.items()}
        return await self.admin.create_job(self.template_pks[template], {}, values)

    async def wait(self, job: dict[str, Any], until: Callable[[dict[str, Any]], bool],
                   timeout_s: float = 60.0, what: str = "the job's state") -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            got = await self.admin.get_job(int(job["pk"]))
            return got if until(got) else None

        return await wait_for(check, timeout_s=timeout_s, interval_s=0.1, what=what)

    def watch(self, job: dict[str, Any]) -> list[float]:
        """The progress values the server sends watchers of `job` from now on (collected in background)."""
        seen: list[float] = []

        async def collect() -> None:
            async for message in self.admin.watch_job(int(job["pk"])):
                value = message.get("progress")
                if message.get("transition") == "progress" and isinstance(value, (int, float)):
                    seen.append(float(value))

        self.watchers.append(asyncio.create_task(collect()))
        return seen

    def release_gate(self, job: dict[str, Any]) -> None:
        """Let a gate=1 job's script end."""
        (self.markers / f"{job['pk']}.go").touch()

    def runs(self, job: dict[str, Any]) -> int:
        marker = self.markers / f"{job['pk']}.runs"
        return len(marker.read_text().splitlines()) if marker.exists() else 0

    async def output_text(self, job: dict[str, Any], name: str, type_: str) -> bytes:
        dest = self.tmp_path / f"out-{job['pk']}-{name}"
        await self.admin.download_output(int(job["pk"]), name, type_, dest)
        return dest.read_bytes()

    async def log_text(self, job: dict[str, Any]) -> bytes:
        """The job's log output (Compressed<JSON, 8>, as the launcher's) as its text lines."""
        return "\n".join(log_lines(await self.output_text(job, LOG_NAME, LOG_TYPE))).encode()

    async def model_file(self, job: dict[str, Any]) -> str:
        dest = self.tmp_path / f"model-{job['pk']}.zip"
        await self.admin.download_output(int(job["pk"]), "model", "Blob", dest)
        with zipfile.ZipFile(dest) as zf:
            return zf.read("model.bin").decode()


@pytest.fixture
async def harness(engine: ContainerEngine, embedded_servers: StartServer,
                  tmp_path: Path) -> AsyncIterator[Harness]:
    """Docker present (else skip), an embedded server with the docker templates imported."""
    server = await embedded_servers(server_settings(tmp_path / "server"))
    async with UfdlClient(server.url, "admin", ADMIN_PW, retry_max_attempts=2,
                          retry_max_delay_s=0.2) as admin:
        h = Harness(server, admin, tmp_path)
        await h.import_templates()
        yield h
        for task in h.watchers:
            task.cancel()
        await asyncio.gather(*h.watchers, return_exceptions=True)
    for run in await engine.find({SESSION_LABEL: TEST_NODE}):
        await run.remove()


@pytest.fixture
async def daemon(harness: Harness) -> AsyncIterator[Callable[..., Daemon]]:
    """In-process daemons (no signal handlers) on the harness's server; drained at the end."""
    started: list[Daemon] = []

    def start(**extra: Any) -> Daemon:
        settings = harness.settings(**extra)
        registry = Registry.load(settings.handler_dirs, entry_points=False, settings=settings)
        d = Daemon(settings, registry)
        started.append(d)
        return d

    yield start
    for d in started:
        if not d.task.done():
            d.supervisor.handle_exit()
            d.supervisor.handle_exit()
        await asyncio.wait_for(d.task, 60)


async def _containers_of(engine: ContainerEngine, job: dict[str, Any]) -> list[Any]:
    return await engine.find({SESSION_LABEL: TEST_NODE, LABEL_JOB: str(job["pk"])})


async def test_job_in_a_container_reports_progress_and_uploads_its_model(
        harness: Harness, daemon: Callable[..., Daemon]) -> None:
    """Epoch lines become progress on the server; the model file comes back as a zip; FINISHED."""
    job = await harness.create(epochs=6, delay=0.4)
    progress = harness.watch(job)
    daemon()

    done = await harness.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"))

    assert phase(done) == "FINISHED", done["error_reason"]
    assert [p for p in progress if 0 < p < 1], progress  # epochs on the way, not only the end
    assert await harness.model_file(job) == f"trained-{job['pk']}\n"
    assert b"epoch 6/6" in await harness.log_text(job)


async def test_failing_script_errors_the_job_with_its_last_lines(
        harness: Harness, daemon: Callable[..., Daemon], engine: ContainerEngine) -> None:
    """A script exiting 3 gives ERRORED with the exit status and its last output line; no container
    stays (it is removed in the background, beside the job's end)."""
    daemon()
    job = await harness.create(epochs=2, delay=0.0, exit_code=3)

    done = await harness.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"))

    assert phase(done) == "ERRORED"
    assert "the container exited with 3" in done["error_reason"]
    assert "epoch 2/2" in done["error_reason"]
    # removed in the background once it exited (the finish does not wait on dockerd)
    await wait_for(lambda: _gone(engine, job), timeout_s=10, interval_s=0.1, what="the container to go")


async def test_cancel_mid_run_stops_and_removes_the_container(
        harness: Harness, daemon: Callable[..., Daemon], engine: ContainerEngine) -> None:
    """A job cancelled while its container runs: the container is gone within cancel_grace_s + 1 s."""
    daemon()
    job = await harness.create(epochs=200, delay=0.5)
    progress = harness.watch(job)
    await wait_for(lambda: [p for p in progress if p > 0], what="the container to run")
    assert await _containers_of(engine, job)

    await harness.admin.cancel(int(job["pk"]))

    # The cancel reaches the daemon by the web socket; the container then has the grace (2 s),
    # plus slack for a loaded machine's dockerd: uncancelled, it would run 100 s.
    await wait_for(lambda: _gone(engine, job), timeout_s=2.0 + 10.0, interval_s=0.1,
                   what="the container to be removed")
    assert harness.runs(job) == 1


async def _gone(engine: ContainerEngine, job: dict[str, Any]) -> bool:
    return await _containers_of(engine, job) == []


async def test_unpullable_image_fails_the_job_clearly(harness: Harness, daemon: Callable[..., Daemon],
                                                      tmp_path: Path) -> None:
    """An image whose registry does not answer gives ERRORED with one line naming the image."""
    (harness.templates / "docker_nowhere.toml").write_text(
        'image = "127.0.0.1:1/nowhere/nothing:latest"\ngpu = false\ncommands = ["true"]\n')
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False, settings=harness.settings())
    spec = registry.for_template("docker_nowhere", 1)
    assert spec is not None and spec.description is not None
    await harness.admin.import_template(spec.description.import_spec("docker_nowhere"))
    found = await harness.admin.list_templates(
        {"expressions": [{"type": "exact", "field": "name", "value": "docker_nowhere"}]})
    harness.template_pks["docker_nowhere"] = int(found[0]["pk"])
    daemon()
    job = await harness.create("docker_nowhere")

    done = await harness.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"))

    assert phase(done) == "ERRORED"
    assert "image 127.0.0.1:1/nowhere/nothing:latest" in done["error_reason"]
    assert "\n" not in done["error_reason"]


async def test_registry_refusing_credentials_hands_the_job_back_without_the_password(
        harness: Harness, daemon: Callable[..., Daemon], registry: DockerRegistry) -> None:
    """Credentials refused: the job is handed back (retried, then given up), one clear line, no secret."""
    wrong = "wrong-" + registry.password[:8]
    record = await harness.admin.request("POST", "/v1/docker/create", json={
        "name": "private", "version": "1", "url": registry.image, "registry_url": registry.host,
        "registry_username": registry.username, "registry_password": wrong, "cuda_version": "11.1",
        "framework": {"name": "mmclass", "version": "0.25.0"}, "domain": "ic", "tasks": ["Train"],
        "min_hardware_generation": None, "cpu": True, "licence": "Apache 2.0"})
    with capture_logs() as logs:
        daemon(max_attempts=2)
        job = await harness.admin.create_job(harness.template_pks["docker_record"], {}, {
            "docker_image": {"value": record["pk"], "type": RECORD_TYPE}})
        # The final state, not the first attempt's: a hand-back finishes the job with the error too
        # (then resets and releases it), and a poll between the two used to catch that one.
        done = await harness.wait(job, lambda j: phase(j) == "ERRORED" and j["node"] is not None
                                  and "gave up after" in (j["error_reason"] or ""))

    reason = done["error_reason"]
    assert "the registry refused the credentials of user" in reason  # the user name is masked too
    assert "gave up after 2 attempts" in reason  # handed back once, then the retries ran out
    assert wrong not in reason
    assert not [entry for entry in logs if wrong in repr(entry)]
    assert wrong.encode() not in await harness.log_text(done)


RECORD_TYPE = "PK<DockerImage<Domain<'Image Classification'>, Framework<'mmclass', '0.25.0'>>>"


# -- a daemon killed outright: its container keeps running and the next one re-attaches ------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


@pytest.fixture
def spawn(harness: Harness) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """`ufdl-node run` processes with the harness's settings in a config file (written at each
    start: a test may add settings first, Harness.extra); killed at the end."""
    config = harness.tmp_path / "node.toml"
    keys = ["server_url", "username", "node_ip", "gpu_indices", "state_dir", "cache_dir", "handler_dirs",
            "poll_interval_s", "poll_jitter_s", "poll_backoff_max_s", "lifecycle_retry_max_s",
            "progress_interval_s",
            "cancel_check_interval_s", "cancel_grace_s", "grace_period_s", "ping_interval_s",
            "retry_max_attempts", "retry_max_delay_s", "docker_template_dirs", "docker_binds",
            "docker_labels", "docker_shm_size_bytes", "log_format", "log_level"]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        settings = harness.settings(log_format="json", log_level="debug")
        lines = [f"{key} = {_toml_value(getattr(settings, key))}" for key in keys]
        config.write_text("\n".join([*lines, f"password = {json.dumps(WORKER_PW)}"]) + "\n")
        config.chmod(0o600)
        log = (harness.tmp_path / f"daemon-{len(procs)}.log").open("ab")
        proc = subprocess.Popen([PYTHON, "-m", "ufdl_node", "run", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=daemon_process_env())
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None


async def test_sigkill_mid_run_then_restart_reattaches_and_finishes_once(
        harness: Harness, spawn: Callable[[], subprocess.Popen[bytes]], engine: ContainerEngine) -> None:
    """SIGKILL mid-run: the container runs on, the next daemon follows it, FINISHED, the script ran once."""
    job = await harness.create(epochs=8, delay=0.25, gate=1)  # still runs once the first is dead
    progress = harness.watch(job)
    first = spawn()
    await wait_for(lambda: [p for p in progress if p >= 2 / 8], timeout_s=60, what="two epochs")

    first.send_signal(signal.SIGKILL)
    await wait_for(lambda: _exited(first), what="the first daemon to die")
    assert [await run.running() for run in await _containers_of(engine, job)] == [True]
    second = spawn()
    harness.release_gate(job)
    done = await harness.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"), timeout_s=90)

    assert phase(done) == "FINISHED", done["error_reason"]
    assert harness.runs(job) == 1
    assert await harness.model_file(job) == f"trained-{job['pk']}\n"
    log = (await harness.log_text(job)).decode()
    assert [log.count(f"epoch {i}/8\n") for i in range(1, 9)] == [1] * 8
    # Removed after the finish, not before it: wait for that (a loaded machine saw it still there).
    await wait_for(lambda: _gone(engine, job), timeout_s=30, what="the container's removal")
    second.send_signal(signal.SIGTERM)
    await wait_for(lambda: _exited(second), timeout_s=30, what="the second daemon to exit")
    assert second.returncode == 0


async def _record(harness: Harness, **fields: Any) -> dict[str, Any]:
    body = {"name": "image", "version": str(len(harness.template_pks) + len(fields)), "url": TEST_IMAGE,
            "cuda_version": "11.1", "framework": {"name": "mmclass", "version": "0.25.0"}, "domain": "ic",
            "tasks": ["Train"], "min_hardware_generation": None, "cpu": True, "licence": "Apache 2.0"}
    body.update(fields)
    record: dict[str, Any] = await harness.admin.request("POST", "/v1/docker/create", json=body)
    return record


async def test_slot_that_cannot_run_the_image_leaves_the_job_and_says_why_once(
        harness: Harness, daemon: Callable[..., Daemon]) -> None:
    """A GPU image on a CPU-only node: not acquired; the reason is in /status and once in the log."""
    record = await _record(harness, name="gpu-only", cpu=False)
    job = await harness.admin.create_job(harness.template_pks["docker_record"], {}, {
        "docker_image": {"value": record["pk"], "type": RECORD_TYPE}})
    with capture_logs() as logs:
        d = daemon()
        await d.wait_ready()
        def slot_reason() -> str | None:
            reason = d.supervisor.status()["slots"][0]["not_acquired"]
            return reason if reason and "needs" in reason else None  # once the record is read

        reason = await wait_for(slot_reason, what="the slot's reason in /status")
        polls = d.sample("ufdl_node_poll_latency_seconds_count")
        await wait_for(lambda: d.sample("ufdl_node_poll_latency_seconds_count") >= polls + 5,
                       what="five more polls")

    assert "needs a GPU (its record is not marked cpu)" in reason
    said = [e for e in logs if e["event"] == "not acquiring: the slot cannot run the job's image"]
    assert len(said) == 1 and said[0]["reason"] == reason
    assert (await harness.admin.get_job(int(job["pk"])))["node"] is None


async def test_pull_with_the_records_credentials_shows_progress_in_the_job_log(
        harness: Harness, daemon: Callable[..., Daemon], registry: DockerRegistry) -> None:
    """An image from a private registry is pulled with the record's credentials, the pull in the job log."""
    await delete_image(registry.image)
    record = await _record(harness, name="private-ok", url=registry.image, registry_url=registry.host,
                           registry_username=registry.username, registry_password=registry.password)
    daemon()
    job = await harness.admin.create_job(harness.template_pks["docker_record"], {}, {
        "docker_image": {"value": record["pk"], "type": RECORD_TYPE}})

    try:
        done = await harness.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"))
    finally:
        await delete_image(registry.image)  # other tests pull it afresh

    assert phase(done) == "FINISHED", done["error_reason"]
    log = (await harness.log_text(job)).decode()
    assert re.search(r"^pull \S+: pulled \S+$", log, re.MULTILINE), log  # the user name is masked
    assert "hello from the registry image" in log
    assert registry.password not in log


async def test_drain_stops_the_container_and_hands_the_job_back(
        harness: Harness, daemon: Callable[..., Daemon], engine: ContainerEngine) -> None:
    """SIGTERM's drain (grace over): the container is stopped and removed, the job goes back to the pool."""
    d = daemon(grace_period_s=0.5)
    job = await harness.create(epochs=200, delay=0.5)
    progress = harness.watch(job)
    await wait_for(lambda: [p for p in progress if p > 0], what="the container to run")

    assert await d.stop() == 0

    assert await _containers_of(engine, job) == []
    back = await harness.admin.get_job(int(job["pk"]))
    assert (phase(back), back["node"]) == ("CREATED", None)


async def test_restart_removes_the_container_of_a_job_cancelled_meanwhile(
        harness: Harness, spawn: Callable[[], subprocess.Popen[bytes]], engine: ContainerEngine) -> None:
    """Killed daemon, job cancelled while it was down: the next daemon removes the container."""
    job = await harness.create(epochs=200, delay=0.5)
    progress = harness.watch(job)
    first = spawn()
    await wait_for(lambda: [p for p in progress if p > 0], timeout_s=60, what="the container to run")
    first.send_signal(signal.SIGKILL)
    await wait_for(lambda: _exited(first), what="the first daemon to die")
    await harness.admin.cancel(int(job["pk"]))

    second = spawn()

    await wait_for(lambda: _gone(engine, job), timeout_s=60, what="the container to be removed")
    await harness.wait(job, lambda j: j["node"] is None or phase(j) == "CANCELLED", what="the job let go")
    assert harness.runs(job) == 1
    second.send_signal(signal.SIGTERM)
    await wait_for(lambda: _exited(second), timeout_s=30, what="the second daemon to exit")


async def test_stale_container_of_a_job_not_held_is_removed_and_the_job_runs_its_own(
        harness: Harness, daemon: Callable[..., Daemon], engine: ContainerEngine) -> None:
    """A container with a waiting job's labels (an earlier attempt's) goes at start; the job runs afresh."""
    registering = daemon()
    await registering.wait_ready()
    node_pk = registering.supervisor.slots[0].node_pk
    await registering.stop()
    job = await harness.create(epochs=1, delay=0.0, exit_code=0)
    stale = await engine.start(ContainerSpec(
        image=TEST_IMAGE, command="sleep 300", node=f"{node_pk}@{harness.server.url}", slot="0",
        job_pk=int(job["pk"]), labels={"org.ufdl.node.step": "1", SESSION_LABEL: TEST_NODE}))
    daemon()  # the same node again, with the stale container there before the job is taken

    done = await harness.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"))

    assert phase(done) == "FINISHED", done["error_reason"]
    assert harness.runs(job) == 1
    assert not await stale.running()


async def test_job_timeout_stops_and_removes_the_container(
        harness: Harness, daemon: Callable[..., Daemon], engine: ContainerEngine) -> None:
    """A job running past job_timeout_s: ERRORED as timed out, and its container is gone."""
    daemon(job_timeout_s=3.0)
    job = await harness.create(epochs=200, delay=0.5)

    done = await harness.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"))

    assert phase(done) == "ERRORED"
    assert "job timed out after 3 s" in done["error_reason"]
    # The removal may land after the job's end on the server, as after a finish (above).
    await wait_for(lambda: _gone(engine, job), timeout_s=30, what="the container's removal")
