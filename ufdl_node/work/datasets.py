"""A job's dataset: the record, its files in a directory, and its labels.

:func:`fetch_dataset` resolves a dataset input (PK, ``"name vN"`` or the
object form) to the server's record, checks its domain against the
template's and that it holds files, and gives the job a directory:

- **files** (the default): each file the record lists (``files``: name →
  sha256) is downloaded by ``GET /v1/datasets/{pk}/files/{name}`` into a
  content-addressed cache (``<cache>/sha256/ab/abcdef...``), verified, and
  made read-only (several in flight over plain GETs in threads, :mod:`.filefetch`;
  a file gets its digest name only after a sync of the file system, one for a batch
  of files: :class:`.filesink.NamedAfterSync`);
  the job's directory gets hard links to the cached files (a file the cache lacked
  is written there and the cache's name linked to it; copies where a link is not
  possible, or when asked). A second job on the same dataset downloads
  nothing. A server that lists bare names (no hashes)
  gets each file downloaded straight into the job's directory.
- **archive**: the server's own archive (``POST /v1/datasets/{pk}/download``
  with ``filetype`` zip or tar.gz), extracted safely (see :mod:`.archives`).
  It holds the raw files: the real server converts nothing (UFDL-API.md
  section 8), so the node never sends it ``annotations_args``.
- **converted** (with ``options``, a template's ``dataset_options``): the
  node converts, as the stock launcher does with wai.annotations: it reads
  the domain's annotations (:data:`ANNOTATION_SOURCES`: IC and spectrum
  categories, OD annotations, speech transcriptions), plans the layout the
  options ask for (:mod:`.convert`; checked before any file is fetched), gets
  the raw files (cache or archive) and writes the layout in a thread. With
  hashed files the finished layout is kept in ``<cache>/converted/<key>``
  (:func:`conversion_key`: the files' hashes, the annotations, the options)
  and linked into the job; a second job with the same key fetches nothing.

For an image-classification dataset the labels come with it; :mod:`.labels`
writes labels back with the real server's calls.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import JobFailed, NotFound, PermissionDenied
from ..logs import one_line
from .archives import DEFAULT_MAX_TOTAL_BYTES, extract, relative_name
from .convert import Layout, check_domain, materialise, plan_layout, write_layout
from .filefetch import fetch_files
from .records import DATASET, DOMAINS, domain_name, domain_of_type, fetch_record, parse_ref, same_domain
from .server_access import ServerAccess
from .videoframes import parse_specs
from .wai_options import ConversionError, Plan, parse

ARCHIVE_TYPES = {"zip": "zip", "tar.gz": "tar.gz"}
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
IMAGE_CLASSIFICATION = "Image Classification"


@dataclass(frozen=True)
class Dataset:
    """A dataset ready for a job.

    ``record`` is the server's record, ``directory`` holds its files (``files``, relative
    '/'-paths), ``categories`` the image-classification labels by file name (None for
    other domains), ``downloaded`` how many files came from the server this time (0 when
    the cache had them all). ``paths`` gives each dataset file's path in ``directory``
    when the node converted the dataset (``files`` then lists the layout, generated
    files such as ``labels.txt`` included); None when the files are there under their
    own names.
    """

    record: dict[str, Any]
    directory: Path
    files: tuple[str, ...]
    categories: dict[str, list[str]] | None
    downloaded: int
    paths: dict[str, str] | None = None

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
        present = self.paths if self.paths is not None else {name: name for name in self.files}
        layout: dict[str, list[Path]] = {}
        for name, label in sorted(self.labels().items()):
            folder = relative_name(label, f"{describe(self.record)}: label")
            if folder is None or "/" in folder:
                raise JobFailed(f"{describe(self.record)}: label {one_line(label, 60)!r} "
                                f"cannot be a folder name")
            if name not in present:
                continue  # a label for a file the dataset no longer holds (or a layout left out)
            target = root / folder / PurePosixPath(name).name
            materialise(self.directory.joinpath(*present[name].split("/")), target, copy=False)
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
                        options: Sequence[str] | None = None, archive: str | None = None,
                        annotations_args: Sequence[str] | None = None, step: str = "dataset options",
                        copy: bool = False, parallel: int = 4, unlabelled: Sequence[str] = (),
                        max_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> Dataset:
    """The dataset `raw` names (a ``dataset`` input), its files in directory `dest`.

    `options` (a template's ``dataset_options``: a wai.annotations writer and its
    options, see :mod:`.convert`) convert it on the node into that layout, as the stock
    launcher does; `annotations_args` is an older name for them. Options the node does
    not run, or annotations that do not fit them, fail the job with one line that starts
    with `step` (which template and option), before any file is written. `archive`
    (``"zip"`` or ``"tar.gz"``) asks for the server's archive (its raw files) instead of
    the files one by one. `copy` copies cached files instead of linking them (for a
    handler that changes its input files in place). `max_bytes` bounds each download
    and the unpacked archive. `unlabelled` (with `options`, an object-detection dataset):
    the frames to take from its videos, as ``from-ufdl-od --unlabelled`` takes them
    (:mod:`.videoframes`).
    """
    if options is not None and annotations_args is not None:
        raise JobFailed(f"{step}: give options or annotations_args, not both")
    plan = _parse(options if options is not None else annotations_args, step, unlabelled)
    record = await dataset_record(access, raw, type_, domain=domain)
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    if archive is not None and archive not in ARCHIVE_TYPES:
        raise JobFailed(f"dataset archive type {archive!r} is not one of {', '.join(ARCHIVE_TYPES)}")
    if plan is not None:
        return await _converted(access, record, plan, root, Path(cache_dir), step=step, archive=archive,
                                copy=copy, parallel=parallel, max_bytes=max_bytes)
    if archive is not None:
        files, downloaded = await _via_archive(access, record, root, Path(cache_dir), archive, max_bytes)
    else:
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
    for name in files:  # 'x' and 'x/y' cannot both be files (the names are normal: 'a/b', no '.')
        parent = name
        while "/" in parent:
            parent = parent.rpartition("/")[0]
            if parent in files:
                raise JobFailed(f"{label}: {one_line(name, 80)!r} lies under the file {parent!r}")
    return files


async def _via_files(access: ServerAccess, record: dict[str, Any], root: Path, cache: Path, copy: bool,
                     parallel: int, max_bytes: int) -> tuple[list[str], int]:
    """The record's files in `root`: cached blobs linked (or copied) in; bare names straight."""
    sources, downloaded = await fetch_files(access, int(record["pk"]), describe(record),
                                            _listed_files(record), cache, root, parallel, max_bytes,
                                            direct=not copy)  # copies: the cache's files untouched
    await asyncio.to_thread(_place_all, sources, root, copy)
    return sorted(sources), downloaded


