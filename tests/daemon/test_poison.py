"""Poison jobs: a job that kills its daemon ends ERRORED after max_crash_restarts, not re-run
forever; and a handler that blocks the event loop is named in a warning."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.client import UfdlClient
from ufdl_node.daemon.crashes import poison_reason
from ufdl_node.daemon.logoutput import log_lines
from ufdl_node.daemon.reporting import LOG_OUTPUT
from ufdl_node.daemon.startlog import replay
from ufdl_node.daemon.state import START_LOG
from ufdl_node.registry import Registry

from .conftest import ADMIN_PW, SOAK_HANDLERS, DaemonProcess, SoakJobs, import_template, write_config

pytestmark = pytest.mark.slow



def start_counts(tmp_path: Path) -> dict[int, int]:
    """The counts the daemon's start log holds (its lines replayed as the daemon does)."""
    counts, bad = replay((tmp_path / "state" / START_LOG).read_text())
    assert bad == 0
    return counts


@pytest.fixture
async def soak(server, tmp_path) -> AsyncIterator[SoakJobs]:
    registry = Registry.load([SOAK_HANDLERS], entry_points=False)
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    async with UfdlClient(server.url, "admin", ADMIN_PW, retry_max_attempts=2) as admin:
        yield SoakJobs(admin, await import_template(admin, registry, "soak_job"), record_dir)


@pytest.fixture
def daemon(spawn: Callable[..., DaemonProcess], server, tmp_path: Path) -> Callable[..., DaemonProcess]:
    """A daemon process of the soak handler (the same state directory each time); keywords are settings."""
    def start(**settings: Any) -> DaemonProcess:
        return spawn(write_config(tmp_path / "node.toml", server.url, tmp_path,
                                  handler_dirs=[str(SOAK_HANDLERS)], **settings))

    return start


@pytest.mark.parametrize("seconds", [0.0, 1.0], ids=["unjournaled", "journaled"])
async def test_job_that_kills_its_daemon_ends_errored_after_the_limit(soak, daemon, tmp_path, wait_for,
                                                                      seconds):
    """A handler that SIGKILLs its daemon (at once: before its journal record; or later) runs
    1 + max_crash_restarts times, then ends ERRORED with the reason; the node serves on."""
    job = await soak.create("die", seconds)
    for death in range(1, 4):  # the default max_crash_restarts is 2: three runs, three deaths
        proc = daemon()
        assert await proc.wait(40) == -signal.SIGKILL, proc.log()
        assert soak.starts(job["pk"]) == death
        assert start_counts(tmp_path)[job["pk"]] == death
    survivor = daemon()
    done = await soak.wait(job["pk"], "ERRORED", wait_for)
    assert done["error_reason"] == poison_reason(3) == \
        "the node died 3 times while running this job; not running it again"
    assert soak.starts(job["pk"]) == 3, "the poison job ran again"
    log = await soak.admin.download_output(job["pk"], *LOG_OUTPUT, tmp_path / "job.log")
    assert poison_reason(3) in "\n".join(log_lines(log.read_bytes()))
    other = await soak.create("ok")
    await soak.wait(other["pk"], "FINISHED", wait_for)
    assert soak.starts(job["pk"]) == 3
    # (the finish lands before the slot forgets the job's start)
    await wait_for(lambda: start_counts(tmp_path) == {}, what="both jobs' starts to be forgotten")
    assert survivor.proc.poll() is None
    survivor.proc.send_signal(signal.SIGTERM)
    assert await survivor.wait(30) == 0, survivor.log()


async def test_a_job_ended_normally_is_not_counted(soak, daemon, tmp_path, wait_for):
    """Finished and drained jobs forget their starts: a SIGTERM hand-back is no death."""
    proc = daemon(grace_period_s=1.0)
    long = await soak.create("ok", 30.0)
    await wait_for(lambda: soak.starts(long["pk"]) == 1, what="the long job to start")
    proc.proc.send_signal(signal.SIGTERM)  # drains: grace_period_s is 1 s, the job 30 s: handed back
    assert await proc.wait(40) == 0, proc.log()
    assert start_counts(tmp_path) == {}


async def test_a_blocked_event_loop_is_a_warning_naming_the_handler(soak, daemon, wait_for):
    """A handler's synchronous 2 s sleep: a warning while it blocks, naming the handler; the job ends."""
    proc = daemon()
    job = await soak.create("block", 2.0)
    await soak.wait(job["pk"], "FINISHED", wait_for)
    lines = [json.loads(x) for x in proc.log().splitlines() if x.startswith("{")]
    blocked = [x for x in lines if x.get("event") == "the event loop is blocked"]
    assert blocked and blocked[0]["handler"] == "soak_job" and blocked[0]["level"] == "warning", proc.log()
    after = [x for x in lines if x.get("event") == "the event loop was blocked"]
    assert after and after[0]["handler"] == "soak_job" and after[0]["blocked_s"] >= 1.5, proc.log()
    assert after[0]["jobs"] == [job["pk"]]
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(30) == 0, proc.log()
