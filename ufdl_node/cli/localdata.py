"""A local folder as a dataset on a UFDL server: `ufdl-node dataset add`, and `--input dataset=DIR`.

The folder is read first (:mod:`.localfolders`: its files and, per domain, their labels,
boxes or transcriptions); a problem with it is a ConfigError (one line, exit 2) before the
server is changed. Then, as the web UI does it on the real server:

1. ``POST /v1/<domain>/datasets/create`` (``/v1/classify``, ``/v1/objdet``, ``/v1/speech``,
   ``/v1/spectra``) with name, the next free version of it, description, project (a pk:
   ``--project``, else the first of ``POST /v1/projects/list``), licence (a pk: ``--licence``
   by name or pk, resolved through ``POST /v1/licences/list``; default "Apache 2.0", else the
   first), tags and is_public;
2. each file through ``POST /v1/<domain>/datasets/{pk}/files/{name}``;
3. what labels them: categories with ``PATCH .../categories`` ``{"method": "add"}`` (one call
   per label; ic, sc), every image's file type and boxes with one ``POST .../annotations``
   (od), each file's ``POST .../transcriptions/{file}`` (sp).

A failure after the create deletes the dataset (``DELETE /v1/datasets/{pk}``). That is a
soft delete on both servers: the record stays, marked deleted, and keeps its name and
version (the next try takes the version after it); nothing else is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..client import UfdlClient, content_disposition
from ..errors import ConfigError, NotFound, ServerError
from ..logs import one_line
from ..work.records import DOMAINS
from .localfolders import LocalDataset, read_folder

# The domains `dataset add` takes, with their app's prefix on the server.
PREFIXES = {"ic": "/v1/classify/datasets", "od": "/v1/objdet/datasets", "sp": "/v1/speech/datasets",
            "sc": "/v1/spectra/datasets"}
DEFAULT_LICENCE = "Apache 2.0"


def domain_code(domain: str) -> str:
    """``ic`` or ``Image Classification`` → ``ic``; ConfigError naming the ones taken."""
    for code, description in DOMAINS.items():
        if domain.strip().lower() in (code, description.lower()) and code in PREFIXES:
            return code
    known = ", ".join(f"{c} ({DOMAINS[c]})" for c in PREFIXES)
    raise ConfigError(f"--domain {domain!r}: not a domain dataset add takes (known: {known})")


async def _list(client: UfdlClient, what: str, spec: dict[str, Any] | None = None) -> list[Any]:
    try:
        found = await client.request("POST", f"/v1/{what}/list", json=spec or {})
    except NotFound:
        return []  # a server without the route has none to offer
    return found if isinstance(found, list) else []


async def resolve_project(client: UfdlClient, project: int | None) -> int:
    """The project pk to make the dataset in: `project`, or the server's first."""
    if project is not None:
        return project
    found = [p["pk"] for p in await _list(client, "projects") if isinstance(p, dict) and "pk" in p]
    if not found:
        raise ConfigError("the server has no project to put the dataset in: create a project first "
                          "or pass --project PK")
    return int(found[0])


async def resolve_licence(client: UfdlClient, licence: str | int | None) -> int:
    """The licence pk: `licence` by name (any case) or pk, else "Apache 2.0", else the first."""
    rows = [r for r in await _list(client, "licences") if isinstance(r, dict) and "pk" in r]
    wanted = DEFAULT_LICENCE if licence is None else str(licence).strip()
    for row in rows:
        if wanted.lower() == str(row.get("name", "")).lower() or wanted == str(row["pk"]):
            return int(row["pk"])
    if licence is None and rows:
        return int(rows[0]["pk"])
    if licence is None:
        raise ConfigError("the server lists no licences: pass --licence PK")
    known = ", ".join(str(r.get("name")) for r in rows) or "none listed"
    raise ConfigError(f"--licence {one_line(wanted, 60)!r}: no such licence on the server (known: {known})")


async def _next_version(client: UfdlClient, name: str) -> int:
    # Deleted ones too: a deleted dataset keeps its name and version.
    found = await _list(client, "datasets", {
        "expressions": [{"type": "exact", "field": "name", "value": name}],
        "order_by": [{"field": "version", "ascending": False}], "include_inactive": True})
    return max((int(d.get("version") or 0) for d in found if isinstance(d, dict)), default=0) + 1


async def upload_dataset(client: UfdlClient, folder: Path, *, domain: str = "ic", name: str | None = None,
                         project: int | None = None, licence: str | int | None = None, tags: str = "",
                         public: bool = False, allow_unlabelled: bool = False) -> dict[str, Any]:
    """Create a dataset from `folder` on the server `client` talks to (see the module): the next
    free version of `name` (default: the folder's name), its files and their labels. Returns
    the dataset's record. ConfigError for the folder or the options, ServerError for a refusal."""
    code = domain_code(domain)
    local = await asyncio.to_thread(read_folder, folder, code, allow_unlabelled=allow_unlabelled)
    dataset_name = name or folder.resolve().name
    fields: dict[str, Any] = {
        "name": dataset_name, "version": await _next_version(client, dataset_name),
        "description": f"added by ufdl-node from {folder.resolve().name}",
        "project": await resolve_project(client, project), "licence": await resolve_licence(client, licence),
        "tags": tags, "is_public": public}
    record: dict[str, Any] = await client.request("POST", f"{PREFIXES[code]}/create", json=fields)
    pk = int(record["pk"])
    try:
        await _fill_dataset(client, f"{PREFIXES[code]}/{pk}", local)
    except BaseException:
        with contextlib.suppress(ServerError):  # no half-filled dataset left behind
            await client.request("DELETE", f"/v1/datasets/{pk}")
        raise
    result: dict[str, Any] = await client.request("GET", f"/v1/datasets/{pk}")
    return result


async def _fill_dataset(client: UfdlClient, base: str, local: LocalDataset) -> None:
    """Upload the files under `base` (``/v1/<domain>/datasets/{pk}``), then their labels."""
    for file_name, path in local.files.items():
        await client.request("POST", f"{base}/files/{quote(file_name, safe='')}",
                             data=await asyncio.to_thread(path.read_bytes),
                             headers={"Content-Disposition": content_disposition(file_name),
                                      "Content-Type": "application/octet-stream"})
    by_label: dict[str, list[str]] = {}
    for file_name, labels in local.labels.items():
        for label in labels:
            by_label.setdefault(label, []).append(file_name)
    for label, images in sorted(by_label.items()):
        await client.request("PATCH", f"{base}/categories",
                             json={"method": "add", "images": sorted(images), "categories": [label]})
    if local.annotations:
        await client.request("POST", f"{base}/annotations", json=local.annotations)
    for file_name, text in local.transcriptions.items():
        await client.request("POST", f"{base}/transcriptions/{quote(file_name, safe='')}",
                             json={"transcription": text})
