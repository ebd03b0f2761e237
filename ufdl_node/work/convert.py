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

- ``to-subdir-sc`` (spectrum classification): as ``to-subdir-ic``, each spectrum in
  ``DIR/<split>/<category>/``.
- Object detection (:mod:`.convert_od`, :mod:`.tfrecords`): ``to-images-od``,
  ``to-yolo-od``, ``to-coco-od``, ``to-tf-od``; speech (:mod:`.convert_sp`):
  ``to-coqui-stt-sp``. Each module says its layout and options.

An image's label is its first category (as ``from-ufdl-ic`` takes it). To add a writer,
give its options in :data:`.wai_options.STAGES`, its layout function in :data:`WRITERS`,
its domain's reading of the annotations in :data:`DOMAIN_READERS` and :data:`DOMAIN_LABELS`
(the annotation source goes in :mod:`.datasets`).

:mod:`.datasets` caches the converted layout beside the files cache, by the dataset's
content (file hashes and annotations) and the options, so a second job on the same
dataset and template links a finished tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .convert_od import expand_videos, od_labels, read_od, to_coco_od, to_images_od, to_yolo_od
from .convert_sp import read_sp, to_coqui_stt_sp
from .layouts import Layout, Writer, check_paths, join, output_dir, split_cycle
from .tfrecords import to_tf_od
from .videoframes import parse_specs, video_sources
from .wai_options import STAGES, ConversionError, Plan, Stage, relative, segment, shown

__all__ = ["Layout", "check_domain", "materialise", "plan_layout", "write_layout"]


def _to_images(stage: Stage, files: Sequence[str], label_of: Mapping[str, Any]) -> Layout:
    base = output_dir(stage)
    return Layout({name: join(base, name) for name in files}, {})


def _to_subdir(stage: Stage, files: Sequence[str], label_of: Mapping[str, Any]) -> Layout:
    base = output_dir(stage)
    cycle = split_cycle(stage)
    paths = {}
    for index, name in enumerate(files):
        label = label_of.get(name)
        folder = "" if label is None else segment(label, f"the label of {name!r},")
        paths[name] = join(base, cycle[index % len(cycle)], folder, name)
    names, _ = stage.splits
    return Layout(paths, {}, tuple(join(base, split) for split in names))


WRITERS: dict[str, Writer] = {
    "to-subdir-ic": _to_subdir, "to-images-ic": _to_images, "to-images-od": to_images_od,
    "to-yolo-od": to_yolo_od, "to-coco-od": to_coco_od, "to-tf-od": to_tf_od,
    "to-coqui-stt-sp": to_coqui_stt_sp, "to-subdir-sc": _to_subdir}


def _ic_labels(files: Sequence[str], annotations: Any) -> dict[str, str | None]:
    """Each image's first category (None without one), as ``from-ufdl-ic`` reads them."""
    categories: Mapping[str, Sequence[str]] = annotations or {}
    return {name: (categories[name][0] if categories.get(name) else None) for name in files}


# Each domain's reading of its annotations, one entry per file, and the labels write-labels lists.
DOMAIN_READERS: dict[str, Callable[[Sequence[str], Any], Mapping[str, Any]]] = {
    "ic": _ic_labels, "od": read_od, "sp": read_sp, "sc": _ic_labels}
DOMAIN_LABELS: dict[str, Callable[[Mapping[str, Any]], set[str]]] = {
    "ic": lambda data: {label for label in data.values() if label is not None},
    "od": od_labels, "sp": lambda data: set(),
    "sc": lambda data: {label for label in data.values() if label is not None}}


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
    if plan.domain != domain or domain not in DOMAIN_READERS:
        wants = [name for name, spec in STAGES.items() if spec.sink and spec.domain == domain]
        offer = f"the node writes {', '.join(wants)} for it" if wants else \
            "the node converts no dataset of that domain yet"
        raise ConversionError(f"stage {shown(plan.sink.name)} writes another domain than the dataset's "
                              f"({domain_name}); {offer}")


def plan_layout(plan: Plan, files: Sequence[str], annotations: Any) -> Layout:
    """Run `plan` (its domain checked) over the dataset's `files` (sorted names) and its
    domain's `annotations`: where each file goes, and what is made. In an object-detection
    dataset each video becomes its frames (:mod:`.videoframes`, `plan.unlabelled`)."""
    data = DOMAIN_READERS[plan.domain](files, annotations)
    frames: dict[str, tuple[tuple[float, str], ...]] = {}
    if plan.domain == "od":
        files, data, frames = expand_videos(files, data, parse_specs(plan.unlabelled))
    elif plan.unlabelled:
        raise ConversionError("unlabelled (the frames to take from videos) is for object-detection datasets")
    labels = DOMAIN_LABELS[plan.domain](data)
    generated = {relative(stage.output, "write-labels -o"): _labels_text(labels, stage.one("format", "csv")
                                                                           or "csv")
                 for stage in plan.stages if stage.name == "write-labels"}
    made = WRITERS[plan.sink.name](plan.sink, files, data)
    for path, content in made.generated.items():
        if path in generated:
            raise ConversionError(f"the conversion would write {shown(path)} twice")
        generated[path] = content
    check_paths([*made.paths.values(), *generated, *made.streamed], made.folders)
    return Layout(made.paths, generated, made.folders, made.streamed, frames)


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
    disk); the files written, sorted. The streamed files read the sources one at a time;
    videos' frames are extracted into a scratch folder in `dest` first (gone at the end),
    then placed as files are. Blocking: run it in a thread."""
    if not layout.frames:
        return _write_layout(layout, sources, dest, copy)
    dest.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".ufdl-frames-", dir=dest))
    try:
        frames = video_sources(layout.frames, sources, scratch)
        return _write_layout(layout, {**sources, **frames}, dest, copy)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_layout(layout: Layout, sources: Mapping[str, Path], dest: Path, copy: bool) -> list[str]:
    for folder in layout.folders:
        dest.joinpath(*folder.split("/")).mkdir(parents=True, exist_ok=True)
    for name, path in layout.paths.items():
        materialise(sources[name], dest.joinpath(*path.split("/")), copy)
    for path, data in layout.generated.items():
        target = dest.joinpath(*path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for path, stream in layout.streamed.items():
        target = dest.joinpath(*path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        stream(target, sources)
    return layout.files()
