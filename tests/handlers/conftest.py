"""Fixtures for the handler API tests: an in-memory JobIO and a JobContext factory."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef,unused-ignore]

from ufdl_node.api import HandlerSpec, JobContext, handler
from ufdl_node.logs import get_logger

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins" / "ufdl_example_plugin"


class FakeIO:
    """A JobIO that records what a handler did, in memory. It has no ``server_io`` (the
    handler's way to the server) unless a test gives it one."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, dict[str, Any]]] = []
        self.uploads: dict[str, tuple[str, bytes]] = {}
        self.log: list[str] = []

    def report_progress(self, amount: float, data: dict[str, Any]) -> None:
        self.progress.append((amount, data))

    async def upload(self, name: str, type_: str, path: Path) -> None:
        self.uploads[name] = (type_, path.read_bytes())

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


def _can_build_wheels() -> bool:
    """Whether pip can build the plugin offline without build isolation."""
    try:
        import setuptools
    except ImportError:
        return False
    has_bdist_wheel = importlib.util.find_spec("wheel") is not None or \
        tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= (70, 1)
    return has_bdist_wheel


def _install_by_hand(source: Path, target: Path) -> None:
    """Install the plugin as a wheel would: its package plus a .dist-info with the entry points."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    shutil.copytree(source / "src" / "ufdl_example_plugin", target / "ufdl_example_plugin")
    info = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    lines = []
    for group, points in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {value}" for name, value in points.items())
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example plugin package installed into a directory on sys.path (offline).

    With pip when it can build the package here (setuptools with bdist_wheel),
    by hand otherwise; either way into a temporary target, not the shared venv,
    so that other tests loading entry points do not see it.
    """
    target = tmp_path_factory.mktemp("site")
    if _can_build_wheels():
        # Build from a copy, so that no build/ or egg-info lands in the source tree.
        source = tmp_path_factory.mktemp("plugin") / "ufdl_example_plugin"
        shutil.copytree(PLUGIN_DIR, source)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                               "--no-index", "-q", "--target", str(target), str(source)],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"pip install of the example plugin failed: {done.stderr}"
    else:
        _install_by_hand(PLUGIN_DIR, target)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m.split(".")[0] == "ufdl_example_plugin"]:
            del sys.modules[name]
        importlib.invalidate_caches()
