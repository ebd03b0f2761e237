"""The job journal: a daemon killed between the last upload and finish completes the job at restart."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ufdl_node.client import UfdlClient
from ufdl_node.daemon.journal import Journal, JournalRecord
from ufdl_node.registry import Registry

from ..faults import FaultProxy
from ..soak.handlers.soakjobs import FAIL_REASON, soak_output
from .conftest import (
    ADMIN_PW,
    SOAK_HANDLERS,
    Daemon,
    DaemonProcess,
    SoakJobs,
    import_template,
    node_settings,
    phase,
    write_config,
)

pytestmark = pytest.mark.slow
FINISH = r"/v1/jobs/\d+/finish/?$"



@pytest.fixture
async def world(request, make_server, tmp_path) -> AsyncIterator[tuple[FaultProxy, SoakJobs]]:
    """An embedded server (with the real server's quirks when parametrized so), a fault proxy
    in front of it, and the soak template."""
    server = await make_server(real_server_quirks=getattr(request, "param", False))
    registry = Registry.load([SOAK_HANDLERS], entry_points=False)
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    async with UfdlClient(server.url, "admin", ADMIN_PW, retry_max_attempts=2) as admin, \
            FaultProxy(server.url) as proxy:
        yield proxy, SoakJobs(admin, await import_template(admin, registry, "soak_job"), record_dir)


@pytest.fixture
def spawn(spawn: Callable[..., DaemonProcess], tmp_path: Path) -> Callable[[str], DaemonProcess]:
    """Daemon processes of the soak handler against `url` (the conftest's spawn, given a config)."""
    def start(url: str) -> DaemonProcess:
        return spawn(write_config(tmp_path / "node.toml", url, tmp_path, handler_dirs=[str(SOAK_HANDLERS)]))

    return start


UPLOAD = r"/v1/jobs/\d+/outputs/result/"


async def _kill_while_finish_is_held(proxy: FaultProxy, jobs: SoakJobs, job: dict, spawn, wait_for,
                                     held_call: str = FINISH) -> None:
    """Run `job` in a daemon process, hold its finish call (or another: `held_call`), and
    SIGKILL the daemon then."""
    held = proxy.delay("POST", held_call, 3600)
    first = spawn(proxy.url)
    await wait_for(lambda: jobs.lines(job["pk"], "end") and held.hits >= 1,
                   what="the handler's end and the held call")
    first.proc.send_signal(signal.SIGKILL)
    assert await first.wait(10) == -signal.SIGKILL
    proxy.clear()


@pytest.mark.parametrize("held_call", [FINISH, UPLOAD], ids=["finish-pending", "mid-upload"])
@pytest.mark.parametrize("world", [False, True], ids=["embedded", "real-server-quirks"], indirect=True)
async def test_killed_between_last_upload_and_finish_is_completed_not_rerun(world, spawn, tmp_path, wait_for,
                                                                           held_call):
    """SIGKILL with finish pending, or during the output's upload, restart: FINISHED, the handler
    ran once, outputs intact (one copy), work dir gone."""
    proxy, jobs = world
    job = await jobs.create()
    await _kill_while_finish_is_held(proxy, jobs, job, spawn, wait_for, held_call)
    assert phase(await jobs.admin.get_job(job["pk"])) == "STARTED"
    work = tmp_path / "state" / "work" / f"job-{job['pk']}"
    assert work.is_dir(), "the work directory must be kept while the journal record is open"
    second = spawn(proxy.url)
    done = await jobs.wait(job["pk"], "FINISHED", wait_for)
    assert len(jobs.lines(job["pk"], "start")) == 1, "the handler ran again"
    result = await jobs.admin.download_output(job["pk"], "result", "bin", tmp_path / "result")
    assert result.read_bytes() == soak_output(job["pk"])
    assert sorted(o["name"] for o in done["outputs"]) == ["log", "result"], done["outputs"]
    await wait_for(lambda: not work.exists(), what="the work directory to go")
    assert list((tmp_path / "state" / "journal").glob("*.json")) == []
    assert (await jobs.admin.get_node(done["node"]))["current_job"] is None
    second.proc.send_signal(signal.SIGTERM)
    assert await second.wait(30) == 0, second.log()


async def test_killed_after_the_handler_failed_ends_with_its_error(world, spawn, tmp_path, wait_for):
    """SIGKILL with the finish of a failed job pending: ERRORED with the handler's error, not re-run."""
    proxy, jobs = world
    job = await jobs.create("fail")
    await _kill_while_finish_is_held(proxy, jobs, job, spawn, wait_for)
    spawn(proxy.url)
    done = await jobs.wait(job["pk"], "ERRORED", wait_for)
    assert done["error_reason"] == FAIL_REASON
    assert len(jobs.lines(job["pk"], "start")) == 1, "the handler ran again"


async def test_output_changed_on_disk_is_not_uploaded(world, tmp_path, wait_for):
    """A kept output whose bytes no longer match the journal: the job ends ERRORED saying so."""
    proxy, jobs = world
    job = await jobs.create()
    # A previous process that uploaded nothing yet had its handler succeed, then died.
    async with UfdlClient(proxy.url, "worker", "worker-pw-4567") as worker:
        node = await worker.create_node({"ip": "127.0.0.50", "index": 0, "cpu_mem": 2**30})
        await worker.acquire(job["pk"], node["pk"])
        await worker.start(job["pk"], node["pk"])
    journal = Journal(tmp_path / "state" / "journal")
    root = tmp_path / "state" / "work" / f"job-{job['pk']}"
    (root / "work").mkdir(parents=True)
    model = root / "work" / "model.bin"
    model.write_bytes(b"the weights")
    journal.begin(job["pk"], node["pk"], "soak_job", root)
    journal.output_uploaded(job["pk"], "model", "bin", model)
    journal.handler_succeeded(job["pk"])
    model.write_bytes(b"other bytes")
    registry = Registry.load([SOAK_HANDLERS], entry_points=False)
    daemon = Daemon(node_settings(proxy, tmp_path, "j", node_ip="127.0.0.50", state_dir=tmp_path / "state",
                                  handler_dirs=[SOAK_HANDLERS]), registry)
    try:
        done = await jobs.wait(job["pk"], "ERRORED", wait_for)
        assert done["error_reason"] == "output model/bin changed on disk since it was made; not uploaded"
        assert not root.exists()
    finally:
        assert await daemon.stop() == 0


async def test_record_of_a_job_no_longer_ours_is_closed_with_a_warning(world, tmp_path, wait_for):
    """A journal record for a job the server shows as finished elsewhere: closed, work dir removed, warned."""
    proxy, jobs = world
    job = await jobs.create()
    async with UfdlClient(proxy.url, "worker", "worker-pw-4567") as worker:
        node = await worker.create_node({"ip": "127.0.0.51", "index": 0, "cpu_mem": 2**30})
        await worker.acquire(job["pk"], node["pk"])
        await worker.start(job["pk"], node["pk"])
        await worker.finish(job["pk"], node["pk"])
    state = tmp_path / "state"
    root = state / "work" / f"job-{job['pk']}"
    root.mkdir(parents=True)
    # What a previous process leaves for a job that ran past its first write (BEGIN_WRITE_S).
    (state / "journal").mkdir()
    record = JournalRecord(pk=job["pk"], node=node["pk"], template="soak_job", job_root=str(root))
    (state / "journal" / f"job-{job['pk']}.json").write_text(json.dumps(asdict(record)))
    registry = Registry.load([SOAK_HANDLERS], entry_points=False)
    with capture_logs() as logs:
        daemon = Daemon(node_settings(proxy, tmp_path, "k", node_ip="127.0.0.51", state_dir=state,
                                      handler_dirs=[SOAK_HANDLERS]), registry)
        try:
            await daemon.wait_ready(timeout_s=30)
        finally:
            assert await daemon.stop() == 0
    warnings = [e for e in logs if e["log_level"] == "warning" and "no longer ours" in e["event"]]
    assert len(warnings) == 1 and warnings[0]["job_pk"] == job["pk"], logs
    assert list((state / "journal").glob("*.json")) == [] and not root.exists()
    assert phase(await jobs.admin.get_job(job["pk"])) == "FINISHED"
    assert json.dumps(logs, default=str).count("node restarted during job") == 0


async def test_killed_mid_handler_is_handed_back_and_run_again(world, spawn, tmp_path, wait_for):
    """SIGKILL while the handler runs: the record is closed, the job runs again and finishes once."""
    proxy, jobs = world
    job = await jobs.create(seconds=120.0)  # held until the kill: its end cannot come first
    first = spawn(proxy.url)
    await wait_for(lambda: jobs.lines(job["pk"], "start"), what="the handler to start")
    # A job's first record is written BEGIN_WRITE_S after its start (a shorter job needs none).
    await wait_for(lambda: list((tmp_path / "state" / "journal").glob("*.json")), what="the job's record")
    first.proc.send_signal(signal.SIGKILL)
    assert await first.wait(10) == -signal.SIGKILL
    assert jobs.lines(job["pk"], "end") == [], "the handler was still running when killed"
    jobs.release_gate(job["pk"])  # the second run need not wait
    spawn(proxy.url)
    done = await jobs.wait(job["pk"], "FINISHED", wait_for)
    assert len(jobs.lines(job["pk"], "start")) == 2 and len(jobs.lines(job["pk"], "end")) == 1
    assert [o["name"] for o in done["outputs"] if o["name"] == "result"] == ["result"]
    await wait_for(lambda: not list((tmp_path / "state" / "journal").glob("*.json")),
                   what="the record to close")


def test_corrupt_record_is_one_warning_and_set_aside(tmp_path):
    """A journal record that does not parse is skipped with one warning and kept aside."""
    directory = tmp_path / "journal"
    Journal(directory).begin(4, 1, "soak_job", tmp_path / "work" / "job-4")
    (directory / "job-5.json").write_text('{"pk": 5, "node"')
    with capture_logs() as logs:
        records = Journal(directory).left_behind()
    assert [r.pk for r in records] == [4] and records[0].handler == "running"
    assert len([e for e in logs if e["log_level"] == "warning"]) == 1, logs
    assert (directory / "job-5.json.corrupt").exists() and not (directory / "job-5.json").exists()


async def test_completion_waits_out_a_server_outage_at_restart(world, spawn, tmp_path, wait_for):
    """The restart's read of a journaled job meets 503s for a while: the job is still completed, once."""
    proxy, jobs = world
    job = await jobs.create()
    await _kill_while_finish_is_held(proxy, jobs, job, spawn, wait_for)
    outage = proxy.fail("GET", rf"/v1/jobs/{job['pk']}/?$", status=503, times=8)
    spawn(proxy.url)
    await jobs.wait(job["pk"], "FINISHED", wait_for)
    assert outage.hits == 8
    assert len(jobs.lines(job["pk"], "start")) == 1, "the handler ran again"
    result = await jobs.admin.download_output(job["pk"], "result", "bin", tmp_path / "result")
    assert result.read_bytes() == soak_output(job["pk"])


async def test_killed_after_an_output_was_made_runs_again_and_finishes(world, spawn, tmp_path, wait_for):
    """SIGKILL after the handler's ctx.upload, mid-handler, on a server that keeps outputs after a
    reset (the real rule, the embedded server's default): nothing reached the server before the
    handler's success, so the re-run's upload is accepted and the job FINISHES with one result."""
    proxy, jobs = world
    job = await jobs.create("early", seconds=120.0)  # held until the kill: its end cannot come first
    first = spawn(proxy.url)
    await wait_for(lambda: jobs.lines(job["pk"], "made"), what="the handler to make its output")
    await wait_for(lambda: list((tmp_path / "state" / "journal").glob("*.json")), what="the job's record")
    record = json.loads(next((tmp_path / "state" / "journal").glob("*.json")).read_text())
    assert [(o["name"], o["uploaded"]) for o in record["outputs"]] == [("result", False)], record
    assert [o for o in (await jobs.admin.get_job(job["pk"]))["outputs"] if o["name"] == "result"] == [], \
        "a staged output must not reach the server before the handler has succeeded"
    first.proc.send_signal(signal.SIGKILL)
    assert await first.wait(10) == -signal.SIGKILL
    jobs.release_gate(job["pk"])  # the second run need not wait
    second = spawn(proxy.url)
    done = await jobs.wait(job["pk"], "FINISHED", wait_for)
    assert len(jobs.lines(job["pk"], "start")) == 2 and len(jobs.lines(job["pk"], "end")) == 1
    assert [o["name"] for o in done["outputs"] if o["name"] == "result"] == ["result"], done["outputs"]
    result = await jobs.admin.download_output(job["pk"], "result", "bin", tmp_path / "result")
    assert result.read_bytes() == soak_output(job["pk"])
    second.proc.send_signal(signal.SIGTERM)
    assert await second.wait(30) == 0, second.log()


OTHER_BYTES = b"an earlier run's bytes"


async def _kept_result(world, same: bool) -> dict[str, Any]:
    """A job whose earlier run (another node) uploaded result/bin, the bytes this run makes
    (`same`) or others, then ended ERRORED and was reset: the server keeps that output,
    soft-deleted (the real rule)."""
    proxy, jobs = world
    job = await jobs.create()
    data = soak_output(job["pk"]) if same else OTHER_BYTES
    async with UfdlClient(proxy.url, "worker", "worker-pw-4567") as worker:
        node = await worker.create_node({"ip": "127.0.0.52", "index": 0, "cpu_mem": 2**30})
        await worker.acquire(job["pk"], node["pk"])
        await worker.start(job["pk"], node["pk"])
        await worker.upload_output(job["pk"], node["pk"], "result", "bin", data)
        await worker.finish(job["pk"], node["pk"], error="node restarted during job")
        await worker.reset(job["pk"], node["pk"])
        await worker.release(job["pk"], node["pk"])
    return job


@pytest.mark.parametrize("same", [True, False], ids=["same-bytes", "other-bytes"])
async def test_an_output_kept_from_an_earlier_run_is_compared_not_overwritten(world, spawn, tmp_path,
                                                                             wait_for, same):
    """The server keeps result/bin from an earlier run: the same bytes count as uploaded (FINISHED);
    other bytes end the job ERRORED with a reason that says so (never silently)."""
    proxy, jobs = world
    pk = (await _kept_result(world, same))["pk"]
    daemon = spawn(proxy.url)
    done = await jobs.wait(pk, "FINISHED" if same else "ERRORED", wait_for)
    if not same:
        assert "the server keeps a different copy from an earlier run" in done["error_reason"], done
    kept = await jobs.admin.download_output(pk, "result", "bin", tmp_path / "kept")
    assert kept.read_bytes() == (soak_output(pk) if same else OTHER_BYTES)
    daemon.proc.send_signal(signal.SIGTERM)
    assert await daemon.wait(30) == 0, daemon.log()
