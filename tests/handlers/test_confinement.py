"""What a job's data (parameters, dataset file names) may not reach: other files, the shell, secrets."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ufdl_node.api import JobFailed, Parameter
from ufdl_node.api.values import resolve_parameters
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

from .conftest import FakeIO, MakeCtx


def _registry(tmp_path: Path, templates: dict[str, Any]) -> Registry:
    return Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False,
                         settings=SimpleNamespace(command_templates=templates))


def test_placeholder_inside_quotes_is_refused_at_load(tmp_path: Path) -> None:
    """'{param.x}' or "{param.x}" in a command line is a load problem: quoting would not protect it."""
    registry = _registry(tmp_path, {
        "single": {"command": "echo '{param.name}' > out.txt"},
        "double": {"command": 'echo "{param.name}"'},
        "fine": {"command": "echo {param.name} > out.txt"},
    })
    assert registry.for_template("fine", 1) is not None
    assert registry.for_template("single", 1) is None and registry.for_template("double", 1) is None
    assert len(registry.problems) == 2
    assert all("stands inside quotes" in p for p in registry.problems), registry.problems


def test_one_bad_command_template_keeps_the_others(tmp_path: Path) -> None:
    """A template with wrongly typed keys is one problem; the good templates still load."""
    registry = _registry(tmp_path, {
        "bad_versions": {"command": "true", "versions": 2},
        "bad_env": {"command": "true", "env": ["A=1"]},
        "bad_timeout": {"command": "true", "timeout_s": "1h"},
        "good": {"command": "true"},
    })
    assert registry.for_template("good", 1) is not None
    assert len(registry.problems) == 3, registry.problems


async def test_output_path_from_a_parameter_cannot_leave_the_work_dir(tmp_path: Path, make_ctx: MakeCtx,
                                                                      io: FakeIO) -> None:
    """An output path made from a job's parameter (../../etc/passwd) fails the job; nothing is uploaded."""
    registry = _registry(tmp_path, {"leak": {
        "command": "true", "parameters": {"run": {"types": ["String"], "default": "x"}},
        "outputs": [{"name": "model", "type": "Blob", "path": "{param.run}"}]}})
    spec = registry.for_template("leak", 1)
    assert spec is not None and spec.description is not None
    for path in ("../../../../../../etc/passwd", "/etc/passwd"):
        ctx = make_ctx(spec=spec, template_name="leak",
                       template_params=spec.description.template_parameters(),
                       params={"run": {"value": path, "type": "String"}})
        with pytest.raises(JobFailed, match="outside the job's work and cache directories"):
            await spec(ctx)
    assert io.uploads == {}


async def test_download_and_upload_stay_inside_the_job(make_ctx: MakeCtx, io: FakeIO) -> None:
    """ctx.download to ../x and ctx.upload of /etc/hostname fail; relative paths inside work."""
    ctx = make_ctx()
    with pytest.raises(JobFailed, match="outside"):
        await ctx.download("/v1/datasets/1/files/a", "../../escaped.txt")
    with pytest.raises(JobFailed, match="outside"):
        await ctx.upload("host", "text", "/etc/hostname")
    (ctx.work_dir / "sub").mkdir()
    (ctx.work_dir / "sub" / "ok.txt").write_text("fine")
    await ctx.upload("ok", "text", "sub/ok.txt")
    await ctx.upload("..", "text", b"bytes under an odd name")
    assert sorted(io.uploads) == ["..", "ok"]


async def test_subprocesses_do_not_get_the_daemons_credentials(make_ctx: MakeCtx, io: FakeIO,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """UFDL_NODE_PASSWORD, systemd's CREDENTIALS_DIRECTORY and NOTIFY_SOCKET stay with the daemon."""
    monkeypatch.setenv("UFDL_NODE_PASSWORD", "secret-pw-1")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/ufdl-node.service")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("HARMLESS", "kept")
    ctx = make_ctx()
    await ctx.run(["sh", "-c", "env > env.txt"])
    seen = (ctx.work_dir / "env.txt").read_text()
    assert "HARMLESS=kept" in seen
    for name in ("UFDL_NODE_PASSWORD", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET"):
        assert name not in seen
    assert "secret-pw-1" not in seen
    assert os.environ["HARMLESS"] == "kept"


def test_a_plugin_that_exits_at_import_is_a_problem_not_the_end(tmp_path: Path) -> None:
    """A script with a top-level parse_args() (SystemExit at import) is skipped with one line."""
    (tmp_path / "script.py").write_text("import sys\nsys.exit(2)\n")
    (tmp_path / "fine.py").write_text(
        "from ufdl_node.api import handler\n\n\n@handler('fine_job')\nasync def run(ctx):\n    pass\n")
    registry = Registry.load([tmp_path], entry_points=False)
    assert registry.for_template("fine_job", 1) is not None
    assert len(registry.problems) == 1 and "script.py" in registry.problems[0]


def test_a_default_of_the_second_type_does_not_fail_jobs_that_set_the_value() -> None:
    """Parameter lr of types (int, float) with default 0.5: a job setting lr=3 works; unset gives 0.5.
    The old names (Integer, Float) read the same and reach the template as the server's."""
    param = Parameter("lr", ("Integer", "Float"), 0.5)
    declared = {"lr": param.to_template()}
    assert declared["lr"]["types"] == ["int", "float"] and declared["lr"]["default_type"] == "float"
    given = resolve_parameters(declared, {"lr": {"value": 3, "type": "int"}})
    assert given["lr"].value == 3
    assert resolve_parameters(declared, {})["lr"].value == 0.5
    legacy = {"lr": {"types": ["Integer", "Float"], "default": 0.5}}  # no default_type
    assert resolve_parameters(legacy, {})["lr"].value == 0.5


@pytest.mark.parametrize("raw", [10**400, "inf", float("nan")])
def test_unrepresentable_floats_are_clear_failures(raw: Any) -> None:
    """A Float of 10**400, inf or nan fails with a one-line reason naming the parameter."""
    declared = {"seconds": {"types": ["Float"], "default": 1.0}}
    with pytest.raises(JobFailed, match="seconds"):
        resolve_parameters(declared, {"seconds": {"value": raw, "type": "Float"}})
