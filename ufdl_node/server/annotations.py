"""The part of wai.annotations that the embedded server runs on an archive download.

The real server converts a dataset on ``POST .../download`` with
``params.annotations_args``: a wai.annotations command line without its input
stage (the dataset is the input). The embedded server runs the subset that the
shipped image-classification definitions use, with the layout wai.annotations
gives:

- ``write-labels [-f csv|csv-headless|list|json|json-pretty] -o FILE``: the
  labels the images carry, as wai.annotations formats them (``csv-headless``:
  one line, ``dog,cat``; ``csv``: a ``label_1,label_2`` header line first;
  ``list``: one per line; no final newline). wai.annotations writes them in set
  order; here they are sorted, so that a download is reproducible.
- ``to-subdir-ic -o DIR [--split-names N...] [--split-ratios R...] [--no-interleave]``:
  each image at ``DIR/<split>/<label>/<name>`` (without the split level when not
  splitting; an image without a label directly in ``DIR/<split>/``). Images go to
  the splits in the order of the dataset's file names, by wai.annotations'
  schedule: the ratios reduced by their gcd, then a cycle of that many slots in
  which each slot goes to the split whose counts, with one more, point closest to
  the ratios (wai.bynning's ``SplitBinner``); 70/15/15 gives a cycle of 20.
- ``to-images-ic [-o DIR]``: each image at ``DIR/<name>``, without labels.

An image's label is its first category (as the UFDL reader of wai.annotations
takes it). As on the real server, an output stage without ``-o``/``--output``
writes to ``annotations``; global options and input stages are refused.
Anything else (another stage or option, a domain other than image
classification) is an :class:`UnsupportedAnnotations` error with a one-line
message naming it, never a silent ignore. Every path comes out normalised and
inside the archive: names that would leave it, or collide, are refused.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

IC = "ic"
DEFAULT_OUTPUT = "annotations"  # what the real server adds to an output stage without -o
LABEL_FORMATS = ("csv", "csv-headless", "list", "json", "json-pretty")
SINKS = ("to-subdir-ic", "to-images-ic")
SUPPORTED = ("write-labels", *SINKS)
MAX_PATH_CHARS = 1024
MAX_SEGMENT_BYTES = 255
MAX_SPLITS = 20
MAX_CYCLE = 1000  # a split schedule longer than this is no ratio anyone means
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Where wai.annotations would start a new stage inside a list of option values.
_STAGE_LIKE = re.compile(r"(from|to)-[\w.-]+|write-labels")


class UnsupportedAnnotations(ValueError):
    """annotations_args the embedded server does not run, or that are malformed: a one-line reason."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "...")


@dataclass
class Stage:
    """One stage of the command line, its options parsed."""

    name: str
    output: str | None = None
    label_format: str = "csv"
    split_names: list[str] = field(default_factory=list)
    split_ratios: list[int] = field(default_factory=list)
    interleave: bool = True


@dataclass(frozen=True)
class Layout:
    """Where a conversion puts things: each dataset file's archive name (files it leaves out
    are absent), and the files it makes (name → bytes), such as a labels file."""

    paths: dict[str, str]
    generated: dict[str, bytes]


# -- parsing -----------------------------------------------------------------------------------


def _values(args: Sequence[str], at: int, stage: str, option: str, *, many: bool) -> list[str]:
    """The value(s) of `option` from args[at:]: one, or (many) up to the next option or stage."""
    found: list[str] = []
    for token in args[at:]:
        if token.startswith("-") or (found and (not many or _STAGE_LIKE.fullmatch(token))):
            break
        found.append(token)
        if not many:
            break
    if not found:
        raise UnsupportedAnnotations(f"annotations_args: {stage} {option} needs a value")
    return found


