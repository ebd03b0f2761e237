"""Commands for a person at a terminal, against any UFDL server: `jobs`, `submit`, `watch`, `templates`,
`dataset add`.

They use the same settings as the daemon (server_url, username, password from a
file, the environment or the command line), so `ufdl-node jobs --config
/etc/ufdl-node/config.toml` shows what the node sees. Whatever goes wrong with the
server (wrong password, unreachable or wrong URL, no such job) ends as one line on
stderr and an exit code (:func:`server_errors`), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..client import UfdlClient
from ..errors import (
    AuthenticationFailed,
    ExitCode,
    MalformedReply,
    NotFound,
    PermissionDenied,
    ServerError,
    ServerUnavailable,
    TransientError,
)
from ..logs import configure_logging, one_line
from ..protocol import Phase, display_phase
from ..settings import NodeSettings
from .progress import FINAL, JobProgress, final_line, phase_text, reason_text
from .terminal import CommandFailed, error_line, live_view, make_console, note, print_rows

# What a job is created with so that the real server accepts a web socket on it (UFDL-API.md
# section 3): without it, `watch` could only poll, and the real job record carries no progress.
WS_ACTIONS = ("acquire", "release", "start", "progress", "finish", "error", "reset", "abort", "cancel")
WS_NOTIFICATION_OVERRIDE: dict[str, Any] = {"keep_default": True,
                                            "actions": {f"on_{a}": [{}] for a in WS_ACTIONS}}
LOGIN_ACTIONS = ("obtain", "refresh", "verify", "login")
SYSTEMD_STATE_DIR = Path("/var/lib/ufdl-node")  # StateDirectory=ufdl-node of the shipped unit


def _client(settings: NodeSettings) -> UfdlClient:
    return UfdlClient(settings.server_url, settings.username, settings.resolved_password(),
                      request_timeout_s=min(settings.request_timeout_s, 30), retry_max_attempts=3)


@contextlib.contextmanager
def server_errors(settings: NodeSettings) -> Iterator[None]:
    """Turn what the server says (or does not) into CommandFailed: one line, a documented exit code."""
    url, user = settings.server_url, settings.username
    try:
        yield
    except AuthenticationFailed:
        raise CommandFailed(f"{url} refused the credentials of user {user!r} (wrong username or password)",
                            ExitCode.AUTH) from None
    except ServerUnavailable as e:
        raise CommandFailed(f"{reason_text(e)}; is the server running, and is server_url "
                            f"right? (`ufdl-node check-config` tries it)", ExitCode.FAILURE) from None
    except NotFound as e:
        if e.action in LOGIN_ACTIONS:
            raise CommandFailed(f"{url} answered 404 to the login: is it the address of a UFDL server?",
                                ExitCode.FAILURE) from None
        raise CommandFailed(f"{url}: {one_line(e, 300)}", ExitCode.FAILURE) from None
    except PermissionDenied as e:
        raise CommandFailed(f"{url} does not let user {user!r} do that ({e.action}): "
                            f"{reason_text(e)}", ExitCode.FAILURE) from None
    except MalformedReply as e:
        raise CommandFailed(f"{url} does not answer like a UFDL server: {reason_text(e)}",
                            ExitCode.FAILURE) from None
    except ServerError as e:
        raise CommandFailed(f"{url}: {one_line(e, 300)}", ExitCode.FAILURE) from None


# -- jobs and submit ----------------------------------------------------------------------------


async def list_jobs(settings: NodeSettings, *, template: str | None, every: bool,
                    limit: int, as_json: bool = False) -> ExitCode:
    """Print the newest jobs (only waiting and running ones unless `every`)."""
    configure_logging("error", "console")
    expressions: list[dict[str, Any]] = []
    if template:
        expressions.append({"type": "exact", "field": "template.name", "value": template})
    if not every:
        # The real server leaves end_time null on a cancel: its error_reason tells it apart.
        expressions += [{"type": "isnull", "field": "end_time"}, {"type": "isnull", "field": "error_reason"}]
    spec = {"expressions": expressions, "order_by": [{"field": "pk", "ascending": False}]}
    async with _client(settings) as client:
        found = await client.list_jobs(spec)
    if not every:
        found = [job for job in found if display_phase(job) not in FINAL]
    found = found[:limit]
    rows = []
    for job in found:
        template_ = job.get("template") or {}
        name = f"{template_.get('name')} v{template_.get('version')}" if isinstance(template_, dict) \
            else str(template_)
        node = job.get("node")
        rows.append({"job": job["pk"], "template": name, "phase": phase_text(job),
                     "node": node.get("pk") if isinstance(node, dict) else node,
                     "description": one_line(job.get("description") or "", 40),
                     "error": one_line(job.get("error_reason") or "", 200)})
    print_rows(rows, ("job", "template", "phase", "node", "description", "error"), as_json=as_json,
               records=[job | {"phase": phase_text(job)} for job in found],
               title=f"jobs on {settings.server_url}",
               empty="no jobs" + ("" if every else " waiting or running (--all shows finished ones too)"))
    return ExitCode.OK


async def _find_template(client: UfdlClient, name: str, version: int | None = None) -> dict[str, Any] | None:
    expressions: list[dict[str, Any]] = [{"type": "exact", "field": "name", "value": name}]
    if version is not None:
        expressions.append({"type": "exact", "field": "version", "value": version})
    found = await client.list_templates({"expressions": expressions,
                                         "order_by": [{"field": "version", "ascending": False}]})
    return found[0] if found else None


async def submit(settings: NodeSettings, template_name: str, *, version: int | None, inputs: list[str],
                 params: list[str], description: str) -> ExitCode:
    """Create a job of the newest (or given) version of `template_name`; print its pk on stdout."""
    configure_logging("error", "console")
    async with _client(settings) as client:
        found = await _find_template(client, template_name, version)
        if found is None:
            raise CommandFailed(f"no job template {template_name!r}"
                                + (f" version {version}" if version is not None else "")
                                + f" on {settings.server_url} (`ufdl-node templates list` shows them; "
                                "`ufdl-node templates import` makes them from the handlers)", ExitCode.CONFIG)
        template = await client.get_template(int(found["pk"]))
        from .local import contract_input_types, local_inputs, parse_inputs, parse_params

        param_values = parse_params(params, template["name"], template.get("parameters") or {})
        # A folder for a dataset input becomes a dataset first, job:N[/NAME] a job's output; a
        # refusal on the way is the server's fault to report (server_errors), not the job's.
        declared = contract_input_types(template.get("type"))
        input_values = await local_inputs(client, parse_inputs(inputs, template["name"], declared),
                                          make_console(stderr=True))
        try:
            job = await client.create_job(int(template["pk"]), input_values, param_values,
                                          description=description,
                                          notification_override=WS_NOTIFICATION_OVERRIDE)
        except (AuthenticationFailed, TransientError):
            raise
        except ServerError as e:
            raise CommandFailed(f"the server refused the job: {one_line(e, 300)}", ExitCode.CONFIG) from None
    # The pk alone on stdout (JOB=$(ufdl-node submit ...)), as dataset add does; the words on stderr.
    print(job["pk"])
    said = f"job {job['pk']} created from {template['name']} v{template['version']}"
    note(f"{said}; follow it with: ufdl-node watch {job['pk']}")
    return ExitCode.OK


# -- dataset add --------------------------------------------------------------------------------


async def add_dataset(settings: NodeSettings, folder: Path, *, domain: str, name: str | None,
                      project: int | None, licence: str | None, tags: str = "",
                      public: bool = False) -> ExitCode:
    """`ufdl-node dataset add`: create the dataset from `folder`; print its pk on stdout."""
    from .localdata import upload_dataset

    configure_logging("error", "console")
    async with _client(settings) as client:
        try:
            record = await upload_dataset(client, folder, domain=domain, name=name, project=project,
                                          licence=licence, tags=tags, public=public)
        except (AuthenticationFailed, TransientError):
            raise
        except ServerError as e:
            raise CommandFailed(f"the server refused the dataset: {one_line(e, 300)}",
                                ExitCode.FAILURE) from None
    print(record["pk"])
    note(f"dataset {record['pk']} ({record['name']} v{record['version']}): "
         f"{len(record.get('files') or {})} files")
    return ExitCode.OK


# -- watch --------------------------------------------------------------------------------------


async def watch(settings: NodeSettings, pk: int) -> ExitCode:
    """A live progress bar for job `pk` until it ends; 0 only if it FINISHED."""
    configure_logging("error", "console")
    console = make_console()
    async with _client(settings) as client:
        try:
            job = await client.get_job(pk)
        except NotFound:
            raise CommandFailed(f"no job {pk} on {settings.server_url}", ExitCode.FAILURE) from None
        if display_phase(job) not in FINAL:
            view = JobProgress(client, console)
            with live_view(console, view.progress):
                job = await view.follow(job)
    outcome = display_phase(job)
    colour = "green" if outcome is Phase.FINISHED else "red"
    console.print(final_line(job), style=colour, markup=False)
    return ExitCode.OK if outcome is Phase.FINISHED else ExitCode.FAILURE


# -- templates ----------------------------------------------------------------------------------


async def import_templates(settings: NodeSettings, names: list[str]) -> ExitCode:
    """Create on the server a template for each handler's template NAME (all, when none given)."""
    from ..api import TemplateDescription
    from ..registry import Registry
    from .local import import_handler_template

    configure_logging("error", "console")
    console = make_console()
    registry = Registry.load(settings.handler_dirs, settings=settings)
    for problem in registry.problems:
        error_line("plugin skipped", problem)
    served = {name: spec for spec in registry.specs() for name in spec.templates}
    unknown = [name for name in names if name not in served]
    if unknown:
        raise CommandFailed(f"no handler serves template {unknown[0]!r} (known: "
                            f"{', '.join(sorted(served)) or 'none'}; --handlers-dir adds a directory)",
                            ExitCode.CONFIG)
    wanted = names or sorted(served)
    for name in wanted:  # every template in the server's terms before the server is asked
        try:
            spec = served[name]
            (spec.description or TemplateDescription()).import_spec(name)
        except ValueError as e:
            raise CommandFailed(f"handler {spec.name} ({spec.source}): template {name}: {e}",
                                ExitCode.CONFIG) from None
    async with _client(settings) as client:
        for name in wanted:
            existing = await _find_template(client, name)
            if existing is not None:
                console.print(f"{name}: already on the server (v{existing.get('version')}, "
                              f"pk {existing.get('pk')}); skipped", markup=False)
                continue
            try:
                created = await import_handler_template(client, served[name], name)
            except PermissionDenied:
                raise CommandFailed(f"user {settings.username!r} may not import templates on "
                                    f"{settings.server_url}: use an admin (staff) user "
                                    "(--username admin)",
                                    ExitCode.FAILURE) from None
            console.print(f"{name}: imported (v{created.get('version')}, pk {created.get('pk')})",
                          markup=False)
    return ExitCode.OK


