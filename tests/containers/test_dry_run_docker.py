"""`ufdl-node dry-run` of a docker template, and Ctrl-C in the middle of its container."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiodocker

from tests.conftest import wait_for
from ufdl_node.containers.spec import LABEL_NODE
from ufdl_node.errors import ExitCode

from .conftest import TEST_IMAGE, unavailable

ROOT = Path(__file__).parents[2]
SLEEPY = f"""
template = "sleepy"
image = "{TEST_IMAGE}"
gpu = false
commands = ["echo container started; sleep 300"]
"""


async def _containers_of(url: str) -> list[dict[str, Any]]:
    """Every container (running or not) of the dry-run's node on the server at `url`."""
    async with aiodocker.Docker() as docker:
        found = await docker.containers.list(all=True, filters={"label": [LABEL_NODE]})
        return [c._container for c in found
                if c._container.get("Labels", {}).get(LABEL_NODE, "").endswith(f"@{url}")]


async def _remove(containers: list[dict[str, Any]]) -> None:
    async with aiodocker.Docker() as docker:
        for c in containers:
            await docker.containers.container(c["Id"]).delete(force=True)


async def test_ctrl_c_stops_and_removes_the_dry_runs_container(tmp_path: Path,
                                                                docker_problem: str | None) -> None:
    """SIGINT while a docker template's container sleeps: exit 130 with one line, no asyncio
    noise, and the container stopped and removed."""
    if docker_problem:
        unavailable(docker_problem)
    templates = tmp_path / "docker.d"
    templates.mkdir()
    (templates / "sleepy.toml").write_text(SLEEPY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ufdl_node", "dry-run", "sleepy", "--docker-template-dir", str(templates),
        "--out", str(tmp_path / "out"), cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode())

    reader = asyncio.create_task(read())
    url = ""
    try:
        await wait_for(lambda: any(" on http" in line for line in lines), timeout_s=60,
                       what="the dry-run's server")
        url = next(m.group(1) for line in lines if (m := re.search(r" on (http://\S+);", line)))

        async def running() -> bool:
            return any(c["State"] == "running" for c in await _containers_of(url))

        await wait_for(running, timeout_s=60, what="the job's container")
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 60) == ExitCode.INTERRUPTED
        await reader
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        assert err.startswith("ufdl-node: dry-run: interrupted; "), err
        assert len(err.splitlines()) == 1, err  # no "Task exception was never retrieved"
        assert await _containers_of(url) == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
        if url:
            await _remove(await _containers_of(url))
