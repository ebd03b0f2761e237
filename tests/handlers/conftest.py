"""Fixtures for the handler API tests: an in-memory JobIO and a JobContext factory."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.api import HandlerSpec, JobContext, handler
from ufdl_node.logs import get_logger

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins" / "ufdl_example_plugin"


class FakeIO:
    """A JobIO that records what a handler did, in memory."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, dict[str, Any]]] = []
        self.uploads: dict[str, tuple[str, bytes]] = {}
        self.log: list[str] = []
        self.downloads: list[tuple[str, Path]] = []

    def report_progress(self, amount: float, data: dict[str, Any]) -> None:
        self.progress.append((amount, data))

    async def upload(self, name: str, type_: str, path: Path) -> None:
        self.uploads[name] = (type_, path.read_bytes())

    async def download(self, path: str, dest: Path) -> Path:
        self.downloads.append((path, dest))
        dest.write_bytes(f"contents of {path}".encode())
        return dest

    def write_log(self, line: str) -> None:
        self.log.append(line)


@handler("noop")
async def _noop(ctx: JobContext) -> None:
    """Does nothing."""


MakeCtx = Callable[..., JobContext]


@pytest.fixture
def io() -> FakeIO:
    """A fresh in-memory JobIO."""
    return FakeIO()


@pytest.fixture
def make_ctx(tmp_path: Path, io: FakeIO) -> MakeCtx:
    """Factory: a JobContext for a job with the given inputs, parameters and template parameters."""

    def make(*, inputs: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
             template_params: dict[str, Any] | None = None, spec: HandlerSpec = _noop,
             template_name: str = "noop", cancel_grace_s: float = 10.0,
             cancel_event: asyncio.Event | None = None) -> JobContext:
        job = {"pk": 7, "template": {"pk": 1, "name": template_name, "version": 1},
               "input_values": inputs or {}, "parameter_values": params}
        template = {"pk": 1, "name": template_name, "version": 1, "parameters": template_params or {}}
        return JobContext(job=job, template=template, spec=spec, work_dir=tmp_path / "work",
                          cache_dir=tmp_path / "cache", io=io,
                          cancel_event=cancel_event or asyncio.Event(),
                          logger=get_logger("test"), cancel_grace_s=cancel_grace_s)

    return make


def _plugin_installed() -> bool:
    return any(ep.value == "ufdl_example_plugin"
               for ep in metadata.entry_points(group="ufdl_node.handlers"))


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The example plugin package pip-installed into this venv (offline), removed afterwards."""
    if _plugin_installed():
        yield
        return
    # Build from a copy, so that no build/ or egg-info lands in the source tree.
    source = tmp_path_factory.mktemp("plugin") / "ufdl_example_plugin"
    shutil.copytree(PLUGIN_DIR, source)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", str(source)], capture_output=True, text=True)
    assert done.returncode == 0, f"pip install of the example plugin failed: {done.stderr}"
    import importlib
    importlib.invalidate_caches()
    try:
        yield
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "ufdl-example-plugin"],
                       check=False, capture_output=True)
        importlib.invalidate_caches()
