"""Containers on the real dockerd: output, exit codes, stop, mounts, and finding them again by label."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ufdl_node.containers.engine import ContainerEngine, ContainerRun, ContainerStartError
from ufdl_node.containers.spec import ContainerSpec, LogCursor, LogLine, job_labels

from .conftest import TEST_NODE

MakeSpec = Callable[..., ContainerSpec]
COUNT_TO_60 = 'i=0; while [ $i -lt 60 ]; do echo "line $i"; i=$((i+1)); sleep 0.05; done'


async def _all_lines(run: ContainerRun, after: LogCursor | None = None) -> list[LogLine]:
    return [line async for line in run.lines(after=after)]


async def test_output_lines_arrive_in_order_and_exit_zero(
        engine: ContainerEngine, make_spec: MakeSpec) -> None:
    """A script's lines come out in order with timestamps, and its exit code is 0."""
    run = await engine.start(make_spec("for i in 1 2 3 4 5; do echo line $i; done"))

    lines = await _all_lines(run)

    assert [line.text for line in lines] == [f"line {i}" for i in range(1, 6)]
    assert all(line.timestamp.endswith("Z") for line in lines)
    assert await run.wait() == 0


async def test_stderr_lines_are_streamed_too(engine: ContainerEngine, make_spec: MakeSpec) -> None:
    """Lines written to stderr reach the stream beside those of stdout."""
    run = await engine.start(make_spec("echo to-out; echo to-err >&2"))

    assert {line.text for line in await _all_lines(run)} == {"to-out", "to-err"}


async def test_failing_script_gives_its_exit_code_and_last_lines(
        engine: ContainerEngine, make_spec: MakeSpec) -> None:
    """Exit 3 comes back as 3, and last_lines gives the final lines for the failure message."""
    run = await engine.start(make_spec("echo one; echo two; echo three; exit 3"))

    assert await run.wait() == 3
    assert await run.last_lines(2) == ["two", "three"]


async def test_argument_list_command_is_not_run_by_a_shell(
        engine: ContainerEngine, make_spec: MakeSpec) -> None:
    """A command given as a list reaches the program as its arguments, unexpanded."""
    run = await engine.start(make_spec(["echo", "$HOME", "a;b"]))

    assert [line.text for line in await _all_lines(run)] == ["$HOME a;b"]


async def test_stop_ends_a_container_ignoring_sigterm_within_grace(
        engine: ContainerEngine, make_spec: MakeSpec) -> None:
    """stop() kills a container that ignores SIGTERM once the grace is over; remove() deletes it."""
    spec = make_spec("trap '' TERM; echo ready; while true; do sleep 1; done")
    run = await engine.start(spec)
    lines = run.lines()
    assert (await anext(lines)).text == "ready"
    await lines.aclose()
    grace_s = 1.0

    await asyncio.wait_for(run.stop(grace_s), timeout=grace_s + 1)

    assert not await run.running()
    assert await run.wait() == 137  # SIGKILL
    await run.remove()
    assert await engine.find(job_labels(TEST_NODE, job_pk=spec.job_pk)) == []


async def test_stop_of_a_sleeping_container_is_prompt(engine: ContainerEngine, make_spec: MakeSpec) -> None:
    """A container whose process honours SIGTERM stops before the grace period runs out."""
    run = await engine.start(make_spec("echo ready; exec sleep 300"))
    lines = run.lines()
    assert (await anext(lines)).text == "ready"
    await lines.aclose()

    await asyncio.wait_for(run.stop(30), timeout=10)

    assert await run.wait() == 143  # SIGTERM, forwarded by the container's init


async def test_found_again_by_label_the_stream_resumes_without_loss_or_repeat(
        engine: ContainerEngine, make_spec: MakeSpec) -> None:
    """After the daemon lets go mid-run, a new engine finds the container and no line is lost or repeated."""
    spec = make_spec(COUNT_TO_60)
    run = await engine.start(spec)
    first: list[LogLine] = []
    async for line in run.lines():
        first.append(line)
        if len(first) == 10:
            break
    cursor = LogCursor.after(first)
    assert cursor is not None and run.cursor == cursor
    # "The daemon is away": the container keeps writing; an observer's own stream waits for more.
    async for line in run.lines(after=cursor):
        if line.text == "line 20":
            break
    del run

    async with ContainerEngine() as restarted:
        found = await restarted.find(job_labels(TEST_NODE, slot="0", job_pk=spec.job_pk))
        assert len(found) == 1 and found[0].job_pk == spec.job_pk
        rest = await _all_lines(found[0], after=cursor)
        assert await found[0].wait() == 0

    assert [line.text for line in first + rest] == [f"line {i}" for i in range(60)]


