"""The README's first screen: from a clone to a finished job on the embedded server, as printed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def first_screen() -> list[str]:
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- first-screen:start -->\n```sh\n(.*?)```\n<!-- first-screen:end -->", readme,
                      re.S)
    assert found, "the README lost its first-screen block"
    return found.group(1).splitlines()


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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lines = [line for line in first_screen() if not line.startswith(("make ", "source "))]
    lines = [line.replace("ufdl-node server ", f"ufdl-node server --port {port} ") for line in lines]
    script = "\n".join(["set -e", f"export UFDL_NODE_SERVER_URL=http://127.0.0.1:{port}", *lines])
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "HOME": str(tmp_path),
            "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # whatever the script left running
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out + err + (tmp_path / "worker.log").read_text(errors="replace")
    assert "demo_train: imported" in out and "job 1 created from demo_train v1" in err
    assert out.splitlines()[-1] == "job 1: FINISHED", out
