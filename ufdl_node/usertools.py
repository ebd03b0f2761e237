"""Commands for a person at a terminal, against any UFDL server: `jobs`, `submit`, `watch`.

They use the same settings as the daemon (server_url, username, password from a
file, the environment or the command line), so `ufdl-node jobs --config
/etc/ufdl-node/config.toml` shows what the node sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .api import TemplateDescription
from .client import UfdlClient, _content_disposition
from .errors import ConfigError, ExitCode, ServerError
from .local import LiveJobs, contract_input_types, local_inputs, parse_inputs, parse_params, phase
from .logs import configure_logging, one_line
from .settings import NodeSettings
from .work.records import DOMAINS

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
        # A folder for a dataset input becomes a dataset first; job:N a job's output.
        declared = TemplateDescription(inputs=contract_input_types(template.get("type")))
        try:
            input_values = await local_inputs(client, parse_inputs(inputs, declared), console)
            job = await client.create_job(int(template["pk"]), input_values, param_values,
                                          description=description)
        except ServerError as e:
            console.print(f"[red]the server refused the job:[/] {one_line(e, 300)}")
            return ExitCode.CONFIG
    console.print(f"job {job['pk']} created from {template['name']} v{template['version']}")
    return ExitCode.OK


# -- datasets from local folders -----------------------------------------------------------------

LABELS_FILE = "labels.csv"  # in a dataset folder: "file,label" lines instead of a folder per label


@dataclass(frozen=True)
class LocalDataset:
    """A local folder read as a dataset: dataset file name → local path, and labels."""

    files: dict[str, Path]
    labels: dict[str, str]


def domain_code(domain: str) -> str:
    """``ic`` or ``Image Classification`` → ``ic``; ConfigError naming the known ones."""
    for code, description in DOMAINS.items():
        if domain.strip().lower() in (code, description.lower()):
            return code
    known = ", ".join(f"{c} ({d})" for c, d in DOMAINS.items())
    raise ConfigError(f"--domain {domain!r}: not a domain (known: {known})")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def read_folder(folder: Path, domain: str) -> LocalDataset:
    """The files of `folder` as dataset files. For image classification each sub-folder
    is a label holding its images, or a ``labels.csv`` (``file,label`` lines) labels the
    files at the top; other domains take every file. Dataset file names are one path
    segment, so two files with one name are a ConfigError."""
    if not folder.is_dir():
        raise ConfigError(f"dataset folder {folder}: not a directory")
    labels_file = folder / LABELS_FILE
    files: dict[str, Path] = {}
    labels: dict[str, str] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != labels_file):
        relative = path.relative_to(folder)
        if not all(_visible(Path(part)) for part in relative.parts):
            continue  # .DS_Store, .git, editors' backups
        if path.name in files:
            raise ConfigError(f"dataset folder {folder}: two files named {path.name!r} "
                              f"({files[path.name].relative_to(folder)}, {relative}); dataset file "
                              "names must differ")
        files[path.name] = path
        if domain == "ic" and len(relative.parts) == 2 and not labels_file.is_file():
            labels[path.name] = relative.parts[0]
    if domain == "ic" and labels_file.is_file():
        labels = _read_labels(labels_file, files)
    if not files:
        raise ConfigError(f"dataset folder {folder}: no files")
    return LocalDataset(files, labels)


def _read_labels(path: Path, files: dict[str, Path]) -> dict[str, str]:
    labels: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if not row or (number == 1 and [c.strip().lower() for c in row] == ["file", "label"]):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ConfigError(f"{path}:{number}: expected 'file,label', got {one_line(row, 80)}")
            name, label = row[0].strip(), row[1].strip()
            if name not in files:
                raise ConfigError(f"{path}:{number}: no file {name!r} in the folder")
            labels[name] = label
    return labels


async def upload_dataset(client: UfdlClient, folder: Path, *, domain: str = "ic", name: str | None = None,
                         project: int | None = None, licence: str | None = None) -> dict[str, Any]:
    """Create a dataset from `folder` (see :func:`read_folder`) on the server `client` talks
    to: the next free version of `name` (default: the folder's name), its files, and for
    image classification its labels. Returns the dataset's record."""
    code = domain_code(domain)
    local = await asyncio.to_thread(read_folder, folder, code)
    dataset_name = name or folder.resolve().name
    found = await client.request("POST", "/v1/datasets/list", json={
        "expressions": [{"type": "exact", "field": "name", "value": dataset_name}],
        "order_by": [{"field": "version", "ascending": False}]})
    version = max((int(d.get("version") or 0) for d in found or []), default=0) + 1
    fields: dict[str, Any] = {"name": dataset_name, "version": version, "domain": code,
                              "description": f"added by ufdl-node from {folder.resolve().name}"}
    if project is not None:
        fields["project"] = project
    if licence is not None:
        fields["licence"] = licence
    record: dict[str, Any] = await client.request("POST", "/v1/datasets/create", json=fields)
    pk = int(record["pk"])
    try:
        await _fill_dataset(client, pk, local)
    except BaseException:
        with contextlib.suppress(ServerError):  # no half-filled dataset left behind
            await client.request("DELETE", f"/v1/datasets/{pk}")
        raise
    result: dict[str, Any] = await client.request("GET", f"/v1/datasets/{pk}")
    return result


async def _fill_dataset(client: UfdlClient, pk: int, local: LocalDataset) -> None:
    for file_name, path in local.files.items():
        await client.request("POST", f"/v1/datasets/{pk}/files/{quote(file_name, safe='')}",
                             data=await asyncio.to_thread(path.read_bytes),
                             headers={"Content-Disposition": _content_disposition(file_name),
                                      "Content-Type": "application/octet-stream"})
    by_label: dict[str, list[str]] = {}
    for file_name, label in local.labels.items():
        by_label.setdefault(label, []).append(file_name)
    for label, images in sorted(by_label.items()):
        await client.request("POST", f"/v1/classify/datasets/{pk}/categories",
                             json={"images": images, "categories": [label]})


async def add_dataset(settings: NodeSettings, folder: Path, *, domain: str, name: str | None,
                      project: int | None, licence: str | None) -> ExitCode:
    """`ufdl-node dataset add`: create the dataset and print its pk."""
    configure_logging("error", "console")
    async with _client(settings) as client:
        try:
            record = await upload_dataset(client, folder, domain=domain, name=name, project=project,
                                          licence=licence)
        except ServerError as e:
            print(f"ufdl-node: dataset add: the server refused it: {one_line(e, 300)}", file=sys.stderr)
            return ExitCode.FAILURE
    print(record["pk"])
    print(f"dataset {record['pk']} ({record['name']} v{record['version']}): "
          f"{len(record.get('files') or {})} files", file=sys.stderr)
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