async def list_templates(settings: NodeSettings, *, as_json: bool = False) -> ExitCode:
    """Print the job templates on the server, newest version of each name first."""
    configure_logging("error", "console")
    async with _client(settings) as client:
        found = await client.list_templates({"expressions": [],
                                             "order_by": [{"field": "name", "ascending": True},
                                                          {"field": "version", "ascending": False}]})
    rows = [{"name": row.get("name"), "version": row.get("version"), "pk": row.get("pk"),
             "type": one_line(row.get("type") or "", 80),
             "parameters": ", ".join(sorted(row.get("parameters") or {}))} for row in found]
    print_rows(rows, ("name", "version", "pk", "type", "parameters"), as_json=as_json, records=found,
               title=f"job templates on {settings.server_url}",
               empty="no job templates (`ufdl-node templates import` makes them from the handlers, "
               "with an admin user)")
    return ExitCode.OK


# -- status -------------------------------------------------------------------------------------


async def _status_from_endpoint(listen: str) -> dict[str, Any] | None:
    """GET /status of a daemon's status endpoint, or None when nothing answers there."""
    import aiohttp

    from ..daemon.status import parse_listen

    host, port = parse_listen(listen)
    host = f"[{host}]" if ":" in host else host
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(f"http://{host}:{port}/status") as reply:
                data = await reply.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: Any) -> bool:
    import os

    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True  # another user's process: alive
    except (OSError, ValueError, TypeError):
        return False
    return True


