"""The README's exit-code table, command by command: each command that talks to a server, against
a wrong password (3), a dead server (1) and a missing job (1); every command with a bad argument (2).
Each fault is one line on stderr and nothing on stdout (check-config's report of the effective
settings is its stdout, whatever happens after)."""

from __future__ import annotations

import asyncio
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ufdl_node.cli.extras import every_command, walk
from ufdl_node.cli.main import build_parser
from ufdl_node.errors import ExitCode

from .conftest import ufdl_node
from .test_user_errors import free_port

pytestmark = pytest.mark.slow

# Every command that logs in to a server, with arguments that would otherwise do something.
SERVER_COMMANDS: list[tuple[str, ...]] = [
    ("jobs",), ("jobs", "--json"), ("submit", "demo_train"), ("watch", "1"), ("templates", "list"),
    ("templates", "import", "demo_train"), ("dataset", "add", "{folder}"), ("check-config",),
]
# A job or thing the server does not have.
MISSING: list[tuple[str, ...]] = [("watch", "999")]
# Values argparse or the command refuses before anything happens.
BAD_VALUES: list[tuple[str, ...]] = [
    ("watch", "abc"), ("jobs", "--limit", "x"), ("dry-run", "demo_train", "--timeout", "0"),
    ("init",), ("server", "--port", "99999"), ("completion", "fish"), ("no-such-command",),
    ("jobs", "--config", "{folder}/nope.toml"), ("check-config", "--config", "{folder}/nope.toml"),
    ("run", "--config", "{folder}/nope.toml"), ("handlers", "--config", "{folder}/nope.toml"),
]


def _env(url: str, password_file: Path) -> dict[str, str]:
    return {"UFDL_NODE_SERVER_URL": url, "UFDL_NODE_USERNAME": "admin",
            "UFDL_NODE_PASSWORD_FILE": str(password_file), "UFDL_NODE_STATE_DIR": str(password_file.parent)}


def _check(args: tuple[str, ...], result: subprocess.CompletedProcess[str], code: int) -> str | None:
    """What is wrong with `result` of `ufdl-node ARGS`, or None."""
    lines = result.stderr.splitlines()
    if result.returncode != code:
        return f"{args}: exit {result.returncode}, not {code}: {result.stderr[-300:]}"
    if len(lines) != 1 or not lines[0].startswith("ufdl-node: ") or "Traceback" in result.stderr:
        return f"{args}: stderr is not one line: {result.stderr[-500:]!r}"
    if result.stdout and args[0] != "check-config":
        return f"{args}: stdout not empty: {result.stdout[:200]!r}"
    return None


def _run_all(cases: list[tuple[str, ...]], code: int, env: dict[str, str], folder: Path,
             at_once: int = 4) -> list[str]:
    """What is wrong with each case, in the cases' order. The cases run `at_once` at a time: most
    of a case's time is its interpreter starting, or its client's backoff against a dead server."""
    def one(case: tuple[str, ...]) -> str | None:
        args = tuple(a.replace("{folder}", str(folder)) for a in case)
        return _check(args, ufdl_node(*args, env=env, cwd=folder), code)

    with ThreadPoolExecutor(max_workers=at_once) as pool:
        return [problem for problem in pool.map(one, cases) if problem]


async def test_wrong_password_exits_3_for_every_server_command(server, tmp_path):
    password = tmp_path / "password"
    password.write_text("not-the-password\n")
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "x.txt").write_text("x")
    env = _env(server.url, password)
    cases = [tuple(a.replace("{folder}", "{folder}/data") for a in c) for c in SERVER_COMMANDS]
    wrong = await asyncio.to_thread(_run_all, cases, ExitCode.AUTH, env, tmp_path)
    assert not wrong, "\n".join(wrong)
    # The daemon logs (several lines on stderr) but exits 3 too, and prints nothing on stdout.
    ran = await asyncio.to_thread(ufdl_node, "run", env=env | {"UFDL_NODE_USERNAME": "worker"})
    assert ran.returncode == ExitCode.AUTH and ran.stdout == "", ran.stderr[-500:]


def test_a_dead_server_exits_1_for_every_server_command(tmp_path):
    password = tmp_path / "password"
    password.write_text("some-password\n")
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "x.txt").write_text("x")
    env = _env(f"http://127.0.0.1:{free_port()}", password)
    cases = [tuple(a.replace("{folder}", "{folder}/data") for a in c) for c in SERVER_COMMANDS]
    # and, no daemon running, status has nothing to show. Each command mostly sleeps between its
    # client's tries (the backoff): all at once.
    wrong = _run_all([*cases, ("status",)], ExitCode.FAILURE, env, tmp_path, at_once=len(cases) + 1)
    assert not wrong, "\n".join(wrong)


async def test_a_missing_job_exits_1(server, tmp_path):
    password = tmp_path / "password"
    password.write_text("cli-admin-pw-1\n")
    wrong = await asyncio.to_thread(_run_all, MISSING, ExitCode.FAILURE, _env(server.url, password),
                                    tmp_path)
    assert not wrong, "\n".join(wrong)


def test_a_bad_argument_exits_2_for_every_command(tmp_path):
    """Every (sub-)command of the parser refuses an option it lacks, and a few refuse a bad value."""
    leaves = [tuple(c.path[1:]) for c in every_command(walk(build_parser()))[1:] if not c.children]
    positional = {("watch",): ("1",), ("submit",): ("t",), ("dry-run",): ("t",), ("init",): ("p",),
                  ("completion",): ("bash",), ("dataset", "add"): ("d",)}
    cases = [(*leaf, *positional.get(leaf, ()), "--no-such-option") for leaf in leaves]
    wrong = _run_all([*cases, *BAD_VALUES], ExitCode.CONFIG, {}, tmp_path)
    assert not wrong, "\n".join(wrong)
    assert len(cases) >= 15, cases
