"""The operator's commands (`nodes`, `unregister`, `pause`, `resume`, `cancel`, `logs`, `outputs`) against
what goes wrong: each case ends with the README's exit code and one line on stderr, never a traceback."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from ufdl_node.errors import ExitCode

from .conftest import WORKER_PW, ufdl_node

SERVER_COMMANDS = [["nodes"], ["nodes", "--json"], ["unregister"], ["cancel", "1"], ["logs", "1"],
                   ["logs", "1", "--follow"], ["outputs", "1"], ["outputs", "1", "--dir", "OUT"]]
JOB_COMMANDS = [["cancel"], ["logs"], ["outputs"]]


def _config(tmp_path: Path, url: str, password: str = WORKER_PW, **extra: object) -> Path:
    values: dict[str, object] = {"server_url": url, "username": "worker", "password": password,
                                 "node_ip": "127.0.0.77", "state_dir": str(tmp_path / "state")}
    path = tmp_path / "node.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in (values | extra).items()))
    path.chmod(0o600)
    return path


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the block ends


async def _run(tmp_path: Path, args: list[str], config: Path) -> tuple[int, str, str]:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = await asyncio.to_thread(ufdl_node, *args, "--config", str(config))
    return result.returncode, result.stdout, result.stderr


async def _run_each(tmp_path: Path, cases: list[list[str]], config: Path,
                    at_once: int = 4) -> list[tuple[int, str, str]]:
    """`_run` of each case, `at_once` at a time (a case is mostly an interpreter start, or a
    client's backoff against a dead server), in the cases' order."""
    limit = asyncio.Semaphore(at_once)

    async def one(args: list[str]) -> tuple[int, str, str]:
        async with limit:
            return await _run(tmp_path, args, config)

    return list(await asyncio.gather(*(one(args) for args in cases)))


def _one_line(stderr: str, command: str, *expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"ufdl-node: {command}: "), stderr
    for text in expected:
        assert text in stderr, stderr


def _problems(cases: list[list[str]], results: list[tuple[int, str, str]], code: int,
              *expected: str) -> list[str]:
    """What is wrong with each case's result: its exit code, or its stderr (_one_line)."""
    wrong = []
    for args, (got, _, stderr) in zip(cases, results, strict=True):
        try:
            assert got == code, f"exit {got}, not {code}: {stderr}"
            _one_line(stderr, args[0], *expected)
        except AssertionError as e:
            wrong.append(f"{' '.join(args)}: {e}")
    return wrong


async def test_wrong_password_is_exit_3(server, tmp_path):
    config = _config(tmp_path, server.url, password="wrong-pw-0")
    results = await _run_each(tmp_path, SERVER_COMMANDS, config)
    wrong = _problems(SERVER_COMMANDS, results, ExitCode.AUTH, "refused the credentials of user 'worker'")
    assert not wrong, "\n".join(wrong)


async def test_dead_server_is_exit_1(tmp_path):
    # all at once: each case mostly sleeps between its client's tries (the backoff)
    results = await _run_each(tmp_path, SERVER_COMMANDS, _config(tmp_path, _dead_url()),
                              at_once=len(SERVER_COMMANDS))
    wrong = _problems(SERVER_COMMANDS, results, ExitCode.FAILURE, "is the server running")
    assert not wrong, "\n".join(wrong)
    assert not (tmp_path / "out").exists(), "nothing made before the server answered"


async def test_missing_job_is_exit_1(server, tmp_path):
    cases = [[*args, "4242"] for args in JOB_COMMANDS]
    results = await _run_each(tmp_path, cases, _config(tmp_path, server.url))
    wrong = _problems(cases, results, ExitCode.FAILURE, "no job 4242")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("args", [*JOB_COMMANDS, ["pause"], ["resume"]], ids=" ".join)
async def test_bad_argument_is_exit_2(tmp_path, args):
    extra = ["0"] if args[0] in ("cancel", "logs", "outputs") else ["--no-such-option"]
    code, _, stderr = await _run(tmp_path, [*args, *extra], _config(tmp_path, _dead_url()))
    assert code == ExitCode.CONFIG, stderr
    _one_line(stderr, args[0], "--help` lists the arguments")  # argparse's errors are one line too


@pytest.mark.parametrize("command", ["pause", "resume"])
async def test_pause_and_resume_without_a_daemon_are_exit_1(tmp_path, command):
    code, _, stderr = await _run(tmp_path, [command], _config(tmp_path, _dead_url()))
    assert code == ExitCode.FAILURE, stderr
    _one_line(stderr, command, "no running daemon")


@pytest.mark.parametrize("command", ["pause", "nodes", "outputs"])
async def test_bad_settings_are_exit_2(tmp_path, command):
    config = _config(tmp_path, "not a url at all", poll_interval_s=-1)
    args = [command, "1"] if command == "outputs" else [command]
    code, _, stderr = await _run(tmp_path, args, config)
    assert code == ExitCode.CONFIG, stderr
    assert "Traceback" not in stderr and stderr.startswith("ufdl-node: config: "), stderr