def _duration(seconds: Any) -> str:
    try:
        total = int(float(seconds))
    except (TypeError, ValueError):
        return "?"
    hours, rest = divmod(total, 3600)
    return (f"{hours}h" if hours else "") + f"{rest // 60:02d}m{rest % 60:02d}s"


def status_lines(data: dict[str, Any], source: str) -> list[str]:
    """The daemon's status as lines for a person: the daemon, the server, then one line per slot."""
    running = data.get("running", True) and (source == "endpoint" or _pid_alive(data.get("pid")))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(data.get("written_at") or 0)))
    state = "running" if running else f"not running (last seen {when})"
    lines = [f"daemon: {state}, version {data.get('version')}, up {_duration(data.get('uptime_s'))} "
             f"(from the {source})"]
    if data.get("paused"):  # daemon/control.py
        lines.append("paused: running jobs finish, no new job is taken (`ufdl-node resume` takes work again)")
    reachable = data.get("server_reachable")
    lines.append(f"server: {data.get('server')} " + ("reachable" if reachable else
                                                      f"NOT reachable: {data.get('reason') or '?'}"))
    if data.get("last_error"):
        lines.append(f"last error: {one_line(data['last_error'], 2000)}")
    not_taking = data.get("not_taking") or {}
    for key, what in (("disk", "jobs"), ("docker", "container jobs")):
        if not_taking.get(key):
            lines.append(f"not taking {what}: {one_line(str(not_taking[key]), 500)}")
    for slot in data.get("slots") or []:
        where = f"slot {slot.get('index')} (node {slot.get('node')}" + \
            (f", {slot['gpu']})" if slot.get("gpu") else ")")
        job = slot.get("job")
        if job:
            percent = float(job.get("progress") or 0) * 100
            text = (f"job {job.get('pk')} {job.get('template')} {job.get('phase', 'STARTED')} "
                    f"{percent:.0f}% running {_duration(job.get('running_s'))}")
        else:
            text = f"idle, {slot.get('jobs_done', 0)} jobs done"
        if slot.get("last_error"):
            text += f"; last error: {one_line(slot['last_error'], 500)}"
        lines.append(f"{where}: {text}")
    return lines


