"""A dataset converted on the node into the layout a template's ``dataset_options`` ask for.

The real server converts nothing (UFDL-API.md section 8): the stock job launcher
downloads a dataset's files and its domain's annotations through the API and writes
the layout with wai.annotations 0.8.0, the template's ``dataset_options`` being the
writer and its options. This module is the node's version of that run, in two steps:

- :func:`plan_layout` (pure): from a parsed :class:`~.wai_options.Plan`, the dataset's
  file names (in the order of their names: the order splits are made in, so that a
  re-run gives the same split) and its annotations, a :class:`Layout`: where each file
  goes, the files the conversion makes (a labels file), the folders it makes. Every path
  is checked before anything is written: a name that would leave the directory, or be
  written twice, or a label that cannot be a folder name is a
  :class:`~.wai_options.ConversionError`.
- :func:`write_layout` (blocking: run it in a thread): the layout made in a directory
  from files already on disk (the node's content-addressed cache): hard links where the
  file system allows, else copies; no file's bytes are held in memory.

Writers (what the node runs, with wai.annotations' layout):

- ``write-labels [-f csv|csv-headless|list|json|json-pretty] -o FILE`` (any stage
  before the writer): the labels the files carry (``csv-headless``: ``dog,cat``;
  ``csv``: a ``label_1,label_2`` header line first; ``list``: one per line; no final
  newline). wai.annotations writes them in set order; here they are sorted.
- ``to-subdir-ic -o DIR [--split-names N...] [--split-ratios R...] [--no-interleave]``:
  each image at ``DIR/<split>/<label>/<name>`` (no split level without splits); an
  image without a label directly in ``DIR/<split>/``, as wai.annotations'
  ``SubDirWriter`` puts it. Every split's folder is made, even an empty one.
- ``to-images-ic [-o DIR]``: each image at ``DIR/<name>``, without labels.

An image's label is its first category (as ``from-ufdl-ic`` takes it). To add a writer
(issue 18: ``to-yolo-od``, ``to-coco-od``, ``to-coqui-stt-sp``, ``to-subdir-sc``), give
its options in :data:`.wai_options.STAGES`, its layout function in :data:`WRITERS`, and
its domain's labels in :data:`DOMAIN_LABELS` (the annotation source goes in
:mod:`.datasets`).

The converted layout is not cached as such: it is a set of links to the cached files
plus a few small generated files, so making it again costs what copying a cached tree
would; the split is the same on every run because the schedule is deterministic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .wai_options import STAGES, ConversionError, Plan, Stage, relative, segment, shown, split_schedule


@dataclass(frozen=True)
class Layout:
    """Where a conversion puts things: each dataset file's path in the directory (a file
    it leaves out is absent), the files it makes (path → bytes), and the folders it makes
    even when nothing goes in them."""

    paths: dict[str, str]
    generated: dict[str, bytes]
    folders: tuple[str, ...] = ()

    def files(self) -> list[str]:
        """Every file of the layout, sorted."""
        return sorted([*self.paths.values(), *self.generated])


# A writer: (its stage, the dataset's files in order, each file's label) → (paths, folders).
Writer = Callable[[Stage, Sequence[str], Mapping[str, "str | None"]], tuple[dict[str, str], list[str]]]


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _to_images(stage: Stage, files: Sequence[str], label_of: Mapping[str, str | None]) -> tuple[
        dict[str, str], list[str]]:
    base = relative(stage.output, f"{stage.name} -o")
    return {name: _join(base, name) for name in files}, []


def _to_subdir(stage: Stage, files: Sequence[str], label_of: Mapping[str, str | None]) -> tuple[
        dict[str, str], list[str]]:
    base = relative(stage.output, f"{stage.name} -o")
    names, ratios = stage.splits
    cycle = split_schedule(names, ratios, interleave=not stage.flag("no_interleave")) if names else [""]
    paths = {}
    for index, name in enumerate(files):
        label = label_of.get(name)
        folder = "" if label is None else segment(label, f"the label of {name!r},")
        paths[name] = _join(base, cycle[index % len(cycle)], folder, name)
    return paths, [_join(base, split) for split in names]


WRITERS: dict[str, Writer] = {"to-subdir-ic": _to_subdir, "to-images-ic": _to_images}


def _ic_labels(files: Sequence[str], annotations: Any) -> dict[str, str | None]:
    """Each image's first category (None without one), as ``from-ufdl-ic`` reads them."""
    categories: Mapping[str, Sequence[str]] = annotations or {}
    return {name: (categories[name][0] if categories.get(name) else None) for name in files}


