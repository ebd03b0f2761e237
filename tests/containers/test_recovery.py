"""Container recovery that is idempotent (issue 19): a daemon killed at any moment around a
container's start, a re-attached job with a dataset, and a drain during a server outage after
the container did its work. Real Docker, real daemon processes, SIGKILL at the moment."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.conftest import wait_for
from tests.daemon.conftest import Daemon
from tests.faults import FaultProxy
from tests.handlers.images import image_folder
from ufdl_node.api import HandlerSpec
from ufdl_node.cli.localdata import upload_dataset
from ufdl_node.containers.engine import ContainerEngine, ContainerRun
from ufdl_node.containers.spec import LABEL_JOB
from ufdl_node.protocol import phase
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

from .conftest import TEST_IMAGE, TEST_NODE
from .test_daemon_docker import SESSION_LABEL, Harness, daemon, harness, spawn  # noqa: F401
from .test_docker_inputs import _context, _docker_module

DATASET_TYPE = "PK<Dataset<Domain<'Image Classification'>>>"
LABELS = {"cat": 2, "dog": 1}
FILES = sorted(f"./{label}{i}.png" for label, count in LABELS.items() for i in range(count))
# Each container that runs leaves its id (the host name Docker gives it) in the job's marker.
ONE_RUN = 'echo "$(hostname)" >> /markers/${job_pk}.runs'
EPOCHS = 'i=1; while [ $i -le 8 ]; do echo "epoch $i/8"; sleep 0.4; i=$((i+1)); done'
STARTS = f"""
image = "{TEST_IMAGE}"
gpu = false
commands = [{json.dumps(f"{ONE_RUN}; {EPOCHS}; mkdir -p out; echo trained-${{job_pk}} > out/model.bin")}]
progress_regex = 'epoch (?P<step>\\d+)/(?P<total>\\d+)'
outputs = [{{ name = "model", type = "Blob", path = "out", zip = true }}]
"""
LISTING = "mkdir -p out && (cd data && find . -type f | sort) > out/listing.txt"
# After its epochs, the dataset job's container waits for /markers/<pk>.go (Harness.release_gate):
# it still runs when the next daemon comes, however loaded the machine.
GATE = "while [ ! -e /markers/${job_pk}.go ]; do sleep 0.05; done"
WITH_DATASET = f"""
job_type = "Train"
domain = "Image Classification"
framework = "busybox:1"
gpu = false
inputs = {{ dataset = "{DATASET_TYPE}" }}
image = "{TEST_IMAGE}"
dataset = {{ input = "dataset", dest = "data", archive = "zip", options = ["to-images-ic", "-o", "."] }}
commands = [{json.dumps(f"{ONE_RUN}; {LISTING}; {EPOCHS}; {GATE}")}]
progress_regex = 'epoch (?P<step>\\d+)/(?P<total>\\d+)'
outputs = [{{ name = "listing", type = "Blob", path = "out/listing.txt" }}]
"""
# A handler whose container is quick and whose outputs then take a while to collect (as a
# big model being zipped): a drain meets it after the container exited 0.
SLOW_COLLECT = """
import asyncio
from pathlib import Path

from ufdl_node.api import JobContext, TemplateDescription, handler


@handler("container_then_collect", description=TemplateDescription(
    job_type="Export", description="a container, then a slow collection of its output"))
async def run(ctx: JobContext) -> None:
    pk = ctx.job["pk"]
    await ctx.container(IMAGE, f'echo "$(hostname)" >> /markers/{pk}.runs; mkdir -p out; '
                        f'echo trained-{pk} > out/model.bin')
    (MARKERS / f"{pk}.collecting").touch()
    for _ in range(1200):  # a minute at most, until the test lets it end (its gate)
        if (MARKERS / f"{pk}.go").exists():
            break
        await asyncio.sleep(0.05)
    await ctx.upload("model", "Blob", "out/model.bin")
