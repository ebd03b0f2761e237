"""The operator's commands: `nodes`, `unregister`, `pause`, `resume`, `cancel`, `logs`, `outputs`.

The server side is in :mod:`.opstools`; `pause` and `resume` signal the running daemon
(:mod:`ufdl_node.daemon.control`): SIGUSR1 and SIGUSR2 to the pid in its state
directory's lock, which the command checks is held. Errors are one line on stderr with
the exit code of the README's table (:class:`~ufdl_node.errors.ExitCode`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ..errors import ExitCode
from ..settings import NodeSettings
from .terminal import CommandFailed

PAUSE_WAIT_S = 10.0  # how long pause/resume wait for the daemon to say it has done so


def _against_server(args: argparse.Namespace,
                    make: Callable[[NodeSettings], Coroutine[Any, Any, ExitCode]]) -> ExitCode:
    """Run `make(settings)` with the server's faults as one-line errors."""
    from .options import node_settings
    from .usertools import server_errors

    settings = node_settings(args, need_password=True)
    with server_errors(settings):
        return asyncio.run(make(settings))


def _job_pk(text: str) -> int:
    """JOB on the command line: a job's pk (a positive integer)."""
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job number")
    return int(text)


def _nodes(args: argparse.Namespace) -> ExitCode:
    from .opstools import list_nodes

    return _against_server(args, lambda s: list_nodes(s, as_json=args.json))


def _unregister(args: argparse.Namespace) -> ExitCode:
    from .opstools import unregister

    return _against_server(args, unregister)


def _cancel(args: argparse.Namespace) -> ExitCode:
    from .opstools import cancel

    return _against_server(args, lambda s: cancel(s, args.job))


def _logs(args: argparse.Namespace) -> ExitCode:
    from .opstools import show_log

    return _against_server(args, lambda s: show_log(s, args.job, follow=args.follow))


def _outputs(args: argparse.Namespace) -> ExitCode:
    from .opstools import show_outputs

    directory = Path(args.dir) if args.dir else None
    return _against_server(args, lambda s: show_outputs(s, args.job, directory))


def _pause_or_resume(args: argparse.Namespace) -> ExitCode:
    """Signal the daemon of these settings, then wait until its pause marker says it is done."""
    from ..daemon.control import PAUSE_SIGNAL, RESUME_SIGNAL, NotRunning, paused_marker, signal_daemon
    from .options import node_settings
    from .usertools import SYSTEMD_STATE_DIR

    pause = args.command == "pause"
    settings = node_settings(args)
    try:
        pid, state_dir = signal_daemon([settings.state_dir, SYSTEMD_STATE_DIR],
                                       PAUSE_SIGNAL if pause else RESUME_SIGNAL)
    except NotRunning as e:
        raise CommandFailed(f"no running daemon: {e}", ExitCode.FAILURE) from None
    except PermissionError:
        raise CommandFailed("not allowed to signal the daemon: run this as its user, or root",
                            ExitCode.FAILURE) from None
    marker = paused_marker(state_dir)
    deadline = time.monotonic() + PAUSE_WAIT_S
    while marker.exists() != pause:
        if time.monotonic() > deadline:
            raise CommandFailed(f"signalled the daemon (pid {pid}) but it did not say it "
                                f"{'paused' if pause else 'resumed'} within {PAUSE_WAIT_S:.0f} s",
                                ExitCode.FAILURE)
        time.sleep(0.05)
    if pause:
        print(f"paused the daemon (pid {pid}): running jobs finish, no new job is taken; "
              "`ufdl-node resume` takes work again")
    else:
        print(f"resumed the daemon (pid {pid}): taking work again")
    return ExitCode.OK


def add_ops_commands(sub: Any) -> None:
    """nodes, unregister, pause, resume, cancel, logs, outputs."""
    from .options import node_options

    p = sub.add_parser("nodes", help="this host's nodes on the server: pk, GPU, state, current job",
                       description="List the node records of this host (its node_ip, else the address "
                       "it reaches the network with) on the server: pk, GPU index, GPU, state (working "
                       "on job N, idle, or offline when not seen for a while) and when it was last seen.")
    node_options(p, handlers=False, log_level=False)
    p.add_argument("--json", action="store_true", help="print the node records as JSON")
    p.set_defaults(func=_nodes)

    p = sub.add_parser("unregister", help="hand back this host's jobs and remove its nodes from the server",
                       description="With the daemon stopped: hand back every job this host's nodes hold "
                       "(a started one is ended ERRORED, reset and released, to run again elsewhere), then "
                       "delete the node records. The server keeps a node record that jobs refer to (it "
                       "answers the delete but keeps it); such a node is left holding nothing. Exit 1 "
                       "while a daemon runs these nodes.")
    node_options(p, handlers=False, log_level=False)
    p.set_defaults(func=_unregister)

    for name, text in (("pause", "stop taking work; running jobs finish (SIGUSR1 to the daemon)"),
                       ("resume", "take work again after a pause (SIGUSR2 to the daemon)")):
        p = sub.add_parser(name, help=text,
                           description=f"{text[0].upper()}{text[1:]}. The daemon is found by the state "
                           "directory of these settings (or /var/lib/ufdl-node); a pause outlasts a "
                           "restart. `ufdl-node status` shows it. Exit 1 when no daemon runs.")
        p.add_argument("--config", metavar="FILE", help="the daemon's TOML settings file")
        p.set_defaults(func=_pause_or_resume)

    _add_job_commands(sub)


def _add_job_commands(sub: Any) -> None:
    from .options import node_options

    p = sub.add_parser("cancel", help="cancel JOB on the server (an admin user)",
                       description="Cancel JOB: the node running it stops it. The server lets only an "
                       "admin (staff) user cancel. A job that has ended is left as it is.")
    node_options(p, handlers=False, log_level=False)
    p.add_argument("job", type=_job_pk, metavar="JOB", help="the job's number (pk)")
    p.set_defaults(func=_cancel)

    p = sub.add_parser("logs", help="print JOB's log",
                       description="Print JOB's log: the job log this host's daemon writes while it runs "
                       "the job, else the job's `log` output on the server (uploaded when a job ends). "
                       "--follow prints what is added until the job ends, or waits for the log output.")
    node_options(p, handlers=False, log_level=False)
    p.add_argument("job", type=_job_pk, metavar="JOB", help="the job's number (pk)")
    p.add_argument("--follow", "-f", action="store_true", help="follow the log until the job ends")
    p.set_defaults(func=_logs)

    p = sub.add_parser("outputs", help="list JOB's outputs, or download them with --dir",
                       description="List JOB's outputs (name and type, one a line), or download each "
                       "into DIR as a file of its name. A name that is not a plain file name (a path, "
                       "'..') is saved as output-PK instead: nothing is written outside DIR.")
    node_options(p, handlers=False, log_level=False)
    p.add_argument("job", type=_job_pk, metavar="JOB", help="the job's number (pk)")
    p.add_argument("--dir", metavar="DIR", help="download the outputs into DIR (made if missing)")
    p.set_defaults(func=_outputs)