async def test_find_lists_exited_containers_of_the_node(engine: ContainerEngine, make_spec: MakeSpec) -> None:
    """find() by the node label returns exited containers as well, with their labels."""
    spec = make_spec("exit 0")
    run = await engine.start(spec)
    await run.wait()

    found = await engine.find(job_labels(TEST_NODE))

    assert run.id in {f.id for f in found}
    assert next(f for f in found if f.id == run.id).job_pk == spec.job_pk


async def test_work_dir_is_mounted_and_written_as_the_configured_user(
        engine: ContainerEngine, make_spec: MakeSpec, tmp_path: Path) -> None:
    """The container writes into /workspace; the host sees the file, owned by the configured uid:gid."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    run = await engine.start(make_spec("id -u; echo trained > /workspace/model.bin; pwd",
                                       work_dir=work_dir, user="4321:4322"))

    assert [line.text for line in await _all_lines(run)] == ["4321", "/workspace"]
    assert await run.wait() == 0
    written = work_dir / "model.bin"
    assert written.read_text() == "trained\n"
    assert (written.stat().st_uid, written.stat().st_gid) == (4321, 4322)


async def test_cache_dir_and_extra_binds_are_mounted(
        engine: ContainerEngine, make_spec: MakeSpec, tmp_path: Path) -> None:
    """cache_dir appears at /.cache and an extra read-only bind at its container path."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("data\n")
    run = await engine.start(make_spec(
        "touch /.cache/hit && cat /data/x.txt && (touch /data/y 2>/dev/null || echo read-only)",
        cache_dir=tmp_path / "cache", binds=[f"{tmp_path / 'data'}:/data:ro"], user="0:0"))

    assert [line.text for line in await _all_lines(run)] == ["data", "read-only"]
    assert (tmp_path / "cache" / "hit").exists()


async def test_environment_reaches_the_container(engine: ContainerEngine, make_spec: MakeSpec) -> None:
    """Variables of the spec's env are set in the container."""
    run = await engine.start(make_spec('echo "$EPOCHS/$NAME"', env={"EPOCHS": "7", "NAME": "a b"}))

    assert [line.text for line in await _all_lines(run)] == ["7/a b"]


async def test_default_user_is_not_root(engine: ContainerEngine, make_spec: MakeSpec, tmp_path: Path) -> None:
    """Without a configured user the container does not run as root, and can write its work dir."""
    work_dir = tmp_path / "work"
    run = await engine.start(make_spec("id -u; touch /workspace/ok", work_dir=work_dir))

    [uid] = [line.text for line in await _all_lines(run)]
    assert uid == str(os.getuid() or 65534)
    assert await run.wait() == 0 and (work_dir / "ok").exists()


async def test_probe_reports_the_running_dockerd(engine: ContainerEngine) -> None:
    """A reachable dockerd gives its version, API version and runtimes (runc at least)."""
    facts = await engine.probe()

    assert facts.reachable and facts.reason is None
    assert facts.server_version and facts.api_version and "runc" in facts.runtimes
    assert facts.summary().startswith(f"Docker {facts.server_version} (API {facts.api_version}), ")


async def test_start_of_an_absent_image_is_a_start_error_leaving_nothing(
        engine: ContainerEngine, make_spec: MakeSpec) -> None:
    """An image not on the node: ContainerStartError in one line naming the job; no container remains."""
    spec = make_spec("true", image="ufdl-node-test/absent:1")

    expected = f"job {spec.job_pk} from ufdl-node-test/absent:1"
    with pytest.raises(ContainerStartError, match=expected) as caught:
        await engine.start(spec)

    assert "\n" not in str(caught.value)
    assert await engine.find(job_labels(TEST_NODE, job_pk=spec.job_pk)) == []
