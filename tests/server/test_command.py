"""`ufdl-node server` as a process: the generated admin, clean stop, conformance in quirks mode."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_process(data_dir: Path, **env: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run `python -m ufdl_node server` on a free port until it accepts connections."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_SERVER_")}
    environ.update(env)
    # Its output goes to a file, not a pipe: nobody reads a pipe while a test runs, and a full
    # one (the conformance suite logs a lot) would block the server. Not under data_dir, which a
    # test searches for the generated password.
    log = tempfile.TemporaryFile("w+", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "ufdl_node", "server", "--port", str(port),
                             "--data-dir", str(data_dir)], env=environ, text=True,
                            stdout=log, stderr=subprocess.STDOUT)
    _LOGS[proc.pid] = log
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"server exited: {stop(proc)}"
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _LOGS.pop(proc.pid).close()


_LOGS: dict[int, IO[str]] = {}  # a server process's output file, by pid


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM the server; its exit code and everything it printed."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    log = _LOGS[proc.pid]
    log.seek(0)
    return proc.returncode, log.read()


def test_sigterm_stops_cleanly_with_exit_code_0(tmp_path: Path) -> None:
    """SIGTERM stops the foreground server with exit code 0."""
    with server_process(tmp_path, UFDL_NODE_SERVER_ADMIN="a:b") as (proc, _port):
        code, _ = stop(proc)
    assert code == 0


def test_generated_admin_password_is_printed_once(tmp_path: Path) -> None:
    """Without an admin setting, the first start prints the generated password once; the next does not."""
    with server_process(tmp_path) as (proc, _port):
        _code, first = stop(proc)
    lines = [line for line in first.splitlines() if "with password" in line]
    assert len(lines) == 1 and "'admin'" in lines[0], first
    password = lines[0].split("password ")[1].split()[0]
    assert all(password.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    with server_process(tmp_path) as (proc, _port):
        _code, second = stop(proc)
    assert "with password" not in second


@pytest.mark.slow
@pytest.mark.timeout(200)  # ~10 s on a quiet machine; minutes on two loaded cores (180 tests)
@pytest.mark.skipif(not (CONFORMANCE / "run.sh").is_file(), reason="conformance suite not found")
def test_lenient_conformance_passes_against_quirks_mode(tmp_path: Path) -> None:
    """The conformance suite in lenient mode (UFDL_STRICT=0) passes against real_server_quirks."""
    users = {"UFDL_NODE_SERVER_ADMIN": "admin:admin", "UFDL_NODE_SERVER_WORKER": "worker:worker",
             "UFDL_NODE_SERVER_REAL_SERVER_QUIRKS": "1"}
    with server_process(tmp_path, **users) as (proc, port):
        env = dict(os.environ, UFDL_STRICT="0", UFDL_WS_REQUIRED="1", UFDL_WORKER_USER="worker",
                   UFDL_WORKER_PASSWORD="worker", PYTHON=sys.executable)
        result = subprocess.run([str(CONFORMANCE / "run.sh"), f"http://127.0.0.1:{port}", "-q",
                                 "-p", "no:randomly", "-W", "ignore::DeprecationWarning"],
                                env=env, capture_output=True, text=True, timeout=180)
        stop(proc)
    assert result.returncode == 0, result.stdout[-3000:]


async def test_binding_beyond_loopback_warns(tmp_path):
    """A server bound to every address says, in its log, that it is reachable from other machines."""
    import io

    from ufdl_node.logs import configure_logging
    from ufdl_node.server import EmbeddedServer
    from ufdl_node.settings import ServerSettings

    stream = io.StringIO()
    configure_logging("info", "json", stream)
    settings = ServerSettings(data_dir=tmp_path / "d", host="0.0.0.0", port=0, admin="admin:admin-pw-1")
    async with EmbeddedServer(settings):
        pass
    assert "reachable from other machines" in stream.getvalue()
    stream2 = io.StringIO()
    configure_logging("info", "json", stream2)
    async with EmbeddedServer(ServerSettings(data_dir=tmp_path / "e", port=0, admin="admin:admin-pw-1")):
        pass
    assert "reachable from other machines" not in stream2.getvalue()
