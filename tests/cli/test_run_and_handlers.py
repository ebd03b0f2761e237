"""`ufdl-node run` exit codes and `ufdl-node handlers`, as an operator meets them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from .conftest import ufdl_node


def node_config(tmp_path: Path, server_url: str, password: str, **extra: object) -> Path:
    lines = [f'server_url = "{server_url}"', 'username = "worker"', f'password = "{password}"',
             f'state_dir = "{tmp_path / "state"}"', f'cache_dir = "{tmp_path / "cache"}"',
             "gpu_indices = [0]", "exit_when_idle = true", "poll_interval_s = 0.2"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path = tmp_path / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


async def test_run_with_a_wrong_password_exits_3_without_printing_it(server, tmp_path):
    """Refused credentials: exit 3 (systemd does not restart it), one clear error, no password."""
    config = node_config(tmp_path, server.url, "wrong-password-123")
    result = await asyncio.to_thread(ufdl_node, "run", "--config", str(config), timeout_s=60)
    assert result.returncode == 3, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "refused the credentials" in output and "wrong-password-123" not in output


def test_run_with_a_typo_in_the_config_exits_2(tmp_path):
    """A misspelt setting: exit 2 with the key named, before anything is contacted."""
    config = node_config(tmp_path, "http://127.0.0.1:9", "x", grace_periode_s=5)
    result = ufdl_node("run", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == f"ufdl-node: config: {config}: unknown setting 'grace_periode_s'"


def test_run_without_a_password_exits_2(tmp_path):
    """No password anywhere: exit 2 with one line saying where to put it."""
    config = tmp_path / "node.toml"
    config.write_text(f'server_url = "http://127.0.0.1:9"\nstate_dir = "{tmp_path}"\n')
    result = ufdl_node("run", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no password: set password, password_file or UFDL_NODE_PASSWORD" in result.stdout + result.stderr


def test_handlers_lists_templates_sources_and_needs_and_reports_broken_plugins(tmp_path):
    """`ufdl-node handlers` lists each handler; a broken plugin is one line on stderr and exit 1."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "fast.py").write_text(
        "from ufdl_node.api import Needs, handler\n\n\n"
        "@handler('fast_train', versions='>=2', needs=Needs(gpu=True))\n"
        "async def run(ctx):\n    pass\n")
    (bad / "broken.py").write_text("import no_such_module_here\n")
    result = ufdl_node("handlers", "--handlers-dir", str(good), "--handlers-dir", str(bad))
    assert result.returncode == 1
    assert "fast_train: templates fast_train (versions >=2)" in result.stdout
    assert f"source: {good / 'fast.py'}" in result.stdout and "needs:  gpu" in result.stdout
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 1 and str(bad / "broken.py") in problems[0]
    assert "No module named 'no_such_module_here'" in problems[0]


def test_handlers_refuses_two_handlers_for_one_template(tmp_path):
    """Two handlers claiming one template is an error naming both files, exit 2."""
    for name in ("one", "two"):
        (tmp_path / f"{name}.py").write_text(
            "from ufdl_node.api import handler\n\n\n"
            "@handler('same_template')\nasync def run(ctx):\n    pass\n")
    result = ufdl_node("handlers", "--handlers-dir", str(tmp_path))
    assert result.returncode == 2
    assert str(tmp_path / "one.py") in result.stderr and str(tmp_path / "two.py") in result.stderr


def test_the_daemon_process_is_not_dumpable():
    """`run` makes the process non-dumpable, so a job's subprocess cannot read its environ or memory."""
    import subprocess
    import sys

    code = ("import ctypes; from ufdl_node.cli.main import _protect_process; libc = ctypes.CDLL(None); "
            "print(libc.prctl(3, 0, 0, 0, 0)); _protect_process(); print(libc.prctl(3, 0, 0, 0, 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "0"], out  # PR_GET_DUMPABLE before and after


def test_a_handler_with_a_wrong_signature_is_named_at_load_with_its_file_and_line(tmp_path):
    """`async def run()` (no context) is refused when the file loads: one line naming the file and the
    line of the def, not a failure later blamed on the daemon's own slot.py."""
    (tmp_path / "nullary.py").write_text("from ufdl_node.api import handler\n\n\n"
                                         "@handler('nullary')\nasync def run():\n    pass\n")
    result = ufdl_node("handlers", "--handlers-dir", str(tmp_path))
    assert result.returncode == 1, result.stderr
    [problem] = result.stderr.splitlines()
    assert f"handler file {tmp_path / 'nullary.py'}: TypeError: @handler('nullary'): run() must take one " \
        f"argument, the JobContext ({tmp_path / 'nullary.py'}:4)" in problem, problem
    assert "slot.py" not in problem