def _option(stage: Stage, args: Sequence[str], at: int) -> int:
    """Parse the option at args[at] into `stage`; the index after it."""
    option, name = args[at], stage.name
    if option in ("-o", "--output") or (name == "to-images-ic" and option == "--output-dir"):
        stage.output = _values(args, at + 1, name, option, many=False)[0]
        return at + 2
    if name == "write-labels" and option in ("-f", "--format"):
        stage.label_format = _values(args, at + 1, name, option, many=False)[0]
        if stage.label_format not in LABEL_FORMATS:
            raise UnsupportedAnnotations(f"annotations_args: write-labels {option} must be one of "
                                         f"{list(LABEL_FORMATS)}, not {_shown(stage.label_format)}")
        return at + 2
    if name == "to-subdir-ic" and option == "--split-names":
        stage.split_names = _values(args, at + 1, name, option, many=True)
        return at + 1 + len(stage.split_names)
    if name == "to-subdir-ic" and option == "--split-ratios":
        raw = _values(args, at + 1, name, option, many=True)
        if not all(r.isascii() and r.isdigit() and len(r) <= 6 for r in raw):
            raise UnsupportedAnnotations(f"annotations_args: to-subdir-ic --split-ratios must be "
                                         f"whole numbers >= 0, not {_shown(' '.join(raw))}")
        stage.split_ratios = [int(r) for r in raw]
        return at + 1 + len(raw)
    if name == "to-subdir-ic" and option == "--no-interleave":
        stage.interleave = False
        return at + 1
    raise UnsupportedAnnotations(f"annotations_args: option {_shown(option)} of stage {name} is not "
                                 "supported by the embedded server")


def parse(args: Sequence[str]) -> list[Stage]:
    """The stages of a wai.annotations command line: write-labels stages, then one output stage."""
    stages: list[Stage] = []
    at = 0
    while at < len(args):
        token = args[at]
        if token.startswith("-"):
            where = f"global option {_shown(token)}" if not stages else f"{_shown(token)}"
            raise UnsupportedAnnotations(f"annotations_args: {where} is not allowed here: a stage "
                                         f"({', '.join(SUPPORTED)}) must come first")
        if token.startswith("from-"):
            raise UnsupportedAnnotations(f"annotations_args: input stage {_shown(token)} is not allowed: "
                                         "the dataset is the input")
        if token not in SUPPORTED:
            raise UnsupportedAnnotations(f"annotations_args: stage {_shown(token)} is not supported by "
                                         f"the embedded server (it runs {', '.join(SUPPORTED)})")
        if stages and stages[-1].name in SINKS:
            raise UnsupportedAnnotations(f"annotations_args: stage {token} follows the output stage "
                                         f"{stages[-1].name}, which must be the last")
        stage = Stage(token)
        at += 1
        while at < len(args) and args[at].startswith("-"):
            at = _option(stage, args, at)
        stages.append(stage)
    if not stages or stages[-1].name not in SINKS:
        raise UnsupportedAnnotations(f"annotations_args: the last stage must be an output stage "
                                     f"({' or '.join(SINKS)})")
    for stage in stages:
        _check(stage)
    return stages