def _place_all(sources: Mapping[str, Path], root: Path, copy: bool) -> None:
    """Each source linked (or copied) into `root` under its name: :func:`.convert.materialise`
    for many files, with one link call a file where it can (each folder made once; a file
    already there replaced)."""
    folders: set[str] = set()
    base = str(root)
    for name, source in sources.items():
        target = os.path.join(base, *name.split("/"))
        if str(source) == target:
            continue  # downloaded straight there (a file without a hash)
        folder = os.path.dirname(target)
        if folder not in folders:
            os.makedirs(folder, exist_ok=True)
            folders.add(folder)
        if copy:
            materialise(source, Path(target), copy)
            continue
        try:
            os.link(source, target)
        except OSError:  # already there, another file system, or no links: as materialise does
            materialise(source, Path(target), copy)


def _scratch(cache: Path, pk: int) -> Path:
    """A temporary folder of this job's own in the cache directory (a place the job may
    write to), never beside the job's directory, which may be the work directory itself."""
    (cache / "archives").mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"dataset-{pk}-", dir=cache / "archives"))


async def _via_archive(access: ServerAccess, record: dict[str, Any], root: Path, cache: Path, filetype: str,
                       max_bytes: int) -> tuple[list[str], int]:
    scratch = _scratch(cache, int(record["pk"]))
    try:
        written = await _archive_into(access, record, scratch / f"archive.{filetype}", filetype, root,
                                      max_bytes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return sorted(p.relative_to(root).as_posix() for p in written), 1


async def _archive_into(access: ServerAccess, record: dict[str, Any], part: Path, filetype: str, root: Path,
                        max_bytes: int) -> list[Path]:
    """The server's archive of the dataset's raw files (no annotations_args: the real
    server converts nothing) downloaded to `part` and extracted safely into `root`."""
    pk = int(record["pk"])
    label = describe(record)
    try:
        await access.download("POST", f"/v1/datasets/{pk}/download", part, json={"filetype": filetype},
                              max_bytes=max_bytes, what=f"{label}: archive")
    except NotFound:
        raise JobFailed(f"{label} not found") from None
    except PermissionDenied:
        raise JobFailed(f"{label}: the node's user may not read it") from None
    written = await asyncio.to_thread(extract, part, root, max_total_bytes=max_bytes)
    if not written:
        raise JobFailed(f"{label} is empty: its archive holds no files")
    return written


# -- converting on the node --------------------------------------------------------------------


def _parse(options: Sequence[str] | None, step: str, unlabelled: Sequence[str] = ()) -> Plan | None:
    """The parsed options and the video frames to take (None when there are no options);
    JobFailed naming `step` when refused."""
    if options is None or (not isinstance(options, str) and len(options) == 0):
        return None
    try:
        parse_specs(unlabelled)
        return replace(parse(options), unlabelled=tuple(unlabelled))
    except ConversionError as e:
        raise JobFailed(f"{step}: {e}") from None


async def _converted(access: ServerAccess, record: dict[str, Any], plan: Plan, root: Path, cache: Path, *,
                     step: str, archive: str | None, copy: bool, parallel: int, max_bytes: int) -> Dataset:
    """The dataset converted by `plan` into `root`, as the launcher's wai.annotations run
    writes it: the annotations first, the layout checked on the record's names before any
    file is fetched, then a finished tree from the conversion cache, or the raw files
    (cache or archive) converted in a thread (into the conversion cache when every file
    has a hash) and linked or copied into place."""
    pk = int(record["pk"])
    code = domain_code(record.get("domain"))
    try:
        check_domain(plan, code, domain_name(record.get("domain")) or "none")
    except ConversionError as e:
        raise JobFailed(f"{step}: {e}") from None
    annotations = await ANNOTATION_SOURCES[code](access, pk)
    listed = _listed_files(record)
    layout = await _layout(plan, sorted(listed), annotations, step)
    key = None if archive is not None else await asyncio.to_thread(conversion_key, plan, listed, annotations)
    tree = cache / CONVERTED / key if key else None
    categories = annotations if code in ("ic", "sc") else None
    if tree is not None and tree.is_dir():  # converted before: link the finished tree
        files = await asyncio.to_thread(_reuse_tree, layout, tree, root, copy)
        if files is not None:
            return Dataset(record, root, tuple(files), categories, 0, paths=dict(layout.paths))
    scratch = _scratch(cache, pk)
    try:
        if archive is not None:
            extracted = scratch / "files"
            written = await _archive_into(access, record, scratch / f"archive.{archive}", archive, extracted,
                                          max_bytes)
            sources = {p.relative_to(extracted).as_posix(): p for p in written}
            downloaded = 1
            if sorted(sources) != sorted(listed):  # the layout was made for the record's names
                layout = await _layout(plan, sorted(sources), annotations, step)
        else:
            sources, downloaded = await fetch_files(access, pk, describe(record), listed, cache,
                                                    scratch / "files", parallel, max_bytes, direct=True)
        files = await _write(layout, sources, root, tree, scratch / "tree", copy, step)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Dataset(record, root, tuple(files), categories, downloaded, paths=dict(layout.paths))


async def _layout(plan: Plan, files: list[str], annotations: Any, step: str) -> Layout:
    try:
        return await asyncio.to_thread(plan_layout, plan, files, annotations)
    except ConversionError as e:
        raise JobFailed(f"{step}: {e}") from None


CONVERTED = "converted"  # beside the files cache (<cache>/sha256): finished layouts by conversion_key
CONVERSION_FORMAT = 2  # raised when a writer's output changes, so that older trees are not reused


def conversion_key(plan: Plan, listed: Mapping[str, str | None], annotations: Any) -> str | None:
    """The conversion cache's key of a dataset's content (its files' hashes and its
    annotations) and the options; None when a file has no hash (nothing to key it by)."""
    if any(digest is None for digest in listed.values()):
        return None
    options = [[stage.name, sorted((k, list(v)) for k, v in stage.values.items())] for stage in plan.stages]
    payload = json.dumps({"format": CONVERSION_FORMAT, "options": options, "files": dict(listed),
                          "unlabelled": list(plan.unlabelled), "annotations": annotations},
                         sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


async def _write(layout: Layout, sources: Mapping[str, Path], root: Path, tree: Path | None, part: Path,
                 copy: bool, step: str) -> list[str]:
    """Make `layout` in `root` from `sources`, in a thread: straight there, or (with a
    conversion cache `tree`) in `part` first, which becomes `tree` once whole."""
    def run() -> list[str]:
        if tree is None:
            return write_layout(layout, sources, root, copy=copy)
        write_layout(layout, sources, part)
        for path in layout.made():
            part.joinpath(*path.split("/")).chmod(0o444)  # shared by every job that links it
        tree.parent.mkdir(parents=True, exist_ok=True)
        try:
            part.rename(tree)
        except OSError:  # another job finished the same conversion first: use its tree
            if not tree.is_dir():
                raise
        return _link_tree(layout, tree, root, copy)
    try:
        return await asyncio.to_thread(run)
    except ConversionError as e:
        raise JobFailed(f"{step}: {e}") from None


def _reuse_tree(layout: Layout, tree: Path, root: Path, copy: bool) -> list[str] | None:
    """A cached tree linked into `root`; None (the tree removed, to be made again) when a
    file of it is gone (a cache pruned by hand)."""
    try:
        return _link_tree(layout, tree, root, copy)
    except FileNotFoundError:
        shutil.rmtree(tree, ignore_errors=True)
        return None


def _link_tree(layout: Layout, tree: Path, root: Path, copy: bool) -> list[str]:
    """A finished layout at `tree` linked (or copied) into `root`; its files, sorted."""
    for folder in layout.folders:
        root.joinpath(*folder.split("/")).mkdir(parents=True, exist_ok=True)
    files = layout.files()
    for path in files:
        parts = path.split("/")
        materialise(tree.joinpath(*parts), root.joinpath(*parts), copy)
    return files


async def fetch_categories(access: ServerAccess, pk: int, app: str = "classify") -> dict[str, list[str]]:
    """The image-classification labels of dataset `pk`: {file name: [category, ...]} (`app`
    ``spectra``: the spectrum-classification categories, the same shape)."""
    reply = await access.get(f"/v1/{app}/datasets/{pk}/categories", what=f"dataset {pk}: categories")
    if not isinstance(reply, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(c, str) for c in v)
            for k, v in reply.items()):
        raise JobFailed(f"dataset {pk}: the categories are {one_line(repr(reply), 80)}, "
                        f"not {{file: [category]}}")
    return {name: list(cats) for name, cats in reply.items()}


async def _annotations_json(access: ServerAccess, path: str, what: str) -> dict[str, Any]:
    """A domain's annotations of every file (``{file: ...}``); each domain's reader in
    :mod:`.convert` checks the entries."""
    reply = await access.get(path, what=what)
    if not isinstance(reply, dict):
        raise JobFailed(f"{what}: the server answered {one_line(repr(reply), 80)}, not {{file: ...}}")
    return reply


async def fetch_od_annotations(access: ServerAccess, pk: int) -> dict[str, Any]:
    """The object-detection annotations of dataset `pk`: {file: {format, dimensions, annotations}}."""
    return await _annotations_json(access, f"/v1/objdet/datasets/{pk}/annotations",
                                   f"dataset {pk}: annotations")


async def fetch_spectrum_categories(access: ServerAccess, pk: int) -> dict[str, list[str]]:
    """The spectrum-classification categories of dataset `pk`: {file name: [category, ...]}."""
    return await fetch_categories(access, pk, "spectra")


async def fetch_transcriptions(access: ServerAccess, pk: int) -> dict[str, Any]:
    """The speech transcriptions of dataset `pk`: {file: {"transcription": text}}."""
    return await _annotations_json(access, f"/v1/speech/datasets/{pk}/transcriptions",
                                   f"dataset {pk}: transcriptions")


# Where each domain's annotations come from (what ``from-ufdl-<domain>`` reads), by domain code.
ANNOTATION_SOURCES: dict[str, Callable[[ServerAccess, int], Awaitable[Any]]] = {
    "ic": fetch_categories, "od": fetch_od_annotations, "sp": fetch_transcriptions,
    "sc": fetch_spectrum_categories}


def domain_code(value: Any) -> str:
    """A record's domain as its code (``ic``, ``od``...), whichever way the record writes it."""
    name = domain_name(value)
    return next((code for code, full in DOMAINS.items() if full.casefold() == name.casefold()), name.lower())


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
