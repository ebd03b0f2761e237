"""The `ufdl-node` command.

  run           the worker daemon (usually under systemd)
  status        what a running daemon is doing: slots, jobs, progress, last error
  server        the embedded UFDL job server, in the foreground
  dry-run       run one job of a template through its handler on a throw-away server
  demo          a local server, a two-slot worker and a handful of jobs, live
  jobs          list the newest jobs on a server
  submit        create a job of a template on a server
  watch         a live progress bar for one job
  dataset add   put a local folder on a server as a dataset
  templates     import the handlers' job templates into a server, or list a server's
  handlers      list the handlers this node would load
  hwinfo        print the hardware this node would register
  check-config  validate a config file, the directories and the server and credentials
  init          write the commented example settings (and the systemd unit) to a path
  completion    print a bash or zsh completion script
  nodes         this host's nodes on the server: pk, GPU, state, current job
  unregister    hand back this host's jobs and remove its nodes from the server
  pause/resume  stop taking work (running jobs finish) / take work again
  cancel        cancel a job on the server
  logs          print a job's log (--follow)
  outputs       list a job's outputs, or download them (--dir)

Exit status: 0 done; 1 failed (a job that did not finish, a server that cannot be
reached or refuses a call, no such job); 2 bad settings, arguments or handlers;
3 the server refused the credentials; 4 the daemon was stopped at once by a second
signal; 130 interrupted (Ctrl-C). `ufdl-node` alone prints this help and exits 0.
Errors are one line on stderr. Listings to a pipe or a file are a header line and
tab-separated rows; --json (jobs, templates list, handlers, status) prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..errors import AuthenticationFailed, ConfigError, ExitCode, PluginError, ServerError
from ..logs import configure_logging, one_line
from ..settings import (
    SHIPPED_DOCKER_DIR,
    SHIPPED_HANDLERS_DIR,
    NodeSettings,
    ServerSettings,
    directories_to_write,
    directory_problem,
    load_settings,
    loose_permission_warnings,
    redacted,
    unknown_env_warnings,
)
from .options import LOG_LEVELS, SettingsProblem, node_options, node_settings
from .terminal import CommandFailed, error_line


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
    from ..daemon.supervisor import run_daemon

    _protect_process()

    settings = node_settings(args, exit_when_idle=True if args.exit_when_idle else None,
                             gpu_indices=args.gpu or None)
    # A directory the daemon cannot write is a setting to fix, not a crash to restart in a loop.
    problems = [f"{name} {path}: {problem}" for name, path in directories_to_write(settings)
                if (problem := directory_problem(path)) is not None]
    if problems:
        raise SettingsProblem(problems)
    configure_logging(settings.log_level, settings.log_format)
    for warning in loose_permission_warnings(args.config):
        error_line("warning", warning)
    return asyncio.run(run_daemon(settings))


def _server(args: argparse.Namespace) -> ExitCode:
    from ..server import serve

    try:
        settings = load_settings(ServerSettings, args.config, host=args.host, port=args.port,
                                 data_dir=args.data_dir, log_level=args.log_level,
                                 outputs_at_reset=args.outputs_at_reset)
    except ConfigError as e:
        raise SettingsProblem(e.problems) from None
    configure_logging(settings.log_level, settings.log_format)
    return ExitCode(asyncio.run(serve(settings)))


def _hwinfo(args: argparse.Namespace) -> ExitCode:
    from ..daemon.containers import probe_docker
    from ..hardware import detect_hardware, format_hwinfo

    info = detect_hardware()
    docker = asyncio.run(probe_docker())
    if args.json:
        print(json.dumps(info.as_dict() | {"docker": docker.as_dict()}, indent=2, default=str))
    else:
        print(format_hwinfo(info))
        print(docker.summary())
    return ExitCode.OK


def _handlers(args: argparse.Namespace) -> ExitCode:
    from ..registry import Registry, describe

    settings = node_settings(args)
    configure_logging("error", "console")  # problems are printed below, once each
    registry = Registry.load(settings.handler_dirs, settings=settings)
    rows = describe(registry)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        shown = "left out (builtin_handlers = false)" if not settings.builtin_handlers else \
            f"{SHIPPED_HANDLERS_DIR}; the shipped docker definitions: {SHIPPED_DOCKER_DIR}"
        print(f"built-in handlers: {shown}")
        for row in rows:
            print(f"{row['name']}: templates {', '.join(row['templates'])}"
                  + (f" (versions {row['versions']})" if row.get("versions") else ""))
            print(f"    source: {row['source']}")
            print(f"    needs:  {row['needs']}")
    for problem in registry.problems:
        error_line("plugin skipped", problem)
    return ExitCode.FAILURE if registry.problems else ExitCode.OK


def _check_config(args: argparse.Namespace) -> ExitCode:
    """Validate settings, directories and the server: the report (effective settings, what is ok) on
    stdout, each problem as one line on stderr; the exit code of the gravest (README's table)."""
    settings = node_settings(args)  # a settings problem: `config:` lines and exit 2 (main)
    configure_logging(settings.log_level, "console")
    print(json.dumps(redacted(settings), indent=2, default=str))
    for warning in loose_permission_warnings(args.config) + _environment_warnings():
        error_line("check-config: warning", warning)
    problems: list[tuple[ExitCode, str]] = []
    for name, path in directories_to_write(settings):
        trouble = directory_problem(path)
        if trouble is None:
            print(f"ok: {name} {path} is writable")
        else:
            problems.append((ExitCode.CONFIG, f"{name} {path}: {trouble}"))
    try:
        from ..registry import Registry

        registry = Registry.load(settings.handler_dirs, settings=settings)
        problems.extend((ExitCode.CONFIG, f"handler plugin: {p}") for p in registry.problems)
    except ConfigError as e:  # a definition's unknown key: one line each, as the settings' own
        problems.extend((ExitCode.CONFIG, p) for p in e.problems)
    except PluginError as e:
        problems.append((ExitCode.CONFIG, f"handlers: {one_line(e)}"))
    problems.extend((ExitCode.CONFIG, p) for p in _check_gpus(settings))
    problems.extend((ExitCode.FAILURE, p) for p in _check_docker(settings))
    try:
        password = settings.resolved_password()
    except ConfigError as e:
        problems.extend((ExitCode.CONFIG, p) for p in e.problems)
    else:
        problems.extend(asyncio.run(_check_server(settings, password)))
    for _, problem in problems:
        error_line("check-config", problem)
    if not problems:
        print(f"ok: {settings.server_url} answers and accepts user {settings.username!r}")
        return ExitCode.OK
    codes = {code for code, _ in problems}
    return next(code for code in (ExitCode.CONFIG, ExitCode.AUTH, ExitCode.FAILURE) if code in codes)


def _check_gpus(settings: NodeSettings) -> list[str]:
    """gpu_indices against this machine's GPUs, as `run` checks them at start."""
    from ..hardware import detect_hardware, slot_indices

    try:
        slots = slot_indices(detect_hardware(), settings.gpu_indices)
    except ConfigError as e:
        return e.problems
    print(f"ok: slots for GPU indices {', '.join(map(str, slots))}")
    return []


def _check_docker(settings: NodeSettings) -> list[str]:
    """Print what Docker offers; a problem only where the settings name container templates of
    their own (the shipped definitions alone are offered where Docker answers, and left out where not)."""
    from ..daemon.containers import probe_docker

    facts = asyncio.run(probe_docker(settings.docker_url))
    print(f"docker: {facts.summary()}")
    own_dirs = [d for d in settings.docker_template_dirs if Path(d).resolve() != SHIPPED_DOCKER_DIR.resolve()]
    if not facts.reachable and (settings.docker_templates or own_dirs):
        return [f"docker templates are configured but {facts.summary()}"]
    if not facts.reachable and settings.docker_template_dirs:
        print("docker: the shipped container templates are not offered on this node")
    return []


def _environment_warnings() -> list[str]:
    """A password in the environment of a root daemon is readable by its jobs (/proc)."""
    from ..settings import root_password_warning

    warning = root_password_warning()
    return [] if warning is None else [warning]


async def _check_server(settings: NodeSettings, password: str) -> list[tuple[ExitCode, str]]:
    from ..client import UfdlClient

    client = UfdlClient(settings.server_url, settings.username, password,
                        request_timeout_s=min(settings.request_timeout_s, 10), retry_max_attempts=1)
    try:
        await client.login()
        await client.hardware_generations()
    except AuthenticationFailed:
        return [(ExitCode.AUTH, f"server {settings.server_url} refused the credentials of user "
                 f"{settings.username!r} (wrong username or password)")]
    except ServerError as e:
        return [(ExitCode.FAILURE, f"server {settings.server_url} is not usable: {one_line(e, 300)}")]
    finally:
        await client.close()
    return []


def _init(args: argparse.Namespace) -> ExitCode:
    from .init import InitError, init

    try:
        written = init(Path(args.path), Path(args.systemd) if args.systemd else None, force=args.force)
    except InitError as e:
        raise CommandFailed(str(e), ExitCode.FAILURE) from None
    for path in written:
        print(f"wrote {path}")
    print(f"next: set server_url and username in {written[0]}, put the password in a file of mode 600, "
          f"then UFDL_NODE_PASSWORD_FILE=FILE ufdl-node check-config --config {written[0]}")
    return ExitCode.OK


class _ManAction(argparse.Action):
    """--help-man: print the man page made from this parser, and exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from .extras import man_page

        sys.stdout.write(man_page(parser))
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its errors as every other: one line on stderr, exit 2 (not a usage
    block); the sub-commands' parsers are of this class too (add_subparsers takes the class)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ufdl-node").strip()
        self.exit(ExitCode.CONFIG, f"ufdl-node: {command + ': ' if command else ''}{message} "
                  f"(`{self.prog} --help` lists the arguments)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per function here and in cli/user.py."""
    from .ops import add_ops_commands
    from .user import add_user_commands

    parser = _Parser(prog="ufdl-node", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ufdl-node {__version__}")
    parser.add_argument("--help-man", action=_ManAction, help="print the man page (roff) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_service_commands(sub)
    add_user_commands(sub)
    add_ops_commands(sub)
    _add_inspection_commands(sub)
    _add_completion_command(sub)
    return parser


def _add_service_commands(sub: Any) -> None:
    """run, server: the daemon and the embedded job server."""
    p = sub.add_parser("run", help="run the worker daemon",
                       description="Run the worker daemon: register a node per GPU, take jobs, run them "
                       "through their handlers. The first SIGTERM/SIGINT drains (running jobs get "
                       "grace_period_s), a second stops at once.")
    node_options(p)
    p.add_argument("--gpu", type=int, action="append", metavar="INDEX",
                   help="GPU index to serve (repeatable; default all)")
    p.add_argument("--exit-when-idle", action="store_true", help="exit once no work is left")
    p.set_defaults(func=_run)

    p = sub.add_parser("server", help="run the embedded UFDL job server in the foreground",
                       description="Run the embedded UFDL job server in the foreground (loopback, "
                       "port 8000 by default). On first start it creates an admin user; see "
                       "UFDL_NODE_SERVER_ADMIN and UFDL_NODE_SERVER_WORKER.")
    p.add_argument("--config", metavar="FILE", help="TOML file with server settings")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--data-dir", metavar="DIR", help="where the database and outputs live")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="how much to log (default info)")
    p.add_argument("--outputs-at-reset", choices=("keep", "remove"),
                   help="what reset and abort do to a job's outputs: keep them soft-deleted as "
                   "the real server does (default), or remove them for good")
    p.set_defaults(func=_server)


def _add_inspection_commands(sub: Any) -> None:
    """handlers, hwinfo, check-config, init: what a node would do, without doing it."""
    p = sub.add_parser("handlers", help="list the handlers, their templates, sources and needs",
                       description="List every handler this node would load (from handler_dirs and "
                       "installed plugins), with its templates, source and needs. Exit 1 when a "
                       "plugin could not be loaded.")
    node_options(p, log_level=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_handlers)

    p = sub.add_parser("hwinfo", help="print the hardware this node registers",
                       description="Print the hardware this node would register (NVML, or CPU-only).")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_hwinfo)

    p = sub.add_parser("check-config", help="validate settings, directories, the server and credentials",
                       description="Print the effective settings (secrets masked), check that every "
                       "directory the daemon writes is writable, load the handlers, and try the server "
                       "and the credentials: the report on stdout, one line per problem on stderr. Exit 0 "
                       "when all is well, 2 for bad settings, directories or handlers, 3 when the server "
                       "refuses the credentials, 1 when the server (or Docker, where container templates "
                       "are set) cannot be used.")
    node_options(p)
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


def _sub_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub-)command `args` chose, e.g. that of `templates list`."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, sub.dest, None) if sub is not None else None
        if sub is None or chosen not in sub.choices:
            return parser
        parser = sub.choices[chosen]


def _completion(args: argparse.Namespace) -> ExitCode:
    from .extras import bash_script, zsh_script

    parser = build_parser()
    sys.stdout.write(bash_script(parser) if args.shell == "bash" else zsh_script(parser))
    return ExitCode.OK


def _add_completion_command(sub: Any) -> None:
    """`ufdl-node completion bash|zsh`."""
    p = sub.add_parser("completion", help="print a bash or zsh completion script",
                       description="Print a completion script for SHELL, generated from this command's "
                       "parser. bash: `source <(ufdl-node completion bash)` (or save it in "
                       "/etc/bash_completion.d/ufdl-node); zsh: save it as _ufdl-node in a directory "
                       "of $fpath.")
    p.add_argument("shell", choices=["bash", "zsh"], metavar="SHELL", help="bash or zsh")
    p.set_defaults(func=_completion)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail on the
    closed pipe again (what the Python docs advise for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> ExitCode:
    """The `ufdl-node` command; returns its exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.print_help()
        return ExitCode.OK
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the sub-command's parser, so that the line names the command
        _sub_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    for warning in unknown_env_warnings():
        error_line("warning", warning)
    try:
        code: ExitCode = args.func(args)
        return code
    except CommandFailed as e:
        error_line(args.command, e.message)
        return ExitCode(e.code)
    except ConfigError as e:
        label = "config" if isinstance(e, SettingsProblem) else args.command
        for problem in e.problems:
            error_line(label, problem)
        return ExitCode.CONFIG
    except PluginError as e:
        error_line("handlers", one_line(e))
        return ExitCode.CONFIG
    except ServerError as e:  # a server call no command turned into its own message
        error_line(args.command, one_line(e, 300))
        return ExitCode.FAILURE
    except BrokenPipeError:  # the reader went away (`| head`): nothing to say to anyone
        _quiet_stdout()
        return ExitCode.FAILURE
    except OSError as e:  # a file or directory the command needed: one line, not a traceback
        where = f": {e.filename}" if e.filename else ""
        error_line(args.command, f"{e.strerror or e}{where}")
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        error_line(args.command, "interrupted")
        return ExitCode.INTERRUPTED
