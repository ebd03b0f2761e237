"""The embedded server listens before it creates anyone: a busy port wastes no generated password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ufdl_node.server import EmbeddedServer
from ufdl_node.server.runner import CannotListen
from ufdl_node.settings import ServerSettings


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def server_command(*args: str) -> subprocess.CompletedProcess[str]:
    """`ufdl-node server ARGS` as a real process, without the server settings of this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    return subprocess.run([sys.executable, "-m", "ufdl_node", "server", *args], capture_output=True,
                          text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


def test_busy_port_exits_2_with_one_line_naming_the_port_and_flag(tmp_path: Path, busy_port: int) -> None:
    """On a busy port the command prints one line naming the port and --port, exits 2, no traceback."""
    done = server_command("--port", str(busy_port), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{busy_port}" in lines[0] and "--port" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout


def test_busy_port_prints_no_password_and_creates_no_admin(tmp_path: Path, busy_port: int) -> None:
    """A failed start shows no generated password and creates no data directory (so no admin)."""
    data = tmp_path / "data"
    failed = server_command("--port", str(busy_port), "--data-dir", str(data))
    assert failed.returncode == 2
    assert "password" not in failed.stdout + failed.stderr
    assert not data.exists()


def test_unknown_host_exits_2_naming_the_host_flag(tmp_path: Path) -> None:
    """A host that does not resolve gives one line naming --host and exit 2."""
    done = server_command("--host", "no-such-host.invalid", "--port", "0", "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "--host" in done.stderr
    assert "Traceback" not in done.stderr


async def test_in_process_start_on_a_busy_port_raises_before_opening_the_data_dir(
        tmp_path: Path, busy_port: int) -> None:
    """EmbeddedServer.start on a busy port raises CannotListen and leaves no data directory behind."""
    server = EmbeddedServer(ServerSettings(data_dir=tmp_path / "data", port=busy_port))
    with pytest.raises(CannotListen, match="--port"):
        await server.start()
    assert not (tmp_path / "data").exists()
    with pytest.raises(RuntimeError):
        _ = server.url