def _check(stage: Stage) -> None:
    if stage.name == "write-labels" and stage.output is None:
        raise UnsupportedAnnotations("annotations_args: write-labels needs -o FILE")
    if stage.name in SINKS and stage.output is None:
        stage.output = DEFAULT_OUTPUT
    if bool(stage.split_names) != bool(stage.split_ratios) \
            or len(stage.split_names) != len(stage.split_ratios):
        raise UnsupportedAnnotations("annotations_args: to-subdir-ic needs as many --split-names as "
                                     "--split-ratios")
    if len(stage.split_names) > MAX_SPLITS or len(set(stage.split_names)) != len(stage.split_names):
        raise UnsupportedAnnotations(f"annotations_args: to-subdir-ic --split-names must be distinct "
                                     f"(at most {MAX_SPLITS})")
    for name in stage.split_names:
        segment(name, "split name")
    if stage.split_ratios and (not any(stage.split_ratios)
                               or sum(stage.split_ratios) // math.gcd(*stage.split_ratios) > MAX_CYCLE):
        raise UnsupportedAnnotations("annotations_args: to-subdir-ic --split-ratios need one above 0, "
                                     f"and a cycle (their sum over their gcd) of at most {MAX_CYCLE}")


# -- paths -----------------------------------------------------------------------------------------


def segment(name: str, what: str) -> str:
    """`name` as one directory or file name inside the archive; refused when it could be more."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or _CONTROL.search(name) \
            or len(name.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
        raise UnsupportedAnnotations(f"annotations_args: {what} {_shown(name)} cannot be a name in the "
                                     "archive (one path segment, no '/', '\\' or control characters)")
    return name


def relative(path: str, what: str) -> str:
    """An -o value as a normalised path inside the archive ("" for its top level)."""
    if "\\" in path or _CONTROL.search(path) or len(path) > MAX_PATH_CHARS:
        raise UnsupportedAnnotations(f"annotations_args: {what} {_shown(path)} is not a usable path")
    normal = posixpath.normpath(path) if path else "."
    if normal.startswith("/") or normal == ".." or normal.startswith("../"):
        raise UnsupportedAnnotations(f"annotations_args: {what} {_shown(path)} leaves the archive; "
                                     "outputs are relative to its top level")
    return "" if normal == "." else normal


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


# -- the split schedule ------------------------------------------------------------------------


def split_schedule(names: Sequence[str], ratios: Sequence[int], *, interleave: bool = True) -> list[str]:
    """The split of each slot of wai.annotations' cycle; image i goes to slot i % len(cycle).

    wai.bynning's SplitBinner: each slot goes to the split whose counts, with one more,
    have the greatest squared cosine with the ratios (the first of equals wins). The
    ratios' own norm is the same for every candidate, so it is left out of the comparison.
    """
    divisor = math.gcd(*ratios)
    reduced = [r // divisor for r in ratios]
    counts = [0] * len(reduced)
    dot = norm = 0  # counts·reduced and counts·counts, kept as counts grow
    order: list[int] = []
    for _ in range(sum(reduced)):
        best, best_value = 0, Fraction(-1)
        for index, ratio in enumerate(reduced):
            value = Fraction((dot + ratio) ** 2, norm + 2 * counts[index] + 1)
            if value > best_value:
                best, best_value = index, value
        dot += reduced[best]
        norm += 2 * counts[best] + 1
        counts[best] += 1
        order.append(best)
    if not interleave:  # wai.annotations' --no-interleave: each split's slots in one run
        order = sorted(order)
    return [names[i] for i in order]


# -- the conversion ----------------------------------------------------------------------------


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


def _sink_paths(sink: Stage, files: Sequence[str], label_of: Mapping[str, str | None]) -> dict[str, str]:
    base = relative(sink.output or DEFAULT_OUTPUT, f"{sink.name} -o")
    if sink.name == "to-images-ic":
        return {name: _join(base, name) for name in files}
    cycle = split_schedule(sink.split_names, sink.split_ratios, interleave=sink.interleave) \
        if sink.split_names else [""]
    paths = {}
    for index, name in enumerate(files):
        label = label_of[name]
        folder = "" if label is None else segment(label, f"the label of {name!r},")
        paths[name] = _join(base, cycle[index % len(cycle)], folder, name)
    return paths


def convert(stages: Sequence[Stage], files: Sequence[str],
            categories: Mapping[str, Sequence[str]]) -> Layout:
    """Run parsed `stages` over the dataset's `files` (in the order of their names) and
    their `categories` ({file: [category, ...]}): where each file goes, and what is made."""
    label_of = {name: (categories[name][0] if categories.get(name) else None) for name in files}
    labels = {label for label in label_of.values() if label is not None}
    generated = {relative(stage.output or "", "write-labels -o"): _labels_text(labels, stage.label_format)
                 for stage in stages if stage.name == "write-labels"}
    if "" in generated:
        raise UnsupportedAnnotations("annotations_args: write-labels -o must name a file")
    paths = _sink_paths(stages[-1], files, label_of)
    files_at: set[str] = set()
    folders: set[str] = set()
    for path in [*paths.values(), *generated]:
        parents = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1)]
        # one name twice, or a file and a folder of one name, cannot both be in the archive
        if path in files_at or path in folders or any(p in files_at for p in parents):
            raise UnsupportedAnnotations(f"annotations_args: the conversion would write {_shown(path)} "
                                         "twice (or as a file and a folder)")
        files_at.add(path)
        folders.update(parents)
    return Layout(paths=paths, generated=generated)


def plan(args: Sequence[str], domain: str, domain_name: str, files: Sequence[str],
         categories: Mapping[str, Sequence[str]]) -> Layout:
    """The layout that `args` (not empty) give a dataset of `domain` (its full `domain_name`
    for messages). Raises UnsupportedAnnotations with a one-line reason."""
    if domain != IC:
        first = next((a for a in args if not a.startswith("-")), args[0])
        raise UnsupportedAnnotations(
            f"annotations_args: the embedded server converts image-classification datasets only, "
            f"not {domain_name}: stage {_shown(first)} is not supported for this dataset")
    return convert(parse(args), files, categories)
