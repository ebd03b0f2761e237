"""The `ufdl-node` commands a person runs: dry-run, demo, jobs, submit, watch, dataset add,
templates, status.

Each turns what can go wrong into one line on stderr and an exit code (see the exit
status in ``cli``): server faults through :func:`~ufdl_node.cli.usertools.server_errors`,
the rest as :class:`~ufdl_node.cli.terminal.CommandFailed`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ..errors import ExitCode
from .terminal import CommandFailed


def _against_server(args: argparse.Namespace, make: Any) -> ExitCode:
    """Run `make(settings)`'s coroutine with the server's faults as one-line errors."""
    from .main import node_settings
    from .usertools import server_errors

    settings = node_settings(args, need_password=True)
    coroutine: Coroutine[Any, Any, ExitCode] = make(settings)
    with server_errors(settings):
        return asyncio.run(coroutine)


def _jobs(args: argparse.Namespace) -> ExitCode:
    from .usertools import list_jobs

    return _against_server(args, lambda s: list_jobs(s, template=args.template, every=args.all,
                                                     limit=args.limit))


def _submit(args: argparse.Namespace) -> ExitCode:
    from .usertools import submit

    return _against_server(args, lambda s: submit(s, args.template, version=args.version,
                                                  inputs=args.input or [], params=args.param or [],
                                                  description=args.description))


def _watch(args: argparse.Namespace) -> ExitCode:
    from .usertools import watch

    return _against_server(args, lambda s: watch(s, args.job))


def _dataset_add(args: argparse.Namespace) -> ExitCode:
    from .usertools import add_dataset

    return _against_server(args, lambda s: add_dataset(s, Path(args.folder), domain=args.domain,
                                                       name=args.name, project=args.project,
                                                       licence=args.licence, tags=args.tags,
                                                       public=args.public))


def _templates(args: argparse.Namespace) -> ExitCode:
    from .usertools import import_templates, list_templates

    if args.templates_command == "import":
        return _against_server(args, lambda s: import_templates(s, args.names))
    return _against_server(args, list_templates)


def _status(args: argparse.Namespace) -> ExitCode:
    from .main import node_settings
    from .usertools import show_status

    return asyncio.run(show_status(node_settings(args), as_json=args.json))


def _dry_run(args: argparse.Namespace) -> ExitCode:
    from .local import dry_run

    if args.timeout is not None and args.timeout <= 0:
        raise CommandFailed("--timeout must be a positive number of seconds", ExitCode.CONFIG)
    return asyncio.run(dry_run(args.template, inputs=args.input or [], params=args.param or [],
                               handler_dirs=[Path(d) for d in args.handlers_dir or []],
                               out_dir=Path(args.out), timeout_s=args.timeout,
                               docker_template_dirs=[Path(d) for d in args.docker_template_dir or []],
                               config=Path(args.config) if args.config else None))


def _demo(args: argparse.Namespace) -> ExitCode:
    from .local import demo

    return asyncio.run(demo(Path(args.data_dir), jobs=args.jobs))


def add_user_commands(sub: Any) -> None:
    """dry-run, demo, jobs, submit, watch, dataset, templates, status: what a handler author or a
    user runs."""
    from .main import node_options

    _add_local_commands(sub)

    p = sub.add_parser("jobs", help="list the newest jobs on the server",
                       description="List the newest jobs on the server with their phase, node and "
                       "error: only waiting and running ones unless --all.")
    node_options(p, handlers=False, log_level=False)
    p.add_argument("--template", metavar="NAME", help="only jobs of this template")
    p.add_argument("--all", action="store_true", help="finished, errored and cancelled ones too")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="show at most N jobs (default 20)")
    p.set_defaults(func=_jobs)

    p = sub.add_parser("submit", help="create a job of TEMPLATE on the server",
                       description="Create a job of the newest version of TEMPLATE (or --version) on "
                       "the server, asking for web-socket notifications so that `watch` shows its "
                       "progress; print its number.")
    node_options(p, handlers=False, log_level=False)
    p.add_argument("template", metavar="TEMPLATE", help="the job template's name")
    p.add_argument("--version", type=int, help="template version (default: the newest)")
    p.add_argument("--input", action="append", metavar="NAME=VALUE[:TYPE]",
                   help="an input value (repeatable); TYPE may be left out for the dataset of a Train "
                   "or Predict template and the model of a Predict one: dataset=3, dataset=DIR (a "
                   "local folder, made a dataset first), model=job:N[/NAME] (job N's output NAME, "
                   "default model)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a parameter value, typed by the template (repeatable)")
    p.add_argument("--description", default="submitted with ufdl-node", help="the job's description")
    p.set_defaults(func=_submit)

    p = sub.add_parser("watch", help="a live progress bar for JOB until it ends",
                       description="Follow JOB until it ends: a live progress bar on a terminal, one "
                       "line per change otherwise. Rides out a server restart. Exit 0 only if the job "
                       "FINISHED.")
    node_options(p, handlers=False, log_level=False)
    p.add_argument("job", type=int, metavar="JOB", help="the job's number (pk)")
    p.set_defaults(func=_watch)

    _add_dataset_command(sub)
    _add_templates_command(sub)

    p = sub.add_parser("status", help="what the running daemon is doing",
                       description="Show what the daemon of these settings is doing: its slots and "
                       "nodes, each slot's job (template, phase, progress, running time), the last "
                       "error and whether the server is reachable. Read from the status endpoint "
                       "(status_listen) when it is on, else from the snapshot the daemon keeps in its "
                       "state directory. Exit 1 when the daemon is not running.")
    p.add_argument("--config", metavar="FILE", help="the daemon's TOML settings file")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=_status)


def _add_local_commands(sub: Any) -> None:
    p = sub.add_parser("dry-run", help="run one job of TEMPLATE on a throw-away embedded server",
                       description="Run one job of TEMPLATE through its handler on a throw-away "
                       "embedded server, with a live progress bar; save the outputs and the log in "
                       "OUT/<job>-<time>/. Exit 0 only if the job FINISHED; 130 on Ctrl-C.")
    p.add_argument("template", metavar="TEMPLATE", help="the job template a handler serves")
    p.add_argument("--input", action="append", metavar="NAME=VALUE[:TYPE]",
                   help="an input value (repeatable); TYPE may be left out when the handler's "
                   "template declares the input. Local things go on the throw-away server first: "
                   "dataset=DIR (a folder made a dataset), model=FILE (a file made a job's output), "
                   "model=job:N[/NAME] (job N's output NAME)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a parameter value, typed by the template (repeatable)")
    p.add_argument("--handlers-dir", action="append", metavar="DIR",
                   help="extra handler directory (repeatable)")
    p.add_argument("--handlers", action="append", dest="handlers_dir", help=argparse.SUPPRESS)
    p.add_argument("--docker-template-dir", action="append", metavar="DIR",
                   help="a directory of docker template definitions, NAME.toml (repeatable; "
                   "the shipped ones in handlers/docker.d always load): TEMPLATE may be one of them")
    p.add_argument("--config", metavar="FILE",
                   help="the node's TOML settings: its handler directories, docker definitions and "
                   "docker settings apply (a docker_image=REF parameter that is an image reference "
                   "becomes a CPU docker-image record on the throw-away server)")
    p.add_argument("--out", default="dry-run", metavar="DIR",
                   help="where each run's outputs and log go (default ./dry-run)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up after this many seconds")
    p.set_defaults(func=_dry_run)

    p = sub.add_parser("demo", help="embedded server + two-slot worker + a handful of jobs, live",
                       description="Start an embedded server and a two-slot worker and run a handful of "
                       "jobs live: training jobs, a plain script, one that fails, one cancelled.")
    p.add_argument("--data-dir", default="demo-data", metavar="DIR",
                   help="server data directory (kept afterwards; default ./demo-data)")
    p.add_argument("--jobs", type=int, default=4, metavar="N",
                   help="successful training jobs to run (default 4)")
    p.set_defaults(func=_demo)


def _add_templates_command(sub: Any) -> None:
    from .main import node_options

    p = sub.add_parser("templates", help="import the handlers' job templates into a server, or list them",
                       description="Job templates on a server: `import` creates them from the handlers' "
                       "TemplateDescription (an admin user), `list` shows what the server has.")
    inner = p.add_subparsers(dest="templates_command", required=True, metavar="ACTION")
    q = inner.add_parser("import", help="create the handlers' templates on the server (admin)",
                         description="Create on the server a job template for each NAME (default: every "
                         "template a handler serves), from the handler's TemplateDescription. A name the "
                         "server already has is skipped. Needs an admin (staff) user.")
    node_options(q, log_level=False)
    q.add_argument("names", nargs="*", metavar="NAME", help="template names (default: all)")
    q.set_defaults(func=_templates)
    q = inner.add_parser("list", help="list the job templates on the server",
                         description="List the job templates on the server: name, version, pk, type "
                         "and parameters.")
    node_options(q, handlers=False, log_level=False)
    q.set_defaults(func=_templates)


def _add_dataset_command(sub: Any) -> None:
    from .main import node_options

    p = sub.add_parser("dataset", help="put a local folder on the server as a dataset",
                       description="Datasets on a server: `add` makes one from a local folder.")
    inner = p.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    q = inner.add_parser("add", help="create a dataset from FOLDER and print its pk",
                         description="Create a dataset from FOLDER through the domain's own routes, as "
                         "the web UI does. Image or spectrum classification (ic, sc): a sub-folder per "
                         "label holding its files, or the files with a labels.csv of 'file,label' lines. "
                         "Object detection (od): images with a COCO .json, or YOLO .txt files beside the "
                         "images and the label names in labels.txt, classes.txt or obj.names. Speech "
                         "(sp): audio files with a transcriptions.csv of 'file,transcription' lines. "
                         "Prints the new dataset's pk on stdout (the next version when the name exists). "
                         "A folder that cannot be read as a dataset (a file without its label, a label "
                         "for a file it lacks), an unknown domain or licence is one line and exit 2, "
                         "before the server is changed; a failure after the create deletes the dataset.")
    node_options(q, handlers=False, log_level=False)
    q.add_argument("folder", metavar="FOLDER", help="the folder holding the dataset's files")
    q.add_argument("--domain", default="ic", metavar="DOMAIN",
                   help="the data domain: ic, od, sp, sc or its name, e.g. 'Object Detection' (default ic)")
    q.add_argument("--name", metavar="NAME", help="the dataset's name (default: the folder's name)")
    q.add_argument("--project", type=int, metavar="PK",
                   help="the project it belongs to (default: the server's first project)")
    q.add_argument("--licence", metavar="NAME|PK", help="its licence, by name or pk (default: 'Apache 2.0', "
                   "else the server's first licence)")
    q.add_argument("--tags", default="", metavar="TAGS", help="its tags, comma-separated (default none)")
    q.add_argument("--public", action="store_true", help="make it public (default: private)")
    q.set_defaults(func=_dataset_add)