async def show_status(settings: NodeSettings, *, as_json: bool) -> ExitCode:
    """Print what the daemon of `settings` is doing; 0 when it runs, 1 when it does not."""
    from ..daemon.status import read_snapshot, snapshot_path

    data: dict[str, Any] | None = None
    source = "endpoint"
    if settings.status_listen:
        data = await _status_from_endpoint(settings.status_listen)
    # Under systemd the daemon's state_dir is StateDirectory= (/var/lib/ufdl-node), which a shell's
    # default (~/.local/state/ufdl-node) is not: look there too.
    places = list(dict.fromkeys([settings.state_dir, SYSTEMD_STATE_DIR]))
    for place in places if data is None else []:
        data = read_snapshot(snapshot_path(place))
        if data is not None:
            source = f"snapshot {snapshot_path(place)}"
            break
    if data is None:
        where = f"nothing answers at {settings.status_listen}, and " if settings.status_listen else ""
        raise CommandFailed(f"no daemon status: {where}no readable snapshot in "
                            f"{' or '.join(map(str, places))} (is the daemon running, with these settings?)",
                            ExitCode.FAILURE)
    running = source == "endpoint" or (data.get("running", False) and _pid_alive(data.get("pid")))
    if as_json:
        print(json.dumps({**data, "source": source, "running": running}, indent=2, default=str))
    else:
        for line in status_lines(data, source):
            print(line)
    return ExitCode.OK if running else ExitCode.FAILURE
