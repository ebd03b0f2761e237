"""The end of a short job costs only the calls a guarantee needs: no empty log upload,
and its work directory is gone once the job is finished."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from ufdl_node.registry import Registry

from ..faults import FaultProxy
from .conftest import Daemon, import_template, node_settings, phase

NOOP_HANDLER = '''
from ufdl_node.api import TemplateDescription, handler

@handler("noop_job", description=TemplateDescription(job_type="Export", description="does nothing"))
async def run(ctx):
    if any(ctx.work_dir.iterdir()):
        raise RuntimeError("the work directory is not fresh")
    (ctx.work_dir / "scratch.bin").write_bytes(b"x" * 4096)
'''


def _job_dirs(work_dir: Path) -> list[Path]:
    """What is in the node's work_dir but the empty directory made ahead for the next job."""
    return [p for p in work_dir.iterdir() if not p.name.startswith(".spare-")]


@pytest.fixture
async def noop_daemon(server, admin, tmp_path: Path) -> AsyncIterator[tuple[FaultProxy, Daemon, int]]:
    """A daemon serving only `noop_job` (a handler that logs nothing) behind a proxy."""
    handlers = tmp_path / "noop-handlers"
    handlers.mkdir()
    (handlers / "noop.py").write_text(NOOP_HANDLER)
    registry = Registry.load([handlers], entry_points=False)
    template = await import_template(admin, registry, "noop_job")
    async with FaultProxy(server.url) as proxy:
        settings = node_settings(server, tmp_path, "n", server_url=proxy.url, handler_dirs=[handlers])
        daemon = Daemon(settings, registry)
        try:
            yield proxy, daemon, template
        finally:
            await daemon.stop()


async def _run_one(admin, noop_daemon: tuple[FaultProxy, Daemon, int]) -> dict:
    """Create one `noop_job` and wait until it is FINISHED."""
    template = noop_daemon[2]
    job = await admin.create_job(template, {}, {}, description="noop")

    async def finished() -> dict | None:
        got = await admin.get_job(job["pk"])
        return got if phase(got) == "FINISHED" else None

    return await wait_for(finished, what=f"job {job['pk']} to finish")


async def test_an_empty_job_log_is_not_uploaded(admin, noop_daemon):
    """A job whose handler logs nothing finishes without a log output and without an upload call."""
    proxy = noop_daemon[0]
    done = await _run_one(admin, noop_daemon)
    assert done["outputs"] == []
    assert proxy.count("POST", r"/outputs/") == 0


async def test_the_work_directory_is_removed_after_the_job(admin, noop_daemon):
    """Once a job is finished its work directory (and the file the handler wrote) is removed."""
    daemon = noop_daemon[1]
    await _run_one(admin, noop_daemon)
    work_dir = daemon.supervisor.settings.work_dir
    assert work_dir is not None and work_dir.is_dir()
    # Renamed aside just after finish, then removed in a thread: wait for it, not a fixed time.
    await wait_for(lambda: not _job_dirs(work_dir), what="the work directory to go")


async def test_a_directory_left_half_removed_is_removed_by_the_first_job(admin, noop_daemon):
    """A job directory a stopped process had renamed aside for removal, and the spare directory
    it had made, are gone after the next job."""
    work_dir = noop_daemon[1].supervisor.settings.work_dir
    assert work_dir is not None
    leftover = work_dir / ".removing-job-99-1" / "work"
    leftover.mkdir(parents=True)
    (leftover / "model.bin").write_bytes(b"x" * 4096)
    old_spare = work_dir / ".spare-0-1" / "work"  # pid 1 is never this test's process
    old_spare.mkdir(parents=True)
    await _run_one(admin, noop_daemon)
    await wait_for(lambda: not _job_dirs(work_dir) and not old_spare.parent.exists(),
                   what="the leftovers to go")


async def test_the_next_job_runs_in_a_fresh_directory_made_ahead(admin, noop_daemon):
    """After a job an empty directory is made for the next, which runs in it (and finds it empty)."""
    work_dir = noop_daemon[1].supervisor.settings.work_dir
    assert work_dir is not None
    await _run_one(admin, noop_daemon)
    spare = work_dir / f".spare-0-{os.getpid()}"  # the daemon runs in this process
    await wait_for(lambda: (spare / "work").is_dir(), what="the next job's directory")
    assert not any((spare / "work").iterdir())
    done = await _run_one(admin, noop_daemon)  # the handler fails in a directory that is not empty
    assert done["error_reason"] is None
    await wait_for(lambda: not _job_dirs(work_dir) and (spare / "work").is_dir(),
                   what="the job's directory to go and a new one to be made")
