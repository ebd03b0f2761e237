"""JobContext: progress, uploads, downloads, and subprocesses with ctx.run()."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import psutil
import pytest
from aiohttp import web

from ufdl_node.api import JobFailed
from ufdl_node.transport import Transport

from .conftest import FakeIO, MakeCtx

PY = sys.executable


def _gone(pid: int) -> bool:
    """The process no longer runs (gone, or a zombie waiting for its parent to reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _wait_for_pids(io: FakeIO, count: int) -> list[int]:
    """The pids a command printed as 'pid N' lines to the job log."""
    for _ in range(500):
        pids = [int(line.split()[1]) for line in io.log if line.startswith("pid ")]
        if len(pids) >= count:
            return pids
        await asyncio.sleep(0.01)
    raise AssertionError(f"the command did not print {count} pids: {io.log}")


def test_progress_is_clamped_and_passed_on(make_ctx: MakeCtx, io: FakeIO) -> None:
    """progress() clamps to [0, 1] and hands the data to the JobIO."""
    ctx = make_ctx()
    ctx.progress(0.5, loss=0.3)
    ctx.progress(1.7)
    ctx.progress(-1)
    assert io.progress == [(0.5, {"loss": 0.3}), (1.0, {}), (0.0, {})]


def test_progress_sends_non_finite_numbers_as_null(make_ctx: MakeCtx, io: FakeIO) -> None:
    """A NaN or infinite value (a diverging loss) is sent as null: servers refuse NaN in JSON."""
    ctx = make_ctx()
    ctx.progress(0.5, loss=float("nan"), grad=float("inf"), curve=[1.0, float("-inf")], epoch=3)
    assert io.progress == [(0.5, {"loss": None, "grad": None, "curve": [1.0, None], "epoch": 3})]


async def test_upload_bytes_goes_through_a_file(make_ctx: MakeCtx, io: FakeIO) -> None:
    """Bytes are written to a file in the work directory and uploaded from there."""
    ctx = make_ctx()
    await ctx.upload("model", "Blob", b"\x00\x01")
    assert io.uploads == {"model": ("Blob", b"\x00\x01")}
    assert (ctx.work_dir / ".outputs" / "model").read_bytes() == b"\x00\x01"


async def test_upload_relative_path_is_in_work_dir(make_ctx: MakeCtx, io: FakeIO) -> None:
    """A relative path is taken from the work directory."""
    ctx = make_ctx()
    (ctx.work_dir / "m.txt").write_text("w")
    await ctx.upload("model", "String", "m.txt")
    assert io.uploads["model"] == ("String", b"w")


async def test_upload_of_a_missing_file_fails(make_ctx: MakeCtx) -> None:
    """Uploading a file that does not exist fails the job, naming the output."""
    with pytest.raises(JobFailed, match=r"output 'model': .*nope\.bin does not exist"):
        await make_ctx().upload("model", "Blob", "nope.bin")


async def test_download_lands_in_work_dir(make_ctx: MakeCtx, io: FakeIO, aiohttp_server: Any) -> None:
    """download() goes through the IO's server_io (a loopback server here), resolves the
    destination in the work directory and creates its folder."""
    async def obtain(_: web.Request) -> web.Response:
        return web.json_response({"access": "a-token", "refresh": "r-token"})

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=f"contents of {request.path}".encode())

    app = web.Application()
    app.router.add_post("/v1/auth/obtain", obtain)
    app.router.add_get("/v1/datasets/3/files/a.txt", file)
    server = await aiohttp_server(app)
    async with Transport(str(server.make_url("")).rstrip("/"), "u", "pw") as transport:
        io.server_io = transport.node_io  # type: ignore[attr-defined]
        ctx = make_ctx()
        path = await ctx.download("/v1/datasets/3/files/a.txt", "data/a.txt")
    assert path == ctx.work_dir / "data" / "a.txt"
    assert path.read_text() == "contents of /v1/datasets/3/files/a.txt"


def test_log_is_mirrored_to_job_log(make_ctx: MakeCtx, io: FakeIO) -> None:
    """ctx.log lines also go to the job log."""
    make_ctx().log.info("epoch done", epoch=3)
    assert io.log[-1] == "INFO epoch done epoch=3"


async def test_run_streams_output_to_job_log(make_ctx: MakeCtx, io: FakeIO) -> None:
    """stdout and stderr lines reach the job log; the exit status is returned."""
    rc = await make_ctx().run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert rc == 0 and "out" in io.log and "err" in io.log