# Each domain's reading of its annotations as one label per file (None: unlabelled).
DOMAIN_LABELS: dict[str, Callable[[Sequence[str], Any], dict[str, str | None]]] = {"ic": _ic_labels}


def _labels_text(labels: set[str], label_format: str) -> bytes:
    ordered = sorted(labels)
    if label_format == "csv-headless":
        text = ",".join(ordered)
    elif label_format == "csv":
        text = ",".join(f"label_{n + 1}" for n in range(len(ordered))) + "\n" + ",".join(ordered)
    elif label_format == "list":
        text = "\n".join(ordered)
    else:
        text = json.dumps({"labels": ordered}, indent=2 if label_format == "json-pretty" else None)
    return text.encode("utf-8")


def check_domain(plan: Plan, domain: str, domain_name: str) -> None:
    """Refuse a writer of another domain than the dataset's (`domain`, a code such as ``od``)."""
    if plan.domain != domain or domain not in DOMAIN_LABELS:
        wants = [name for name, spec in STAGES.items() if spec.sink and spec.domain == domain]
        offer = f"the node writes {', '.join(wants)} for it" if wants else \
            "the node converts no dataset of that domain yet"
        raise ConversionError(f"stage {shown(plan.sink.name)} writes another domain than the dataset's "
                              f"({domain_name}); {offer}")


def plan_layout(plan: Plan, files: Sequence[str], annotations: Any) -> Layout:
    """Run `plan` (its domain checked) over the dataset's `files` (sorted names) and its
    domain's `annotations`: where each file goes, and what is made."""
    label_of = DOMAIN_LABELS[plan.domain](files, annotations)
    labels = {label for label in label_of.values() if label is not None}
    generated = {relative(stage.output, "write-labels -o"): _labels_text(labels, stage.one("format", "csv")
                                                                           or "csv")
                 for stage in plan.stages if stage.name == "write-labels"}
    paths, folders = WRITERS[plan.sink.name](plan.sink, files, label_of)
    _check_paths([*paths.values(), *generated], folders)
    return Layout(paths=paths, generated=generated, folders=tuple(folders))


def _check_paths(files: Sequence[str], folders: Sequence[str]) -> None:
    """One name twice, or a file and a folder of one name, cannot both be in the layout."""
    files_at: set[str] = set()
    folders_at: set[str] = {f for folder in folders for f in _parents(folder + "/x")}
    for path in files:
        parents = _parents(path)
        if path in files_at or path in folders_at or any(p in files_at for p in parents):
            raise ConversionError(f"the conversion would write {shown(path)} twice "
                                  "(or as a file and a folder)")
        files_at.add(path)
        folders_at.update(parents)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(1, len(parts))]


# -- writing -----------------------------------------------------------------------------------


def materialise(source: Path, target: Path, copy: bool) -> None:
    """`source` at `target`: a hard link (unless `copy`), or a copy where a link is not possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    if not copy:
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copyfile(source, target)


def write_layout(layout: Layout, sources: Mapping[str, Path], dest: Path, *, copy: bool = False) -> list[str]:
    """Make `layout` under `dest` from the dataset's files at `sources` (name → path on
    disk); the files written, sorted. Blocking: run it in a thread."""
    for folder in layout.folders:
        dest.joinpath(*folder.split("/")).mkdir(parents=True, exist_ok=True)
    for name, path in layout.paths.items():
        materialise(sources[name], dest.joinpath(*path.split("/")), copy)
    for path, data in layout.generated.items():
        target = dest.joinpath(*path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return layout.files()
