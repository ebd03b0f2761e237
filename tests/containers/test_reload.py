"""`systemctl reload` (SIGHUP) on a daemon process with a container job running: a docker template
definition dropped into `docker_template_dirs` is taken up, the running job is not dropped."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable

from tests.daemon.conftest import phase
from ufdl_node.registry import Registry

from .conftest import TEST_IMAGE
from .test_daemon_docker import Harness, harness, spawn  # noqa: F401

NEW_TEMPLATE = f"""
template = "docker_hello"
image = "{TEST_IMAGE}"
gpu = false
commands = ["echo hello after the reload"]
"""


async def test_sighup_takes_up_a_new_drop_in_with_a_container_job_running(
        harness: Harness, spawn: Callable[[], subprocess.Popen[bytes]]) -> None:  # noqa: F811
    # Two slots: the free one would take the new job if a handler served it before the reload.
    harness.extra["gpu_indices"] = [0, 1]
    proc = spawn()
    running = await harness.create(epochs=1, delay=0.0, gate=1)  # runs across the reload
    await harness.wait(running, lambda j: phase(j) == "STARTED", what="the container job to start")

    (harness.templates / "docker_hello.toml").write_text(NEW_TEMPLATE)
    registry = Registry.load(harness.settings().handler_dirs, entry_points=False, settings=harness.settings())
    spec = registry.for_template("docker_hello", 1)
    assert spec is not None and spec.description is not None, registry.problems
    await harness.admin.import_template(spec.description.import_spec("docker_hello"))
    found = await harness.admin.list_templates(
        {"expressions": [{"type": "exact", "field": "name", "value": "docker_hello"}]})
    harness.template_pks["docker_hello"] = int(found[0]["pk"])
    new = await harness.create("docker_hello")
    await asyncio.sleep(1.0)
    assert (await harness.admin.get_job(int(new["pk"])))["node"] is None, "no handler before the reload"

    proc.send_signal(signal.SIGHUP)
    hello = await harness.wait(new, lambda j: phase(j) in ("FINISHED", "ERRORED"), timeout_s=90,
                               what="the job of the new template")
    assert phase(hello) == "FINISHED", hello
    assert phase(await harness.admin.get_job(int(running["pk"]))) == "STARTED", "the reload left it alone"
    harness.release_gate(running)
    done = await harness.wait(running, lambda j: phase(j) in ("FINISHED", "ERRORED"), timeout_s=90)
    assert phase(done) == "FINISHED", done
    assert harness.runs(running) == 1, "the running job went on, it was not restarted"
    assert b"hello after the reload" in await harness.log_text(new)
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 60)
    assert proc.returncode == 0
