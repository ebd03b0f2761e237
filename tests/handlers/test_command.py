"""The built-in `command` handler, with a real script that prints progress and writes files."""

from __future__ import annotations

import io as _io
import textwrap
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ufdl_node.api import HandlerSpec, JobFailed
from ufdl_node.errors import ConfigError
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR, NodeSettings, load_settings

from .conftest import FakeIO, MakeCtx

SCRIPT = """
import argparse, pathlib, sys
p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int)
p.add_argument("--out")
p.add_argument("--name")
a = p.parse_args()
out = pathlib.Path(a.out)
out.mkdir(parents=True, exist_ok=True)
for epoch in range(1, a.epochs + 1):
    (out / f"ckpt_{epoch}.pt").write_bytes(bytes([epoch]))
    print(f"epoch {epoch}/{a.epochs} loss={1 / epoch:.3f}", flush=True)
(out / "model.pt").write_bytes(b"weights")
(out / "name.txt").write_text(a.name)
print("done", file=sys.stderr)
"""

PROGRESS = r"epoch (?P<step>\d+)/(?P<total>\d+) loss=(?P<loss>[\d.]+)"
PARAMETERS = {"epochs": {"types": ["Integer"], "default": 3}, "name": {"types": ["String"], "default": "m"}}
OUTPUTS = [{"name": "model", "type": "Blob", "path": "out/model.pt"},
           {"name": "checkpoints", "type": "Compressed<Blob>", "path": "out/ckpt_*.pt"}]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """The training script the command runs."""
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(SCRIPT))
    return path


def _spec(template: str, config: dict[str, Any]) -> HandlerSpec:
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False,
                             settings=SimpleNamespace(command_templates={template: config}))
    assert registry.problems == []
    spec = registry.for_template(template, 1)
    assert spec is not None
    return spec


async def _run(spec: HandlerSpec, make_ctx: MakeCtx, **params: Any) -> None:
    assert spec.description is not None
    values = {k: {"value": v, "type": "Integer" if isinstance(v, int) else "String"}
              for k, v in params.items()}
    ctx = make_ctx(spec=spec, template_name=spec.templates[0], params=values,
                   template_params=spec.description.template_parameters())
    await spec(ctx)


def _config(script: Path, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "command": f"{{python}} {script} --epochs {{param.epochs}} --out {{work_dir}}/out "
                   "--name {param.name}",
        "progress_regex": PROGRESS, "outputs": OUTPUTS, "parameters": PARAMETERS}
    config.update(changes)
    return config


async def test_command_reports_parsed_progress(script: Path, make_ctx: MakeCtx, io: FakeIO) -> None:
    """Progress lines of the script become progress with the extra groups as data."""
    await _run(_spec("script_train", _config(script)), make_ctx, epochs=4)
    assert io.progress[:4] == [(0.25, {"loss": 1.0}), (0.5, {"loss": 0.5}),
                               (0.75, {"loss": 0.333}), (1.0, {"loss": 0.25})]
    assert "epoch 2/4 loss=0.500" in io.log and "done" in io.log


async def test_command_uploads_a_single_file_output(script: Path, make_ctx: MakeCtx, io: FakeIO) -> None:
    """An output path matching one file uploads that file as it is."""
    await _run(_spec("script_train", _config(script)), make_ctx)
    assert io.uploads["model"] == ("Blob", b"weights")


async def test_command_zips_several_matching_files(script: Path, make_ctx: MakeCtx, io: FakeIO) -> None:
    """An output glob matching several files uploads one zip of them."""
    await _run(_spec("script_train", _config(script)), make_ctx, epochs=3)
    type_, data = io.uploads["checkpoints"]
    with zipfile.ZipFile(_io.BytesIO(data)) as zf:
        contents = {name: zf.read(name) for name in zf.namelist()}
    assert type_ == "Compressed<Blob>"
    assert contents == {"ckpt_1.pt": b"\x01", "ckpt_2.pt": b"\x02", "ckpt_3.pt": b"\x03"}


async def test_command_zips_a_directory_output(script: Path, make_ctx: MakeCtx, io: FakeIO) -> None:
    """An output path naming a directory uploads a zip of everything in it."""
    config = _config(script, outputs=[{"name": "all", "type": "Compressed<Blob>", "path": "out"}])
    await _run(_spec("script_train", config), make_ctx, epochs=1)
    with zipfile.ZipFile(_io.BytesIO(io.uploads["all"][1])) as zf:
        assert sorted(zf.namelist()) == ["ckpt_1.pt", "model.pt", "name.txt"]


async def test_command_missing_output_fails_naming_it(script: Path, make_ctx: MakeCtx) -> None:
    """A declared output that the script did not write fails the job, naming it."""
    config = _config(script, outputs=[{"name": "report", "type": "JSON", "path": "out/report.json"}])
    with pytest.raises(JobFailed, match=r"output 'report': nothing matches 'out/report\.json'"):
        await _run(_spec("script_train", config), make_ctx)


