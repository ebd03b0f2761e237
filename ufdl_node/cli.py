"""The `ufdl-node` command.

  run           the worker daemon (usually under systemd)
  server        the embedded UFDL job server, in the foreground
  dry-run       run one job of a template through its handler on a throw-away server
  demo          a local server, a two-slot worker and a handful of jobs, live
  jobs          list the newest jobs on a server
  submit        create a job of a template on a server
  watch         a live progress bar for one job
  handlers      list the handlers this node would load
  hwinfo        print the hardware this node would register
  check-config  validate a config file and try the server and credentials
  init          write the commented example settings (and the systemd unit) to a path
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import AuthenticationFailed, ConfigError, ExitCode, PluginError, ServerError
from .logs import configure_logging, one_line
from .settings import NodeSettings, ServerSettings, load_settings, loose_permission_warnings, redacted


def _node_settings(args: argparse.Namespace, **extra: Any) -> NodeSettings:
    overrides: dict[str, Any] = {
        "server_url": getattr(args, "server_url", None),
        "username": getattr(args, "username", None),
        "log_level": getattr(args, "log_level", None),
    }
    if getattr(args, "handlers_dir", None):
        overrides["handler_dirs"] = [Path(d) for d in args.handlers_dir]
    overrides.update(extra)
    return load_settings(NodeSettings, getattr(args, "config", None), **overrides)


def _protect_process() -> None:
    """Make the daemon's /proc entries (environ, mem) unreadable to other processes of its user.

    Handler subprocesses run as the same user; without this they could read a password
    given as UFDL_NODE_PASSWORD from /proc/<daemon>/environ. (Linux; elsewhere a no-op.)
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0


def _run(args: argparse.Namespace) -> ExitCode:
    from .daemon.supervisor import run_daemon

    _protect_process()

    settings = _node_settings(args, exit_when_idle=True if args.exit_when_idle else None,
                              gpu_indices=args.gpu or None)
    configure_logging(settings.log_level, settings.log_format)
    for warning in loose_permission_warnings(args.config):
        print(f"ufdl-node: warning: {warning}", file=sys.stderr)
    return asyncio.run(run_daemon(settings))


def _server(args: argparse.Namespace) -> ExitCode:
    from .server import serve

    settings = load_settings(ServerSettings, args.config, host=args.host, port=args.port,
                             data_dir=args.data_dir, log_level=args.log_level)
    configure_logging(settings.log_level, settings.log_format)
    return ExitCode(asyncio.run(serve(settings)))


def _hwinfo(args: argparse.Namespace) -> ExitCode:
    from .hardware import detect_hardware, format_hwinfo

    info = detect_hardware()
    if args.json:
        print(json.dumps(info.as_dict(), indent=2, default=str))
    else:
        print(format_hwinfo(info))
    return ExitCode.OK


def _handlers(args: argparse.Namespace) -> ExitCode:
    from .registry import Registry, describe

    settings = _node_settings(args)
    configure_logging("error", "console")  # problems are printed below, once each
    registry = Registry.load(settings.handler_dirs, settings=settings)
    rows = describe(registry)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for row in rows:
            print(f"{row['name']}: templates {', '.join(row['templates'])}"
                  + (f" (versions {row['versions']})" if row.get("versions") else ""))
            print(f"    source: {row['source']}")
            print(f"    needs:  {row['needs']}")
    for problem in registry.problems:
        print(f"ufdl-node: plugin skipped: {problem}", file=sys.stderr)
    return ExitCode.FAILURE if registry.problems else ExitCode.OK


def _check_config(args: argparse.Namespace) -> ExitCode:
    """Validate settings and try the server; one line per problem, non-zero on any."""
    problems: list[str] = []
    try:
        settings = _node_settings(args)
    except ConfigError as e:
        for problem in e.problems:
            print(f"error: {problem}")
        return ExitCode.CONFIG
    print(json.dumps(redacted(settings), indent=2, default=str))
    for warning in loose_permission_warnings(args.config) + _environment_warnings():
        print(f"warning: {warning}")
    try:
        from .registry import Registry

        registry = Registry.load(settings.handler_dirs, settings=settings)
        problems.extend(f"handler plugin: {p}" for p in registry.problems)
    except PluginError as e:
        problems.append(f"handlers: {one_line(e)}")
    try:
        password = settings.resolved_password()
    except ConfigError as e:
        problems.extend(e.problems)
    else:
        problems.extend(asyncio.run(_check_server(settings, password)))
    for problem in problems:
        print(f"error: {problem}")
    if not problems:
        print(f"ok: {settings.server_url} answers and accepts user {settings.username!r}")
    return ExitCode.FAILURE if problems else ExitCode.OK


def _environment_warnings() -> list[str]:
    """A password in the environment of a root daemon is readable by its jobs (/proc)."""
    from .daemon.supervisor import root_password_warning

    warning = root_password_warning()
    return [] if warning is None else [warning]


async def _check_server(settings: NodeSettings, password: str) -> list[str]:
    from .client import UfdlClient

    client = UfdlClient(settings.server_url, settings.username, password,
                        request_timeout_s=min(settings.request_timeout_s, 10), retry_max_attempts=1)
    try:
        await client.login()
        await client.hardware_generations()
    except AuthenticationFailed:
        return [f"server {settings.server_url} refused the credentials of user {settings.username!r} "
                "(wrong username or password)"]
    except ServerError as e:
        return [f"server {settings.server_url} is not usable: {one_line(e, 300)}"]
    finally:
        await client.close()
    return []