"""


async def _import(h: Harness, name: str, **settings: Any) -> None:
    """Import the template of definition or Python handler `name` into the server."""
    registry = Registry.load(h.settings(**settings).handler_dirs, entry_points=False,
                             settings=h.settings(**settings))
    spec = registry.for_template(name, 1)
    assert spec is not None and spec.description is not None, registry.problems
    await h.admin.import_template(spec.description.import_spec(name))
    found = await h.admin.list_templates(
        {"expressions": [{"type": "exact", "field": "name", "value": name}]})
    h.template_pks[name] = int(found[0]["pk"])


async def _definition(h: Harness, name: str, text: str) -> None:
    (h.templates / f"{name}.toml").write_text(text)
    await _import(h, name)


def _runs(h: Harness, job: dict[str, Any]) -> list[str]:
    """The ids of the containers that ran for `job` (each wrote its host name)."""
    marker = h.markers / f"{job['pk']}.runs"
    return marker.read_text().split() if marker.exists() else []


async def _containers(engine: ContainerEngine, job: dict[str, Any]) -> list[ContainerRun]:
    return await engine.find({SESSION_LABEL: TEST_NODE, LABEL_JOB: str(job["pk"])})


async def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    await wait_for(lambda: proc.poll() is not None, what="the daemon to die")


async def _finishes(h: Harness, job: dict[str, Any]) -> dict[str, Any]:
    done = await h.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"), timeout_s=90)
    assert phase(done) == "FINISHED", done["error_reason"]
    return done


async def test_daemon_killed_as_the_container_is_created_leaves_one_container(
        harness: Harness, spawn: Callable[[], subprocess.Popen[bytes]],  # noqa: F811
        engine: ContainerEngine) -> None:
    """SIGKILL the moment the job's container exists (created, its start in flight or just
    done): the next daemon finds it by its labels and follows it (starting it if it never
    was); exactly that one container ran, and the job FINISHED."""
    await _definition(harness, "docker_starts", STARTS)
    job = await harness.admin.create_job(harness.template_pks["docker_starts"], {}, {})
    first = spawn()
    created = await wait_for(lambda: _containers(engine, job), timeout_s=60, interval_s=0.005,
                             what="the job's container to be created")
    await _kill(first)
    spawn()

    await _finishes(harness, job)

    assert _runs(harness, job) == [created[0].short_id]
    assert await harness.model_file(job) == f"trained-{job['pk']}\n"
    assert await _containers(engine, job) == []


async def _dataset_job_killed_mid_run(h: Harness, start: Callable[[], subprocess.Popen[bytes]],
                                      *, epochs: int) -> dict[str, Any]:
    """A job of the dataset definition, its daemon SIGKILLed once `epochs` of 8 have run."""
    await _definition(h, "docker_dataset", WITH_DATASET)
    folder = image_folder(h.tmp_path / "images", LABELS)
    dataset = await upload_dataset(h.admin, folder, domain="ic", name="pets")
    job = await h.admin.create_job(h.template_pks["docker_dataset"],
                                   {"dataset": {"value": dataset["pk"], "type": DATASET_TYPE}}, {})
    progress = h.watch(job)
    first = start()
    await wait_for(lambda: [p for p in progress if p >= epochs / 8], timeout_s=60,
                   what=f"{epochs} epoch(s)")
    await _kill(first)
    return job


async def test_reattached_job_keeps_its_dataset_and_finishes(
        harness: Harness, spawn: Callable[[], subprocess.Popen[bytes]],  # noqa: F811
        engine: ContainerEngine) -> None:
    """SIGKILL mid-run of a definition with a dataset: the restart's handler finds its complete
    data/ kept (not refused, not fetched again), re-attaches, and the job FINISHES; one run."""
    job = await _dataset_job_killed_mid_run(harness, spawn, epochs=2)
    spawn()
    harness.release_gate(job)

    done = await _finishes(harness, job)

    assert len(_runs(harness, job)) == 1
    assert (await harness.output_text(done, "listing", "Blob")).decode().splitlines() == FILES
    log = (await harness.log_text(job)).decode()
    assert "dataset kept from before the restart" in log
    assert await _containers(engine, job) == []


async def test_reattached_job_whose_handler_fails_first_leaves_no_container(
        harness: Harness, spawn: Callable[[], subprocess.Popen[bytes]],  # noqa: F811
        engine: ContainerEngine) -> None:
    """The re-attached job's handler fails before it follows its container (its kept data/ was
    damaged while the daemon was down): the job is ERRORED and its container removed then, not
    left running to its end."""
    job = await _dataset_job_killed_mid_run(harness, spawn, epochs=1)
    work = harness.settings().job_work_root / f"job-{job['pk']}" / "work"
    (work / ".ufdl-prepared" / "dataset").unlink()
    shutil.rmtree(work / "data")
    (work / "data").write_text("not a directory")
    spawn()

    done = await harness.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"), timeout_s=60)

    assert phase(done) == "ERRORED" and "dataset dest data already exists" in done["error_reason"]
    await wait_for(lambda: _gone(engine, job), timeout_s=10, what="the container to be removed")
    assert len(_runs(harness, job)) == 1


async def _gone(engine: ContainerEngine, job: dict[str, Any]) -> bool:
    return await _containers(engine, job) == []

async def test_drain_in_an_outage_after_the_container_exited_0_completes_the_job_later(
        harness: Harness, daemon: Callable[..., Daemon],  # noqa: F811
        engine: ContainerEngine) -> None:
    """A drain, the server down, the job's container exited 0 and its outputs being collected:
    the job is not handed back (it stays STARTED, the node's); once the server is back the next
    start completes it from the journal, and the container never runs again."""
    handlers = harness.tmp_path / "handlers"
    handlers.mkdir()
    (handlers / "slow_collect.py").write_text(
        SLOW_COLLECT.replace("IMAGE", repr(TEST_IMAGE)).replace("MARKERS", f"Path({str(harness.markers)!r})"))
    async with FaultProxy(harness.server.url) as proxy:
        extra = {"handler_dirs": [SHIPPED_HANDLERS_DIR, handlers], "server_url": proxy.url,
                 "grace_period_s": 0.2}
        await _import(harness, "container_then_collect", **extra)
        d = daemon(**extra)
        job = await harness.admin.create_job(harness.template_pks["container_then_collect"], {}, {})
        await wait_for(lambda: (harness.markers / f"{job['pk']}.collecting").exists(), timeout_s=60,
                       what="the container to exit and the collection to begin")
        outage = proxy.fail(None, r".*", status=503)

        stopping = asyncio.create_task(d.stop())
        await wait_for(d.supervisor.should_exit.is_set, what="the drain to begin")
        harness.release_gate(job)  # the collection could not end before the outage and drain
        await asyncio.wait_for(stopping, 30)  # not the 60 s a report may take: the journal has it

        held = await harness.admin.get_job(int(job["pk"]))
        assert phase(held) == "STARTED" and held["node"] is not None, held
        assert outage.hits > 0
        proxy.clear()
        daemon(**extra)
        await _finishes(harness, job)

    assert len(_runs(harness, job)) == 1
    model = harness.tmp_path / "model.bin"
    await harness.admin.download_output(int(job["pk"]), "model", "Blob", model)
    assert model.read_text() == f"trained-{job['pk']}\n"
    assert await _containers(engine, job) == []


async def test_a_preparation_step_cut_short_is_redone_and_a_complete_one_kept(tmp_path: Path) -> None:
    """The docker handler's preparation markers: data/ without its marker (a step cut short) is
    removed to be redone; with the marker, written last, it is kept as it is."""
    module = _docker_module()
    [spec] = list(module.handlers(SimpleNamespace(docker_template_dirs=[], docker_templates={
        "t": {"image": TEST_IMAGE, "commands": ["true"], "dataset": {"dest": "data"}}})))
    assert isinstance(spec, HandlerSpec), spec
    ctx = _context(spec, "t", tmp_path)
    data = ctx.work_dir / "data"
    (data / "half").mkdir(parents=True)
    (data / "half" / "a.png").write_bytes(b"partial")

    assert await module._prepared(ctx, data.resolve(), "dataset") is False
    assert not data.exists()  # cut short: gone, to be fetched again from scratch

    (data / "whole").mkdir(parents=True)
    (data / "whole" / "a.png").write_bytes(b"png")
    module._mark_prepared(ctx, data.resolve(), "dataset")
    assert await module._prepared(ctx, data.resolve(), "dataset") is True
    assert (data / "whole" / "a.png").read_bytes() == b"png"
    # the marker names its dest: a model step's marker is its own, not the dataset's
    assert await module._prepared(ctx, (ctx.work_dir / "output").resolve(), "model") is False
    assert await module._prepared(ctx, data.resolve(), "dataset") is True