async def test_command_optional_output_may_be_absent(script: Path, make_ctx: MakeCtx, io: FakeIO) -> None:
    """An output with required = false is skipped when nothing matches."""
    config = _config(script, outputs=[{"name": "r", "type": "JSON", "path": "nope", "required": False}])
    await _run(_spec("script_train", config), make_ctx)
    assert io.uploads == {}


async def test_command_shell_quotes_substituted_values(script: Path, make_ctx: MakeCtx,
                                                       tmp_path: Path) -> None:
    """A parameter value with spaces and shell syntax reaches the script as one argument."""
    spec = _spec("script_train", _config(script))
    value = "my model; touch pwned $(id)"
    await _run(spec, make_ctx, name=value)
    assert (tmp_path / "work" / "out" / "name.txt").read_text() == value
    assert not (tmp_path / "work" / "pwned").exists()


async def test_command_argv_form_runs_without_shell(script: Path, make_ctx: MakeCtx, tmp_path: Path) -> None:
    """argv = [...] runs the program directly with each element substituted."""
    config = _config(script, argv=["{python}", str(script), "--epochs", "{param.epochs}",
                                   "--out", "{work_dir}/out", "--name", "{param.name}"])
    del config["command"]
    await _run(_spec("script_train", config), make_ctx, name="a b")
    assert (tmp_path / "work" / "out" / "name.txt").read_text() == "a b"


async def test_command_passes_env_with_placeholders(make_ctx: MakeCtx, io: FakeIO) -> None:
    """env values are substituted and given to the command."""
    config = {"command": "echo \"epochs=$EPOCHS\"", "env": {"EPOCHS": "{param.epochs}"},
              "parameters": {"epochs": {"types": ["Integer"], "default": 7}}}
    await _run(_spec("env_train", config), make_ctx)
    assert "epochs=7" in io.log


def test_drop_in_file_configures_a_template(tmp_path: Path, script: Path) -> None:
    """A TOML file in a command_template_dir configures the template named after the file."""
    drop_in = tmp_path / "templates.d"
    drop_in.mkdir()
    (drop_in / "file_train.toml").write_text(textwrap.dedent(f"""
        command = "{{python}} {script} --epochs {{param.epochs}}"
        versions = ">=2"
        needs = {{ gpu = true, min_gpu_mem_bytes = 1024 }}
        outputs = [{{ name = "model", type = "Blob", path = "out/model.pt" }}]
        """))
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False,
                             settings=SimpleNamespace(command_template_dirs=[drop_in]))
    spec = registry.for_template("file_train", 2)
    assert spec is not None and registry.for_template("file_train", 1) is None
    assert spec.name == "command" and spec.needs.gpu and spec.needs.min_gpu_mem_bytes == 1024
    assert str(drop_in / "file_train.toml") in spec.source


def test_bad_template_config_is_reported_and_others_load(tmp_path: Path) -> None:
    """A wrong template configuration is one problem; the other templates still load."""
    settings = NodeSettings(command_templates={
        "good": {"command": "true"},
        "bad": {"command": "run {params.x}"}},
        state_dir=tmp_path)
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False, settings=settings)
    assert registry.for_template("good", 1) is not None and registry.for_template("bad", 1) is None
    command_file = SHIPPED_HANDLERS_DIR / "command.py"
    assert registry.problems == [
        f"handler file {command_file}: command template 'bad' from settings [command_templates.bad]: "
        "unknown placeholder {params.x} in 'run {params.x}'",
    ]


def test_an_unknown_key_in_a_template_is_an_error_at_start(tmp_path: Path) -> None:
    """A misspelt key, in the template or in one of its tables, stops the start (exit 2 from the
    daemon and the commands) with the file and the key, as an unknown top-level setting does."""
    config = tmp_path / "node.toml"
    config.write_text('[command_templates.typo]\ncomand = "true"\n'
                      '[command_templates.deep]\ncommand = "true"\n'
                      'parameters = { n = { types = ["int"], defualt = 3 } }\n')
    settings = load_settings(NodeSettings, config, state_dir=tmp_path)
    with pytest.raises(ConfigError) as raised:
        Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False, settings=settings)
    assert raised.value.problems == [
        f"{config} [command_templates.typo]: command template 'typo': unknown key 'comand' (known: "
        "argv, command, cwd, description, domain, env, framework, inputs, job_type, needs, outputs, "
        "parameters, progress_regex, template, timeout_s, versions)",
        f"{config} [command_templates.deep]: command template 'deep': parameter 'n': unknown key "
        "'defualt' (known: const, default, default_type, help, types)"]


def test_command_template_describes_itself(script: Path) -> None:
    """A configured template carries a description for dry-run and the embedded server."""
    spec = _spec("script_train", _config(script, job_type="Train", inputs={"dataset": "PK<Dataset>"}))
    assert spec.description is not None
    specific = spec.description.import_spec("script_train")["specific"]
    assert specific["job_type"] == "Train"
    # The definition's old name Integer reaches the server as its name, int.
    assert specific["parameters"]["epochs"] == {"types": ["int"], "help": "", "default": 3,
                                                "default_type": "int"}
