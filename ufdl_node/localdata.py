"""A local folder as a dataset on a UFDL server: `ufdl-node dataset add`, and `--input dataset=DIR`.

An image-classification folder holds a sub-folder per label, or its images and a
``labels.csv``; other domains take every file. Problems with the folder are a
ConfigError (one line, exit 2) before anything is created on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .client import UfdlClient, content_disposition
from .errors import ConfigError, ServerError
from .logs import one_line
from .work.records import DOMAINS

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
                             headers={"Content-Disposition": content_disposition(file_name),
                                      "Content-Type": "application/octet-stream"})
    by_label: dict[str, list[str]] = {}
    for file_name, label in local.labels.items():
        by_label.setdefault(label, []).append(file_name)
    for label, images in sorted(by_label.items()):
        await client.request("POST", f"/v1/classify/datasets/{pk}/categories",
                             json={"images": images, "categories": [label]})
