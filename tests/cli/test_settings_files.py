"""Settings as an operator writes them: handler_dirs beside the built-in handlers, unknown keys in
template definitions and drop-ins, and GPU indices the machine lacks, through the real command."""

from __future__ import annotations

from pathlib import Path

from ufdl_node.errors import ExitCode
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR, NodeSettings

from .conftest import ufdl_node

HANDLER = "from ufdl_node.api import handler\n\n\n@handler('my_own')\nasync def run(ctx):\n    pass\n"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'server_url = "http://127.0.0.1:9"\npassword = "x-pw"\nstate_dir = "{tmp_path / "s"}"\n'
                    + text)
    path.chmod(0o600)
    return path


def test_handler_dirs_add_to_the_built_in_handlers(tmp_path):
    """A directory in handler_dirs serves its templates beside the built-in ones; builtin_handlers =
    false leaves those out."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "own.py").write_text(HANDLER)
    settings = NodeSettings(password="x", handler_dirs=[mine])
    assert settings.handler_dirs == [SHIPPED_HANDLERS_DIR, mine]
    served = Registry.load(settings.handler_dirs, entry_points=False, settings=settings).templates()
    assert "my_own" in served and "demo_train" in served, served
    alone = NodeSettings(password="x", handler_dirs=[mine], builtin_handlers=False)
    assert Registry.load(alone.handler_dirs, entry_points=False, settings=alone).templates() == ["my_own"]
    listed = ufdl_node("handlers", "--config", str(_config(tmp_path, f'handler_dirs = ["{mine}"]\n')))
    assert listed.returncode == 0, listed.stderr
    assert "my_own: templates my_own" in listed.stdout and "demo_train: templates" in listed.stdout


def test_an_unknown_key_in_a_drop_in_stops_run_and_check_config(tmp_path):
    """A misspelt key in a docker drop-in or a [command_templates.X] table: exit 2 before anything is
    contacted, the file, the template and the key on one line each."""
    drop_ins = tmp_path / "docker.d"
    drop_ins.mkdir()
    (drop_ins / "mine.toml").write_text('image = "x"\ncommands = ["true"]\nimgae = "y"\n')
    config = _config(tmp_path, f'docker_template_dirs = ["{drop_ins}"]\n'
                     '[command_templates.t]\ncommand = "true"\noutputs = [{ name = "m", type = "Blob", '
                     'path = "m", requried = true }]\n')
    expected = [f"{config} [command_templates.t]: command template 't': output 'm': unknown key "
                "'requried' (known: name, path, required, type)",
                f"{drop_ins / 'mine.toml'}: docker template 'mine': unknown key 'imgae' (known: "]
    for command in ("run", "check-config", "handlers"):
        result = ufdl_node(command, "--config", str(config))
        assert result.returncode == ExitCode.CONFIG, (command, result.stderr)
        lines = [line for line in result.stderr.splitlines() if "unknown key" in line]
        if command == "run":  # the daemon logs its refusal as a log line
            assert all(text in result.stderr for text in expected), result.stderr
            continue
        assert len(lines) == 2, (command, result.stderr)
        assert lines[0].endswith(expected[0]) and expected[1] in lines[1], (command, lines)


def test_a_gpu_index_the_machine_lacks_is_an_error(tmp_path):
    """gpu_indices naming no GPU of this machine: run and check-config exit 2 naming the index."""
    config = _config(tmp_path, "gpu_indices = [0, 7]\n")
    for command in ("run", "check-config"):
        result = ufdl_node(command, "--config", str(config))
        assert result.returncode == ExitCode.CONFIG, (command, result.stderr)
        assert "gpu_indices: no GPU with index 7 on this machine" in result.stderr, result.stderr
