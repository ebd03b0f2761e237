"""`ufdl-node check-config`: one clear line per problem, secrets never printed."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from .conftest import WORKER_PW, ufdl_node


def config(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def error_lines(err: str, label: str = "check-config") -> list[str]:
    """The problems check-config put on stderr, each without its `ufdl-node: LABEL: ` prefix."""
    prefix = f"ufdl-node: {label}: "
    return [line[len(prefix):] for line in err.splitlines() if line.startswith(prefix)
            and not line.startswith(prefix + "warning:")]


async def test_good_config_passes_and_masks_the_password(server, tmp_path):
    """A working config exits 0, shows the effective settings, and never the password."""
    path = config(tmp_path, f'server_url = "{server.url}"\nusername = "worker"\npassword = "{WORKER_PW}"\n')
    result = await asyncio.to_thread(ufdl_node, "check-config", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"password": "***"' in result.stdout and WORKER_PW not in result.stdout + result.stderr
    assert result.stdout.rstrip().endswith(f"ok: {server.url} answers and accepts user 'worker'")


async def test_wrong_password_is_one_line(server, tmp_path):
    """A wrong password is exactly one line on stderr, exit 3 (the README's table), without the password."""
    path = config(tmp_path, f'server_url = "{server.url}"\nusername = "worker"\npassword = "nope-nope"\n')
    result = await asyncio.to_thread(ufdl_node, "check-config", "--config", str(path))
    assert result.returncode == 3
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "refused the credentials" in lines[0], result.stderr
    assert result.stderr.count("\n") == 1 and "refused the credentials" not in result.stdout
    assert "nope-nope" not in result.stdout + result.stderr


def test_unreachable_server_is_one_line(tmp_path):
    """A server that does not answer is reported as exactly one error line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = config(tmp_path, f'server_url = "http://127.0.0.1:{port}"\npassword = "x-secret"\n')
    result = ufdl_node("check-config", "--config", str(path))
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "not usable" in lines[0] and "cannot reach" in lines[0], result.stderr


def test_typo_in_a_key_is_one_line(tmp_path):
    """A misspelt key is an error naming it, on one line; nothing is contacted."""
    path = config(tmp_path, 'server_url = "http://127.0.0.1:9"\npol_interval_s = 3\npassword = "x"\n')
    result = ufdl_node("check-config", "--config", str(path))
    assert result.returncode == 2
    assert error_lines(result.stderr, "config") == [f"{path}: unknown setting 'pol_interval_s'"], result
    assert result.stdout == ""


def test_bad_value_names_the_setting(tmp_path):
    """A value of the wrong type names the setting and what is wrong."""
    path = config(tmp_path, 'poll_interval_s = "soon"\nstatus_listen = "everywhere"\n')
    result = ufdl_node("check-config", "--config", str(path))
    assert result.returncode == 2
    lines = error_lines(result.stderr, "config")
    assert len(lines) == 2, result.stderr
    assert "poll_interval_s" in lines[0] and "status_listen" in lines[1]


async def test_secret_in_a_world_readable_file_warns(server, tmp_path):
    """A password in a file others can read gets a warning with the chmod to run."""
    path = config(tmp_path, f'server_url = "{server.url}"\npassword = "{WORKER_PW}"\n', mode=0o644)
    result = await asyncio.to_thread(ufdl_node, "check-config", "--config", str(path))
    assert result.returncode == 0
    assert f"warning: {path} holds a secret but is readable by others" in result.stderr
    assert f"chmod 600 {path}" in result.stderr


def test_missing_file_is_one_line(tmp_path):
    """A config path that does not exist is a one-line error."""
    result = ufdl_node("check-config", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert error_lines(result.stderr, "config") == [f"config file {tmp_path / 'nope.toml'} does not "
                                                    "exist or is not a file"]


async def test_no_docker_is_a_note_for_the_shipped_definitions_and_an_error_for_ones_own(server, tmp_path):
    """Without Docker, the shipped container definitions are left out (exit 0, a note); a container
    template the settings name themselves is a problem (exit 1, one line)."""
    dead = f"unix://{tmp_path / 'no-docker.sock'}"
    base = (f'server_url = "{server.url}"\nusername = "worker"\npassword = "{WORKER_PW}"\n'
            f'docker_url = "{dead}"\n')
    shipped = await asyncio.to_thread(ufdl_node, "check-config", "--config", str(config(tmp_path, base)))
    assert shipped.returncode == 0, shipped.stderr
    assert "docker: the shipped container templates are not offered on this node" in shipped.stdout
    own = base + '[docker_templates.mine]\nimage = "busybox"\ncommands = [["true"]]\n'
    mine = await asyncio.to_thread(ufdl_node, "check-config", "--config", str(config(tmp_path, own)))
    assert mine.returncode == 1, mine.stdout + mine.stderr
    assert error_lines(mine.stderr) == [line for line in error_lines(mine.stderr)
                                        if line.startswith("docker templates are configured but ")]
    assert len(error_lines(mine.stderr)) == 1, mine.stderr
