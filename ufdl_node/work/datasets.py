"""A job's dataset: the record, its files in a directory, and its labels.

:func:`fetch_dataset` resolves a dataset input (PK, ``"name vN"`` or the
object form) to the server's record, checks its domain against the
template's and that it holds files, and gives the job a directory:

- **files** (the default): each file the record lists (``files``: name →
  sha256) is downloaded by ``GET /v1/datasets/{pk}/files/{name}`` into a
  content-addressed cache (``<cache>/sha256/ab/abcdef...``), verified, and
  made read-only; the job's directory gets hard links to the cached files
  (copies where a link is not possible, or when asked). A second job on the
  same dataset downloads nothing. A server that lists bare names (no hashes)
  gets each file downloaded straight into the job's directory.
- **archive**: the server's own archive (``POST /v1/datasets/{pk}/download``
  with ``filetype`` zip or tar.gz and ``annotations_args`` passed through),
  extracted safely (see :mod:`.archives`).

For an image-classification dataset the labels come with it
(``GET /v1/classify/datasets/{pk}/categories``), and :func:`store_categories`
writes predictions back as the stock predict executors mean to (``PATCH
/v1/classify/datasets/{pk}/categories``, ``{"method": "add", "images", "categories"}``),
after :func:`clear_annotations` (``DELETE /v1/datasets/{pk}/clear``) as they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from ..errors import JobFailed, NotFound, PermissionDenied
from ..logs import one_line
from .archives import DEFAULT_MAX_TOTAL_BYTES, extract, relative_name
from .records import DATASET, domain_name, domain_of_type, fetch_record, parse_ref, same_domain
from .server import ServerAccess

ARCHIVE_TYPES = {"zip": "zip", "tar.gz": "tar.gz"}
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
IMAGE_CLASSIFICATION = "Image Classification"


@dataclass(frozen=True)
class Dataset:
    """A dataset ready for a job.

    ``record`` is the server's record, ``directory`` holds its files (``files``, relative
    '/'-paths), ``categories`` the image-classification labels by file name (None for
    other domains), ``downloaded`` how many files came from the server this time (0 when
    the cache had them all).
    """

    record: dict[str, Any]
    directory: Path
    files: tuple[str, ...]
    categories: dict[str, list[str]] | None
    downloaded: int

    @property
    def pk(self) -> int:
        """The dataset's primary key."""
        return int(self.record["pk"])

    def labels(self) -> dict[str, str]:
        """Each labelled file's first category (image classification is single-label)."""
        return {name: cats[0] for name, cats in (self.categories or {}).items() if cats}

    def by_label(self, dest: Path | str) -> dict[str, list[Path]]:
        """A folder per label under `dest` holding links to (or copies of) its files, as
        training scripts that read class folders expect; unlabelled files are left out.
        A label that cannot be a folder name ('a/b', '..') fails the job."""
        root = Path(dest)
        present = set(self.files)
        layout: dict[str, list[Path]] = {}
        for name, label in sorted(self.labels().items()):
            folder = relative_name(label, f"{describe(self.record)}: label")
            if folder is None or "/" in folder:
                raise JobFailed(f"{describe(self.record)}: label {one_line(label, 60)!r} "
                                f"cannot be a folder name")
            if name not in present:
                continue  # a label for a file the dataset no longer holds
            target = root / folder / PurePosixPath(name).name
            _materialise(self.directory.joinpath(*name.split("/")), target, copy=False)
            layout.setdefault(label, []).append(target)
        return layout


def describe(record: Mapping[str, Any]) -> str:
    """``dataset 42`` plus its name and version when the record has them."""
    name, version = record.get("name"), record.get("version")
    return f"dataset {record.get('pk')}" + (f" ({name} v{version})" if name else "")


async def dataset_record(access: ServerAccess, raw: Any, type_: str | None = None, *,
                         domain: str | None = None) -> dict[str, Any]:
    """The record of the dataset `raw` names; JobFailed when it is missing, not readable,
    of another domain than `domain` (default: the domain `type_` names) or empty."""
    record = await fetch_record(access, parse_ref(DATASET, raw, type_))
    expected = domain or domain_of_type(type_)
    if expected and not same_domain(record.get("domain"), expected):
        raise JobFailed(f"{describe(record)} is in domain {domain_name(record.get('domain')) or 'none'}; "
                        f"this job needs {domain_name(expected)}")
    if not record.get("files"):
        raise JobFailed(f"{describe(record)} is empty: it has no files")
    return record