def _dry_run(args: argparse.Namespace) -> ExitCode:
    from .local import dry_run

    return asyncio.run(dry_run(args.template, inputs=args.input or [], params=args.param or [],
                               handler_dirs=[Path(d) for d in args.handlers or []],
                               out_dir=Path(args.out), timeout_s=args.timeout))


def _demo(args: argparse.Namespace) -> ExitCode:
    from .local import demo

    return asyncio.run(demo(Path(args.data_dir), jobs=args.jobs))


def _jobs(args: argparse.Namespace) -> ExitCode:
    from .usertools import list_jobs

    return asyncio.run(list_jobs(_node_settings(args), template=args.template, every=args.all,
                                 limit=args.limit))


def _submit(args: argparse.Namespace) -> ExitCode:
    from .usertools import submit

    return asyncio.run(submit(_node_settings(args), args.template, version=args.version,
                              inputs=args.input or [], params=args.param or [],
                              description=args.description))


def _watch(args: argparse.Namespace) -> ExitCode:
    from .usertools import watch

    return asyncio.run(watch(_node_settings(args), args.job))


def _node_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML settings file (see config/ufdl-node.toml)")
    p.add_argument("--server-url", help="override server_url")
    p.add_argument("--username", help="override username")
    p.add_argument("--handlers-dir", action="append", help="handler directory (repeatable; replaces "
                   "handler_dirs)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _init(args: argparse.Namespace) -> ExitCode:
    from .init import InitError, init

    try:
        written = init(Path(args.path), Path(args.systemd) if args.systemd else None, force=args.force)
    except InitError as e:
        print(f"ufdl-node: init: {e}", file=sys.stderr)
        return ExitCode.FAILURE
    for path in written:
        print(f"wrote {path}")
    print(f"next: set server_url and username in {written[0]}, then "
          f"ufdl-node check-config --config {written[0]}")
    return ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per function above."""
    parser = argparse.ArgumentParser(prog="ufdl-node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_service_commands(sub)
    _add_user_commands(sub)
    _add_inspection_commands(sub)
    return parser


def _add_service_commands(sub: Any) -> None:
    """run, server: the daemon and the embedded job server."""
    p = sub.add_parser("run", help="run the worker daemon")
    _node_options(p)
    p.add_argument("--gpu", type=int, action="append", help="GPU index to serve (repeatable; default all)")
    p.add_argument("--exit-when-idle", action="store_true", help="exit once no work is left")
    p.set_defaults(func=_run)

    p = sub.add_parser("server", help="run the embedded UFDL job server in the foreground")
    p.add_argument("--config", help="TOML file with server settings")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--data-dir", help="where the database and outputs live")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_server)


def _add_user_commands(sub: Any) -> None:
    """dry-run, demo, jobs, submit, watch: what a handler author or a user runs."""
    p = sub.add_parser("dry-run", help="run one job of TEMPLATE on a throw-away embedded server")
    p.add_argument("template")
    p.add_argument("--input", action="append", metavar="NAME=VALUE[:TYPE]")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.add_argument("--handlers", action="append", metavar="DIR", help="extra handler directory")
    p.add_argument("--out", default="dry-run", help="where outputs and the log go (default ./dry-run)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.set_defaults(func=_dry_run)

    p = sub.add_parser("demo", help="embedded server + two-slot worker + a handful of jobs, live")
    p.add_argument("--data-dir", default="demo-data", help="server data directory (kept afterwards)")
    p.add_argument("--jobs", type=int, default=4, help="successful training jobs to run (default 4)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("jobs", help="list the newest jobs on the server")
    _node_options(p)
    p.add_argument("--template", help="only jobs of this template")
    p.add_argument("--all", action="store_true", help="finished ones too")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=_jobs)

    p = sub.add_parser("submit", help="create a job of TEMPLATE on the server")
    _node_options(p)
    p.add_argument("template")
    p.add_argument("--version", type=int, help="template version (default: the newest)")
    p.add_argument("--input", action="append", metavar="NAME=VALUE:TYPE")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.add_argument("--description", default="submitted with ufdl-node")
    p.set_defaults(func=_submit)

    p = sub.add_parser("watch", help="a live progress bar for JOB until it ends")
    _node_options(p)
    p.add_argument("job", type=int)
    p.set_defaults(func=_watch)


def _add_inspection_commands(sub: Any) -> None:
    """handlers, hwinfo, check-config: what a node would do, without doing it."""
    p = sub.add_parser("handlers", help="list the handlers, their templates, sources and needs")
    _node_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_handlers)

    p = sub.add_parser("hwinfo", help="print the hardware this node registers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_hwinfo)

    p = sub.add_parser("check-config", help="validate settings and try the server and credentials")
    _node_options(p)
    p.set_defaults(func=_check_config)

    p = sub.add_parser("init", help="write the commented example settings (and the systemd unit) to PATH",
                       description="Write the commented example settings to PATH and, with --systemd, "
                       "the systemd unit (its ExecStart pointing at this install and PATH). Exit 1, "
                       "writing nothing, when a file exists and --force is not given.")
    p.add_argument("path", metavar="PATH",
                   help="where to write the settings, e.g. /etc/ufdl-node/config.toml")
    p.add_argument("--systemd", metavar="UNIT_PATH",
                   help="also write the unit, e.g. /etc/systemd/system/ufdl-node.service")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_init)


def main(argv: Sequence[str] | None = None) -> ExitCode:
    """The `ufdl-node` command; returns its exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: ExitCode = args.func(args)
        return code
    except ConfigError as e:
        for problem in e.problems:
            print(f"ufdl-node: config: {problem}", file=sys.stderr)
        return ExitCode.CONFIG
    except PluginError as e:
        print(f"ufdl-node: handlers: {one_line(e)}", file=sys.stderr)
        return ExitCode.CONFIG
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
