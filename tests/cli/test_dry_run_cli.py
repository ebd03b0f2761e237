"""dry-run as a handler author meets it: a directory per run, Ctrl-C, --input types, clear errors,
and output to a pipe that is plain lines, never cut."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from ufdl_node.errors import ExitCode

from .conftest import ufdl_node

pytestmark = pytest.mark.slow

LONG_REASON = "the handler gave up because " + " ".join(f"reason-part-{n}" for n in range(30)) + " END"


def handler_dir(tmp_path: Path, source: str) -> Path:
    directory = tmp_path / "handlers"
    directory.mkdir(exist_ok=True)
    (directory / "mine.py").write_text(source)
    return directory


def test_each_dry_run_gets_a_directory_of_its_own(tmp_path):
    """Two runs of one template write to two directories, <job>-<time>[-n], each with its own log."""
    args = ("dry-run", "demo_train", "--input", "dataset=7", "--param", "epochs=1",
            "--param", "epoch_seconds=0.01")
    for _ in range(2):
        result = ufdl_node(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted((tmp_path / "dry-run").iterdir())
    assert len(runs) == 2, runs
    for run in runs:
        assert run.name.startswith("1-") and (run / "job.log").is_file(), list(run.iterdir())


async def test_ctrl_c_exits_130_with_one_message_and_the_log_saved(tmp_path, wait_for):
    """SIGINT during a dry-run: exit 130, one line on stderr, the job's log saved in the run's directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ufdl_node", "dry-run", "demo_train", "--input", "dataset=7", "--param",
        "epochs=500", "--param", "epoch_seconds=0.2", cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode())

    reader = asyncio.create_task(read())
    await wait_for(lambda: any("epoch=" in line for line in lines), timeout_s=60, what="the job's progress")
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 60) == ExitCode.INTERRUPTED
    await reader
    assert proc.stderr is not None
    err = (await proc.stderr.read()).decode()
    assert err.startswith("ufdl-node: dry-run: interrupted; the job's log and outputs are in "), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    (run,) = (tmp_path / "dry-run").iterdir()
    assert "epoch" in (run / "job.log").read_text()


def test_input_type_is_inferred_from_the_template(tmp_path):
    """--input NAME=VALUE without TYPE works for an input the handler's template declares."""
    result = ufdl_node("dry-run", "demo_train", "--input", "dataset=7", "--param", "epochs=1",
                       "--param", "epoch_seconds=0.01", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_input_the_template_does_not_declare_is_refused_naming_the_declared_ones(tmp_path):
    """An input the template does not declare (the server would drop it): one line naming the
    declared inputs, with or without a TYPE."""
    for extra in ("extra=3", "extra=3:int"):
        result = ufdl_node("dry-run", "demo_train", "--input", "dataset=7", "--input", extra, cwd=tmp_path)
        assert result.returncode == ExitCode.CONFIG
        assert result.stderr == ("ufdl-node: dry-run: --input extra: template demo_train has no such input "
                                 "(it has: dataset)\n")


def test_help_says_when_the_input_type_may_be_left_out():
    """dry-run --help shows [:TYPE] as optional and says when."""
    shown = ufdl_node("dry-run", "--help").stdout
    assert "NAME=VALUE[:TYPE]" in shown and "TYPE may be left out" in shown


def test_unknown_template_is_a_dry_run_error_not_a_config_one(tmp_path):
    """A template no handler serves: `ufdl-node: dry-run: ...` on stderr, exit 2."""
    result = ufdl_node("dry-run", "no_such_template", cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.startswith("ufdl-node: dry-run: no handler serves template 'no_such_template'")
    assert "config:" not in result.stderr


def test_train_handler_without_declared_inputs_gets_a_clear_message(tmp_path):
    """A Train template whose handler declares no inputs: a message saying what to declare, not a 400."""
    handlers = handler_dir(tmp_path, (
        "from ufdl_node.api import TemplateDescription, handler\n"
        "@handler('my_train', description=TemplateDescription(job_type='Train',\n"
        "                                                     domain='Image Classification'))\n"
        "async def run(ctx):\n    pass\n"))
    result = ufdl_node("dry-run", "my_train", "--handlers-dir", str(handlers), cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.startswith("ufdl-node: dry-run: handler ")
    assert "Train template" in result.stderr and "inputs={'dataset'" in result.stderr
    assert "400" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_piped_output_has_one_line_per_change_and_the_whole_failure_line(tmp_path):
    """Without a terminal, dry-run prints plain lines (no '0:00:00job') and the failure line uncut."""
    handlers = handler_dir(tmp_path, (
        "from ufdl_node.api import JobFailed, handler\n"
        "@handler('long_failure')\n"
        f"async def run(ctx):\n    ctx.progress(0.5)\n    raise JobFailed({LONG_REASON!r})\n"))
    result = ufdl_node("dry-run", "long_failure", "--handlers-dir", str(handlers), cwd=tmp_path)
    assert result.returncode == ExitCode.FAILURE, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"job 1: ERRORED: {LONG_REASON}" in lines, result.stdout
    assert not any("0:00" in line for line in lines), result.stdout
    assert "\x1b[" not in result.stdout  # no terminal codes into a file


def test_a_handler_needing_more_than_this_machine_has_says_why(tmp_path):
    """A handler that needs more GPU than GPU 0 (or a GPU on a machine without one) is refused at once,
    one line naming the need and what the machine has: not a job left CREATED with no reason."""
    from ufdl_node.hardware import detect_hardware

    hardware = detect_hardware()
    need = "Needs(gpu=True)" if not hardware.gpus else f"Needs(gpu=True, min_gpu_mem_bytes={2**60})"
    directories = handler_dir(tmp_path, "from ufdl_node.api import Needs, handler\n\n\n"
                              f"@handler('big_train', needs={need})\nasync def run(ctx):\n    pass\n")
    result = ufdl_node("dry-run", "big_train", "--handlers-dir", str(directories), "--timeout", "30",
                       cwd=tmp_path)
    assert result.returncode == ExitCode.FAILURE, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("ufdl-node: dry-run: template big_train cannot run here: its handler big_train "
                           "needs "), line
    assert ("this machine has no GPU" if not hardware.gpus else "GPU 0 is a") in line, line
    assert not (tmp_path / "dry-run").exists()


def test_a_container_template_without_docker_says_why(tmp_path):
    """A docker template while Docker cannot be reached: refused at once, naming Docker's address."""
    definitions = tmp_path / "docker.d"
    definitions.mkdir()
    (definitions / "boxed.toml").write_text('image = "busybox"\ncommands = ["true"]\ngpu = false\n')
    result = ufdl_node("dry-run", "boxed", "--docker-template-dir", str(definitions), "--timeout", "30",
                       cwd=tmp_path, env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert result.returncode == ExitCode.FAILURE, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("ufdl-node: dry-run: template boxed cannot run here: its handler docker runs "
                           f"containers, and Docker not reachable at unix://{tmp_path}/no-docker.sock"), line
