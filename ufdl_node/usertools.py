"""Commands for a person at a terminal, against any UFDL server: `jobs`, `submit`, `watch`.

They use the same settings as the daemon (server_url, username, password from a
file, the environment or the command line), so `ufdl-node jobs --config
/etc/ufdl-node/config.toml` shows what the node sees.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .client import UfdlClient
from .errors import ExitCode, ServerError
from .local import LiveJobs, parse_inputs, parse_params, phase
from .logs import configure_logging, one_line
from .settings import NodeSettings

FINAL = ("FINISHED", "ERRORED", "CANCELLED")


def _client(settings: NodeSettings) -> UfdlClient:
    return UfdlClient(settings.server_url, settings.username, settings.resolved_password(),
                      request_timeout_s=settings.request_timeout_s, retry_max_attempts=2)


async def list_jobs(settings: NodeSettings, *, template: str | None, every: bool,
                    limit: int) -> ExitCode:
    """Print the newest jobs (waiting and running ones unless `every`)."""
    configure_logging("error", "console")
    expressions: list[dict[str, Any]] = []
    if template:
        expressions.append({"type": "exact", "field": "template.name", "value": template})
    if not every:
        expressions.append({"type": "isnull", "field": "end_time"})
    spec = {"expressions": expressions, "order_by": [{"field": "pk", "ascending": False}]}
    async with _client(settings) as client:
        found = (await client.list_jobs(spec))[:limit]
    table = Table(title=f"jobs on {settings.server_url}")
    for column in ("job", "template", "phase", "node", "description", "error"):
        table.add_column(column)
    for job in found:
        table.add_row(str(job["pk"]), f"{job['template']['name']} v{job['template']['version']}", phase(job),
                      str(job["node"] or ""), one_line(job.get("description") or "", 40),
                      one_line(job.get("error_reason") or "", 60))
    Console(soft_wrap=True).print(table if found else "no jobs")
    return ExitCode.OK


async def submit(settings: NodeSettings, template_name: str, *, version: int | None, inputs: list[str],
                 params: list[str], description: str) -> ExitCode:
    """Create a job of the newest (or given) version of `template_name`; print its pk."""
    configure_logging("error", "console")
    console = Console(soft_wrap=True)
    expressions: list[dict[str, Any]] = [{"type": "exact", "field": "name", "value": template_name}]
    if version is not None:
        expressions.append({"type": "exact", "field": "version", "value": version})
    async with _client(settings) as client:
        found = await client.list_templates({"expressions": expressions,
                                             "order_by": [{"field": "version", "ascending": False}]})
        if not found:
            console.print(f"[red]no job template {template_name!r}"
                          + (f" version {version}" if version is not None else "") + " on the server")
            return ExitCode.CONFIG
        template = await client.get_template(int(found[0]["pk"]))
        param_values = parse_params(params, template["name"], template.get("parameters") or {})
        try:
            job = await client.create_job(int(template["pk"]), parse_inputs(inputs, None), param_values,
                                          description=description)
        except ServerError as e:
            console.print(f"[red]the server refused the job:[/] {one_line(e, 300)}")
            return ExitCode.CONFIG
    console.print(f"job {job['pk']} created from {template['name']} v{template['version']}")
    return ExitCode.OK


async def watch(settings: NodeSettings, pk: int) -> ExitCode:
    """A live progress bar for job `pk` until it ends; 0 only if it FINISHED."""
    configure_logging("error", "console")
    console = Console(soft_wrap=True)
    async with _client(settings) as client:
        job = await client.get_job(pk)
        view = LiveJobs(client, console)
        with Live(view.progress, console=console, refresh_per_second=8):
            view.add(job)
            while phase(job) not in FINAL:
                await asyncio.sleep(0.5)
                job = await client.get_job(pk)
            await view.close()
    outcome = phase(job)
    colour = "green" if outcome == "FINISHED" else "red"
    console.print(f"[{colour}]job {pk}: {outcome}[/]"
                  + (f": {job['error_reason']}" if job.get("error_reason") else ""))
    return ExitCode.OK if outcome == "FINISHED" else ExitCode.FAILURE
