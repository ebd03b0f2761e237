"""Running the README's shell blocks as printed (the first screen, the walk-throughs)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def block(name: str) -> list[str]:
    """The lines of the README's shell block between <!-- NAME:start --> and <!-- NAME:end -->."""
    readme = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- {name}:start -->\n```sh\n(.*?)```\n<!-- {name}:end -->", readme, re.S)
    assert found, f"the README lost its {name} block"
    return found.group(1).splitlines()


def run_as_printed(lines: list[str], cwd: Path, *, port: int | None = None,
                   timeout_s: float = 200, env_extra: dict[str, str] | None = None) -> tuple[str, str]:
    """Run `lines` with bash -e in `cwd` (this venv's ufdl-node on PATH; the server, if any, on
    `port` rather than 8000; `env_extra` in the environment, e.g. settings the block leaves at
    their defaults); stdout and stderr. Whatever the script leaves running is stopped."""
    if port is not None:
        lines = [line.replace("ufdl-node server ", f"ufdl-node server --port {port} ") for line in lines]
    script = "\n".join(["set -e", *([f"export UFDL_NODE_SERVER_URL=http://127.0.0.1:{port}"] if port else []),
                        *lines])
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "HOME": str(cwd),
            "XDG_STATE_HOME": str(cwd / "state"), "XDG_CACHE_HOME": str(cwd / "cache")} | (env_extra or {})
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in cwd.glob("*.log"))
    assert proc.returncode == 0, out + err + logs
    return out, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