async def test_run_hides_the_nodes_credentials(make_ctx: MakeCtx, io: FakeIO,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's password is not in a command's environment; env= values are."""
    monkeypatch.setenv("UFDL_NODE_PASSWORD", "s3cret-pw")
    await make_ctx().run("echo \"pw=$UFDL_NODE_PASSWORD x=$X\"", env={"X": "1"})
    assert "pw= x=1" in io.log


async def test_run_string_uses_the_shell_in_work_dir(make_ctx: MakeCtx, io: FakeIO) -> None:
    """A string command runs through /bin/sh in the work directory."""
    ctx = make_ctx()
    await ctx.run("pwd && echo a | tr a b")
    assert str(ctx.work_dir) in io.log and "b" in io.log


async def test_run_parses_percent_progress(make_ctx: MakeCtx, io: FakeIO) -> None:
    """A 'percent' group gives progress; other named groups become progress data."""
    script = "for i in (25, 50, 100): print(f'at {i}% loss=0.{100 - i}', flush=True)"
    await make_ctx().run([PY, "-c", script],
                         progress_regex=r"at (?P<percent>\d+)% loss=(?P<loss>[\d.]+)")
    assert io.progress == [(0.25, {"loss": 0.75}), (0.5, {"loss": 0.5}), (1.0, {"loss": 0.0})]


async def test_run_parses_step_total_progress(make_ctx: MakeCtx, io: FakeIO) -> None:
    """'step' and 'total' groups give step / total."""
    await make_ctx().run("echo 'epoch 1/4'; echo 'epoch 3/4'",
                         progress_regex=r"epoch (?P<step>\d+)/(?P<total>\d+)")
    assert [p for p, _ in io.progress] == [0.25, 0.75]


async def test_run_parses_carriage_return_progress_bars(make_ctx: MakeCtx, io: FakeIO) -> None:
    """Progress-bar updates ending in \\r are parsed; only the final state is logged."""
    await make_ctx().run(["printf", "p=0.1\\rp=0.5\\rp=0.9\\ndone\\n"],
                         progress_regex=r"p=(?P<progress>[\d.]+)")
    assert [p for p, _ in io.progress] == [0.1, 0.5, 0.9]
    assert io.log[-3:-1] == ["p=0.9", "done"]


async def test_run_nonzero_exit_fails_with_last_stderr_line(make_ctx: MakeCtx) -> None:
    """A failing command fails the job with its status and last stderr line."""
    script = ("import sys; print('warming up', file=sys.stderr); "
              "print('CUDA out of memory', file=sys.stderr); sys.exit(3)")
    with pytest.raises(JobFailed, match=r"exited with 3: CUDA out of memory$"):
        await make_ctx().run([PY, "-c", script])


async def test_run_without_check_returns_status(make_ctx: MakeCtx) -> None:
    """check=False returns a nonzero status instead of failing."""
    assert await make_ctx().run("exit 4", check=False) == 4


async def test_run_missing_program_fails(make_ctx: MakeCtx) -> None:
    """A program that does not exist fails the job, naming it."""
    with pytest.raises(JobFailed, match=r"no-such-program-xyz not found"):
        await make_ctx().run(["no-such-program-xyz"])


async def test_run_timeout_kills_and_fails(make_ctx: MakeCtx, io: FakeIO) -> None:
    """A command running past timeout_s is killed and fails the job."""
    ctx = make_ctx(cancel_grace_s=2)
    task = asyncio.ensure_future(ctx.run("echo pid $$; exec sleep 100", timeout_s=0.5))
    (pid,) = await _wait_for_pids(io, 1)
    with pytest.raises(JobFailed, match=r"timed out after 0\.5 s"):
        await task
    assert _gone(pid)


async def test_cancel_event_kills_the_process_group(make_ctx: MakeCtx, io: FakeIO) -> None:
    """Setting the cancel event kills the command and its child, then raises CancelledError."""
    ctx = make_ctx(cancel_grace_s=60)
    task = asyncio.ensure_future(ctx.run("sleep 100 & echo pid $!; echo pid $$; wait"))
    pids = await _wait_for_pids(io, 2)
    started = time.monotonic()
    ctx.cancel_event.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # SIGTERM was enough: far below the 60 s grace period, with slack for a loaded machine
    assert time.monotonic() - started < 20
    assert all(_gone(pid) for pid in pids)


async def test_task_cancel_kills_the_process_group(make_ctx: MakeCtx, io: FakeIO) -> None:
    """Cancelling the handler's task kills the command and its child."""
    ctx = make_ctx(cancel_grace_s=5)
    task = asyncio.ensure_future(ctx.run(["sh", "-c", "sleep 100 & echo pid $!; echo pid $$; wait"]))
    pids = await _wait_for_pids(io, 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(_gone(pid) for pid in pids)


async def test_cancel_sigkills_after_grace_when_sigterm_is_ignored(make_ctx: MakeCtx, io: FakeIO) -> None:
    """A group that ignores SIGTERM gets SIGKILL once cancel_grace_s has passed."""
    ctx = make_ctx(cancel_grace_s=0.5)
    task = asyncio.ensure_future(ctx.run("trap '' TERM; sleep 100 & echo pid $!; echo pid $$; wait"))
    pids = await _wait_for_pids(io, 2)
    started = time.monotonic()
    ctx.cancel_event.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # at least the grace period; the group would live 100 s, the rest is slack for load
    assert 0.5 <= time.monotonic() - started < 20
    assert all(_gone(pid) for pid in pids)


async def test_leftover_background_process_is_killed_on_exit(make_ctx: MakeCtx, io: FakeIO) -> None:
    """What a command leaves running in its group is killed when it exits."""
    started = time.monotonic()
    await make_ctx().run("sleep 100 & echo pid $!")
    (pid,) = await _wait_for_pids(io, 1)
    # run() did not wait for the 100 s sleep; the bound is slack for a loaded machine
    assert time.monotonic() - started < 20 and _gone(pid)
