"""The command line itself: --version, help pages, options that mean something, warnings, log lines."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys

from ufdl_node import __version__
from ufdl_node.cli.extras import every_command, walk
from ufdl_node.cli.main import build_parser

from .conftest import WORKER_PW, ufdl_node


def test_version_prints_the_version():
    """--version prints `ufdl-node VERSION` and exits 0."""
    result = ufdl_node("--version")
    assert result.returncode == 0
    assert result.stdout == f"ufdl-node {__version__}\n"


def test_bare_command_prints_help_and_exits_0():
    """`ufdl-node` alone prints the help with every command and the exit status, exit 0."""
    result = ufdl_node()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ufdl-node")
    assert "check-config" in result.stdout and "Exit status:" in result.stdout and result.stderr == ""


def test_every_command_has_a_description_and_every_option_a_help_text():
    """Each sub-command's help page has a description, and each of its arguments a help text."""
    missing = []
    commands = every_command(walk(build_parser()))[1:]
    assert len(commands) > 14
    for node in commands:
        if not node.description.strip():
            missing.append(" ".join(node.path))
        for action in node.options + node.positionals:
            if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{' '.join(node.path)} {action.option_strings or action.dest}")
    assert missing == []


def test_subcommand_help_page_shows_its_description():
    """`ufdl-node watch --help` shows what watch does and its exit status."""
    result = ufdl_node("watch", "--help")
    assert result.returncode == 0
    assert "Rides out a server restart" in result.stdout and "Exit 0 only if the job" in result.stdout


def test_dry_run_takes_handlers_dir_and_keeps_handlers_as_a_hidden_alias():
    """dry-run documents --handlers-dir; --handlers still works but is not shown."""
    parser = build_parser()
    new = parser.parse_args(["dry-run", "t", "--handlers-dir", "a"])
    old = parser.parse_args(["dry-run", "t", "--handlers", "a"])
    assert new.handlers_dir == old.handlers_dir == ["a"]
    shown = ufdl_node("dry-run", "--help").stdout
    assert "--handlers-dir" in shown and "--handlers " not in shown


def test_jobs_and_watch_refuse_options_that_would_do_nothing():
    """jobs and watch take no --handlers-dir and no --log-level (exit 2, argparse's one line)."""
    for args in (["jobs", "--log-level", "debug"], ["watch", "1", "--handlers-dir", "x"]):
        result = ufdl_node(*args)
        assert result.returncode == 2, args
        assert "unrecognized arguments" in result.stderr


def test_a_misspelled_environment_variable_is_warned_about_with_the_nearest_name():
    """UFDL_NODE_PASWORD gets a warning naming UFDL_NODE_PASSWORD; the command still runs."""
    result = ufdl_node("hwinfo", env={"UFDL_NODE_PASWORD": "s3cret-value"})
    assert result.returncode == 0
    assert "ufdl-node: warning: unknown environment variable UFDL_NODE_PASWORD, ignored " \
        "(did you mean UFDL_NODE_PASSWORD?)" in result.stderr
    assert "s3cret-value" not in result.stderr


def test_valid_environment_variables_get_no_warning():
    """Settings of the daemon and of the embedded server read from the environment are not warned about."""
    result = ufdl_node("hwinfo", env={"UFDL_NODE_PASSWORD": "x", "UFDL_NODE_SERVER_ADMIN": "a:b",
                                      "UFDL_NODE_POLL_INTERVAL_S": "2"})
    assert result.returncode == 0 and "warning" not in result.stderr


async def test_check_config_prints_no_debug_line_at_info_level(server, tmp_path):
    """check-config at the default log level prints no debug line (the client's login is debug)."""
    config = tmp_path / "c.toml"
    config.write_text(f'server_url = "{server.url}"\nstate_dir = "{tmp_path / "s"}"\n'
                      f'cache_dir = "{tmp_path / "c"}"\n')
    result = await asyncio.to_thread(ufdl_node, "check-config", "--config", str(config),
                                     env={"UFDL_NODE_PASSWORD": WORKER_PW})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "debug" not in (result.stdout + result.stderr).lower()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_daemon_logs_the_status_endpoint_once_and_signals_by_name(server, tmp_path, wait_for):
    """`run` logs its status endpoint's start once, and a SIGINT as "SIGINT", not <Signals.SIGINT: 2>."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    env |= {"UFDL_NODE_SERVER_URL": server.url, "UFDL_NODE_PASSWORD": WORKER_PW,
            "UFDL_NODE_STATE_DIR": str(tmp_path / "state"), "UFDL_NODE_CACHE_DIR": str(tmp_path / "cache"),
            "UFDL_NODE_STATUS_LISTEN": f"127.0.0.1:{port}", "UFDL_NODE_LOG_FORMAT": "json",
            "UFDL_NODE_GPU_INDICES": "[0]"}
    daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "ufdl_node", "run", env=env,
                                                  stderr=asyncio.subprocess.PIPE,
                                                  stdout=asyncio.subprocess.DEVNULL)
    events: list[dict] = []

    async def read() -> None:
        assert daemon.stderr is not None
        async for raw in daemon.stderr:
            try:
                events.append(json.loads(raw))
            except ValueError:
                events.append({"event": raw.decode()})

    reader = asyncio.create_task(read())
    await wait_for(lambda: any(e.get("event") == "node registered" for e in events), what="registration")
    daemon.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(daemon.wait(), 60) == 0
    await reader
    started = [e for e in events if "status" in str(e.get("event")) and str(port) in json.dumps(e)]
    assert len(started) == 1, started
    stops = [e for e in events if "signal received" in str(e.get("event"))]
    assert [e.get("signal") for e in stops] == ["SIGINT"], stops
