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


def sh_blocks(path: Path) -> list[str]:
    """The lines of every ```sh block of the Markdown file `path`, in order."""
    return [line for found in re.findall(r"```sh\n(.*?)```", path.read_text(), re.S)
            for line in found.splitlines()]


# What an operator's machine has that this one does not, as shell functions: systemd, a package
# manager, a new system user, the network. Each is left out (said on stderr), not faked.
_LEFT_OUT = ("systemctl", "journalctl", "adduser", "apt-get", "modprobe", "curl", "jq")
_ROOTED = re.compile(r"(?<![\w.~-])/(opt|etc|var|run)/")


def as_operator(lines: list[str], root: Path, *, server_url: str, password: str) -> list[str]:
    """`lines` of an operator's guide, runnable here: absolute paths under `root` (a scratch file
    system), `/path/to/ufdl-node` this checkout, `editor` the operator's edit (server_url and
    username into a config, the password into a password file), `python3 -m venv` and the venv's
    pip left out (the venv's `ufdl-node` is this one), and the commands of `_LEFT_OUT` left out."""
    bin_dir = root / "opt" / "ufdl-node" / "venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "ufdl-node").write_text(f'#!/bin/sh\nexec {sys.executable} -m ufdl_node "$@"\n')
    (bin_dir / "pip").write_text('#!/bin/sh\necho "left out: pip $*" >&2\n')
    for script in ("ufdl-node", "pip"):
        (bin_dir / script).chmod(0o755)
    (root / "etc" / "modules-load.d").mkdir(parents=True, exist_ok=True)
    preamble = [f'{name}() {{ echo "left out: {name} $*" >&2; cat > /dev/null 2>&1 || true; }}'
                if name == "jq" else f'{name}() {{ echo "left out: {name} $*" >&2; }}' for name in _LEFT_OUT]
    preamble += [
        'python3() { if [ "$1 $2" = "-m venv" ]; then echo "left out: python3 $*" >&2; '
        'else command python3 "$@"; fi; }',
        'editor() { case "$1" in '
        f'*password) printf "%s\\n" {password} > "$1" ;; '
        f'*.toml) sed -i -e "s|^server_url = .*|server_url = \\"{server_url}\\"|" '
        '-e "s|^username = .*|username = \\"worker\\"|" "$1" ;; esac; }',
    ]
    joined = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.replace("/path/to/ufdl-node", str(REPO))
        line = _ROOTED.sub(lambda m: f"{root}/{m.group(1)}/", line)
        if os.geteuid() != 0:
            line = line.replace(" -o root -g root", "")
        out.append(line)
    return preamble + out
