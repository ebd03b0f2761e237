"""The README's first screen: from a clone to a finished job on the embedded server, as printed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO
from .readme import block, free_port, run_as_printed

pytestmark = pytest.mark.slow


def first_screen() -> list[str]:
    return block("first-screen")


def test_first_screen_says_how_the_command_gets_on_path():
    """The first screen makes the venv and says the three ways to get `ufdl-node` on PATH."""
    text = "\n".join(first_screen())
    assert "make .venv/.installed" in text and "source .venv/bin/activate" in text
    assert ".venv/bin/ufdl-node" in text and "pipx install ." in text


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_first_screen_make_target_exists():
    """`make .venv/.installed`, the first line, is a target of the Makefile."""
    result = subprocess.run(["make", "-n", "-C", str(REPO), ".venv/.installed"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(200)
def test_first_screen_runs_a_job_to_finished(tmp_path: Path):
    """The first screen's commands, run by bash as printed (this checkout's venv already made, the
    server on a free port rather than 8000), end with `job 1: FINISHED`."""
    lines = [line for line in first_screen() if not line.startswith(("make ", "source "))]
    out, err = run_as_printed(lines, tmp_path, port=free_port(), timeout_s=180)
    assert "demo_train: imported" in out and "job 1 created from demo_train v1" in err
    assert out.splitlines()[-1] == "job 1: FINISHED", out
