"""Discovery: handler directories, entry points, broken plugins, duplicates, lookup."""

from __future__ import annotations

import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.errors import PluginError
from ufdl_node.registry import ENTRY_POINT_GROUP, Registry, describe
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

from .conftest import FakeIO, MakeCtx

HANDLER = """
from ufdl_node.api import JobContext, Needs, handler

@handler({templates}, versions={versions!r}, needs=Needs(gpu={gpu}))
async def run(ctx: JobContext) -> None:
    ctx.progress(1.0)
"""


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def _handler_file(directory: Path, name: str, *templates: str, versions: str | None = None,
                  gpu: bool = False) -> Path:
    return _write(directory, name, HANDLER.format(templates=", ".join(map(repr, templates)),
                                                  versions=versions, gpu=gpu))


def test_handlers_are_found_in_a_directory(tmp_path: Path) -> None:
    """Every handler in every *.py of a handler directory is registered, with its file as source."""
    path = _handler_file(tmp_path, "train.py", "train_a", "train_b", gpu=True)
    registry = Registry.load([tmp_path], entry_points=False)
    spec = registry.for_template("train_b", 1)
    assert spec is not None and spec.source == str(path) and spec.needs.gpu
    assert registry.problems == []


def test_a_directory_named_twice_loads_once(tmp_path: Path) -> None:
    """The same handler directory given twice does not make its handlers clash with themselves."""
    _handler_file(tmp_path, "t.py", "train")
    assert len(Registry.load([tmp_path, f"{tmp_path}/../{tmp_path.name}"], entry_points=False).specs()) == 1


def test_underscore_files_are_skipped(tmp_path: Path) -> None:
    """Files starting with '_' are helpers, not handlers."""
    _handler_file(tmp_path, "_helper.py", "hidden")
    assert Registry.load([tmp_path], entry_points=False).specs() == []


def test_missing_directory_is_fine(tmp_path: Path) -> None:
    """A handler directory that does not exist (e.g. /etc/ufdl-node/handlers.d) is skipped quietly."""
    registry = Registry.load([tmp_path / "absent"], entry_points=False)
    assert registry.specs() == [] and registry.problems == []


def test_syntax_error_is_reported_and_skipped(tmp_path: Path) -> None:
    """A plugin file with a syntax error is reported with its file, and the others still load."""
    broken = _write(tmp_path, "broken.py", "def oops(:\n")
    _handler_file(tmp_path, "good.py", "good")
    registry = Registry.load([tmp_path], entry_points=False)
    assert registry.for_template("good", 1) is not None
    (problem,) = registry.problems
    assert problem.startswith(f"handler file {broken}: SyntaxError:") and "line 1" in problem


def test_import_error_is_reported_and_skipped(tmp_path: Path) -> None:
    """A plugin file whose import fails is reported with file, error and line, and skipped."""
    broken = _write(tmp_path, "needs_torch.py", "import os\nimport no_such_module_xyz\n")
    _handler_file(tmp_path, "good.py", "good")
    registry = Registry.load([tmp_path], entry_points=False)
    assert [s.name for s in registry.specs()] == ["good"]
    assert registry.problems == [f"handler file {broken}: ModuleNotFoundError: No module named "
                                 "'no_such_module_xyz' (at needs_torch.py:2)"]


def test_duplicate_template_names_both_sources(tmp_path: Path) -> None:
    """Two handlers claiming one template is a start-up error naming both files."""
    first = _handler_file(tmp_path / "a", "one.py", "train")
    second = _handler_file(tmp_path / "b", "two.py", "train", versions=">=2")
    with pytest.raises(PluginError, match="template 'train' is claimed by two handlers") as raised:
        Registry.load([tmp_path / "a", tmp_path / "b"], entry_points=False)
    assert str(first) in str(raised.value) and str(second) in str(raised.value)


def test_disjoint_version_ranges_share_a_template(tmp_path: Path) -> None:
    """Handlers may split one template by version; lookup picks by version."""
    old = _handler_file(tmp_path, "old.py", "train", versions="<3")
    new = _handler_file(tmp_path, "new.py", "train", versions=">=3")
    registry = Registry.load([tmp_path], entry_points=False)
    assert registry.for_template("train", 2).source == str(old)  # type: ignore[union-attr]
    assert registry.for_template("train", 3).source == str(new)  # type: ignore[union-attr]
    assert registry.for_template("other", 1) is None


def test_module_hook_makes_handlers_from_settings(tmp_path: Path) -> None:
    """A module-level handlers(settings) is called with the settings, and its problems reported."""
    _write(tmp_path, "hooked.py", """
        from ufdl_node.api import JobContext, PluginError, handler

        async def _run(ctx: JobContext) -> None:
            pass

        def handlers(settings):
            for name in settings["names"]:
                yield handler(name)(_run)
            yield PluginError("template 'bad': no command")
        """)
    registry = Registry.load([tmp_path], entry_points=False, settings={"names": ["x", "y"]})
    assert registry.templates() == ["x", "y"]
    assert registry.problems == [f"handler file {tmp_path / 'hooked.py'}: template 'bad': no command"]


def test_describe_lists_every_handler(tmp_path: Path) -> None:
    """describe() gives one row per handler: name, templates, versions, source, needs."""
    path = _handler_file(tmp_path, "t.py", "train", versions=">=1,<3", gpu=True)
    rows = describe(Registry.load([tmp_path], entry_points=False))
    assert rows == [{"name": "train", "templates": ["train"], "versions": ">=1,<3",
                     "source": str(path), "needs": "gpu"}]


def test_shipped_handlers_load() -> None:
    """The shipped handler directory gives demo_train and no problems."""
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False)
    assert registry.problems == []
    assert registry.for_template("demo_train", 1) is not None


async def test_entry_point_plugin_is_found_and_runs(example_plugin: Path, make_ctx: MakeCtx,
                                                    io: FakeIO) -> None:
    """The pip-installed example plugin's handlers are found through the entry-point group."""
    registry = Registry.load([], entry_points=True)
    echo = registry.for_template("ufdl_example_echo", 1)
    shout = registry.for_template("ufdl_example_shout", 1)
    assert echo is not None and shout is not None, registry.problems
    assert echo.source == "entry point example = ufdl_example_plugin"
    assert shout.source == "entry point example_shout = ufdl_example_plugin.shout:HANDLERS"
    await echo(make_ctx(spec=echo, params={"message": {"value": "hi", "type": "String"}}))
    assert io.uploads["echo"] == ("String", b"hi")


def test_broken_entry_point_is_reported_and_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry point that does not import is reported with its name, target and error."""
    broken = metadata.EntryPoint(name="broken", value="no_such_plugin_xyz:handlers", group=ENTRY_POINT_GROUP)

    def entry_points(**kwargs: Any) -> list[metadata.EntryPoint]:
        assert kwargs == {"group": ENTRY_POINT_GROUP}
        return [broken]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    registry = Registry.load([], entry_points=True)
    assert registry.specs() == []
    assert registry.problems == ["handler entry point broken = no_such_plugin_xyz:handlers: "
                                 "ModuleNotFoundError: No module named 'no_such_plugin_xyz'"]