async def fetch_dataset(access: ServerAccess, raw: Any, type_: str | None = None, *,
                        dest: Path | str, cache_dir: Path | str, domain: str | None = None,
                        archive: str | None = None, annotations_args: Iterable[str] | None = None,
                        copy: bool = False, parallel: int = 4,
                        max_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> Dataset:
    """The dataset `raw` names (a ``dataset`` input), its files in directory `dest`.

    `archive` (``"zip"`` or ``"tar.gz"``) asks for the server's archive instead of the
    files one by one; `annotations_args` go with it. `copy` copies cached files instead
    of linking them (for a handler that changes its input files in place). `max_bytes`
    bounds each download and the unpacked archive.
    """
    record = await dataset_record(access, raw, type_, domain=domain)
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    if archive is not None:
        files, downloaded = await _via_archive(access, record, root, Path(cache_dir), archive,
                                               annotations_args, max_bytes)
    else:
        if annotations_args:
            raise JobFailed("annotations_args need the server's archive (archive='zip' or 'tar.gz')")
        files, downloaded = await _via_files(access, record, root, Path(cache_dir), copy, parallel,
                                             max_bytes)
    categories = None
    if same_domain(record.get("domain"), IMAGE_CLASSIFICATION):
        categories = await fetch_categories(access, int(record["pk"]))
    return Dataset(record, root, tuple(files), categories, downloaded)


def _listed_files(record: Mapping[str, Any]) -> dict[str, str | None]:
    """The record's files as {safe relative name: sha256 or None}."""
    listed = record.get("files")
    label = describe(record)
    if isinstance(listed, dict):
        pairs = list(listed.items())
    elif isinstance(listed, list):
        pairs = [(name, None) for name in listed]
    else:
        raise JobFailed(f"{label}: the server's file list is {one_line(repr(listed), 80)}")
    files: dict[str, str | None] = {}
    for name, digest in pairs:
        if not isinstance(name, str):
            raise JobFailed(f"{label}: a file name is {one_line(repr(name), 60)}")
        safe = relative_name(name, label)
        if safe is None:
            raise JobFailed(f"{label}: a file has an empty name")
        if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise JobFailed(f"{label}: file {one_line(name, 80)!r} has no valid sha256 "
                            f"({one_line(repr(digest), 80)})")
        files[safe] = digest.lower() if isinstance(digest, str) else None
    for name in files:  # 'x' and 'x/y' cannot both be files
        parent = PurePosixPath(name).parent
        while str(parent) != ".":
            if str(parent) in files:
                raise JobFailed(f"{label}: {one_line(name, 80)!r} lies under the file {str(parent)!r}")
            parent = parent.parent
    return files


def _blob(cache: Path, digest: str) -> Path:
    return cache / "sha256" / digest[:2] / digest


async def _via_files(access: ServerAccess, record: dict[str, Any], root: Path, cache: Path, copy: bool,
                     parallel: int, max_bytes: int) -> tuple[list[str], int]:
    files = _listed_files(record)
    pk = int(record["pk"])
    label = describe(record)
    downloaded = 0
    gate = asyncio.Semaphore(max(1, parallel))

    async def one(name: str, digest: str | None) -> None:
        nonlocal downloaded
        path = f"/v1/datasets/{pk}/files/{quote(name, safe='')}"
        target = root.joinpath(*name.split("/"))
        what = f"{label}: file {name!r}"
        async with gate:
            try:
                if digest is None:  # nothing to address it by: straight into the job's directory
                    await access.download("GET", path, target, max_bytes=max_bytes, what=what)
                    downloaded += 1
                    return
                blob = _blob(cache, digest)
                if not blob.is_file():
                    await access.download("GET", path, blob, sha256=digest, max_bytes=max_bytes, what=what)
                    blob.chmod(0o444)  # shared by every job that links it: not to be changed in place
                    downloaded += 1
            except NotFound:
                raise JobFailed(f"{what} not found on the server") from None
            except PermissionDenied:
                raise JobFailed(f"{what}: the node's user may not read it") from None
        await asyncio.to_thread(_materialise, blob, target, copy)

    await _all([one(name, digest) for name, digest in sorted(files.items())])
    return sorted(files), downloaded


def _materialise(blob: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    if not copy:
        try:
            os.link(blob, target)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copyfile(blob, target)


async def _all(calls: list[Awaitable[None]]) -> None:
    """Run `calls` together; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    if not tasks:
        return
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]


async def _via_archive(access: ServerAccess, record: dict[str, Any], root: Path, cache: Path, filetype: str,
                       annotations_args: Iterable[str] | None, max_bytes: int) -> tuple[list[str], int]:
    if filetype not in ARCHIVE_TYPES:
        raise JobFailed(f"dataset archive type {filetype!r} is not one of {', '.join(ARCHIVE_TYPES)}")
    pk = int(record["pk"])
    label = describe(record)
    body: dict[str, Any] = {"filetype": filetype}
    if annotations_args is not None:
        args = list(annotations_args)
        if not all(isinstance(a, str) for a in args):
            raise JobFailed(f"{label}: annotations_args must be strings")
        body["params"] = {"annotations_args": args}
    # The archive waits in the cache directory (a place the job may write to), never beside
    # `root`, which may be the job's own directory; each job gets its own temporary folder.
    (cache / "archives").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"dataset-{pk}-", dir=cache / "archives"))
    try:
        part = scratch / f"archive.{filetype}"
        try:
            await access.download("POST", f"/v1/datasets/{pk}/download", part, json=body,
                                  max_bytes=max_bytes, what=f"{label}: archive")
        except NotFound:
            raise JobFailed(f"{label} not found") from None
        except PermissionDenied:
            raise JobFailed(f"{label}: the node's user may not read it") from None
        written = await asyncio.to_thread(extract, part, root, max_total_bytes=max_bytes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not written:
        raise JobFailed(f"{label} is empty: its archive holds no files")
    return sorted(p.relative_to(root).as_posix() for p in written), 1


async def fetch_categories(access: ServerAccess, pk: int) -> dict[str, list[str]]:
    """The image-classification labels of dataset `pk`: {file name: [category, ...]}."""
    reply = await access.get(f"/v1/classify/datasets/{pk}/categories", what=f"dataset {pk}: categories")
    if not isinstance(reply, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(c, str) for c in v)
            for k, v in reply.items()):
        raise JobFailed(f"dataset {pk}: the categories are {one_line(repr(reply), 80)}, "
                        f"not {{file: [category]}}")
    return {name: list(cats) for name, cats in reply.items()}


async def clear_annotations(access: ServerAccess, pk: int) -> dict[str, Any]:
    """Remove every annotation of dataset `pk` (for image classification: its categories)
    and return its record: ``DELETE /v1/datasets/{pk}/clear``, what the stock predict
    executors do before they label a dataset. Destructive: read the labels first if the
    job needs them."""
    try:
        record = await access.json("DELETE", f"/v1/datasets/{pk}/clear", what=f"dataset {pk}: clear")
    except NotFound:
        raise JobFailed(f"dataset {pk} not found") from None
    except PermissionDenied:
        raise JobFailed(f"dataset {pk}: the node's user may not clear it") from None
    return record if isinstance(record, dict) else {}


async def store_categories(access: ServerAccess, pk: int, labels: Mapping[str, str]) -> int:
    """Add each file's predicted label to dataset `pk`, as the stock predict executors do
    when ``store_predictions`` is true; the number of calls made.

    One ``PATCH .../categories`` per label (``{"method": "add", "images": [...],
    "categories": [label]}``, the real server's add): the server adds every category to
    every image of a call, so this is what the launcher's call per image does, in fewer
    calls (and a repeat adds nothing). Empty labels are skipped (the launcher skips them too).
    """
    by_label: dict[str, list[str]] = {}
    for image, label in labels.items():
        if label:
            by_label.setdefault(label, []).append(image)
    for label, images in sorted(by_label.items()):
        await access.json("PATCH", f"/v1/classify/datasets/{pk}/categories",
                          json={"method": "add", "images": sorted(images), "categories": [label]},
                          what=f"dataset {pk}: storing the predictions of {label!r}")
    return len(by_label)
