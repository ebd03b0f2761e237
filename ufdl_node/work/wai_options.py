"""A template's ``dataset_options`` read as wai.annotations 0.8.0 reads its command line.

The stock job launcher converts a dataset on the node: it runs wai.annotations with
``from-ufdl-<domain>`` as the input stage and the template's ``dataset_options`` as the
rest of the command line (launcher: ``executors/_util.py`` ``download_dataset``). The
node does the same conversion itself (:mod:`.convert`); this module is its reader of
that command line, with no I/O:

- :func:`parse` gives a :class:`Plan`: the stages in order, each with its options,
  the last one the writer (an output stage). Stages are what :data:`STAGES` knows:
  each a :class:`StageSpec` naming its domain (``None`` for a stage of any domain,
  such as ``write-labels``), whether it is an output stage, and its options. A new
  writer (``to-yolo-od``, ``to-coco-od``...) is one more spec here plus its layout in
  :mod:`.convert`.
- Every option takes its values as wai.annotations' argparse does: one value, or
  (``nargs="+"``) values up to the next option or stage. An output stage without
  ``-o``/``--output`` writes to ``annotations``, as the launcher's runs do.
- Anything else (a global option, an input stage, another stage or option, a value out
  of range, a path that leaves the job's directory) is a :class:`ConversionError` with a
  one-line reason naming it, never a silent ignore.
- :func:`split_schedule` is wai.annotations' split cycle (wai.bynning's ``SplitBinner``).
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

DEFAULT_OUTPUT = "annotations"  # where an output stage without -o writes
IMAGES_DEFAULT_OUTPUT = "."  # ... but wai.annotations' images writers (to-images-*) default to `-o .`
LABEL_FORMATS = ("csv", "csv-headless", "list", "json", "json-pretty")
MAX_PATH_CHARS = 1024
MAX_SEGMENT_BYTES = 255
MAX_SPLITS = 20
MAX_CYCLE = 1000  # a split schedule longer than this is no ratio anyone means
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Where wai.annotations would start a new stage inside a list of option values.
_STAGE_LIKE = re.compile(r"(from|to)-[\w.-]+|write-labels")


class ConversionError(ValueError):
    """Options the node does not run, or annotations that do not fit them: a one-line reason."""


def shown(text: str) -> str:
    """`text` quoted for a message, cut at 60 characters."""
    return repr(text if len(text) <= 60 else text[:60] + "...")


@dataclass(frozen=True)
class OptionSpec:
    """An option of a stage: its spellings, the key it is stored under, how many values it
    takes (``one``, ``many`` as nargs="+", or a ``flag``), and which values it allows
    (``choices``; ``ints``: whole numbers >= 0)."""

    names: tuple[str, ...]
    key: str
    arity: Literal["one", "many", "flag"] = "one"
    choices: tuple[str, ...] = ()
    ints: bool = False


@dataclass(frozen=True)
class StageSpec:
    """A stage the node runs: its name, its domain (a code such as ``ic``; None: any),
    whether it is an output stage (a writer, which comes last), and its options."""

    name: str
    domain: str | None
    sink: bool
    options: tuple[OptionSpec, ...]


OUTPUT = OptionSpec(("-o", "--output"), "output")
SPLIT_OPTIONS = (
    OptionSpec(("--split-names",), "split_names", "many"),
    OptionSpec(("--split-ratios",), "split_ratios", "many", ints=True),
    OptionSpec(("--no-interleave",), "no_interleave", "flag"),
)
IMAGES_OUTPUT = OptionSpec(("-o", "--output", "--output-dir"), "output")
ANNOTATIONS_ONLY = OptionSpec(("--annotations-only",), "annotations_only", "flag")
STAGES: dict[str, StageSpec] = {spec.name: spec for spec in (
    StageSpec("write-labels", None, False,
              (OUTPUT, OptionSpec(("-f", "--format"), "format", choices=LABEL_FORMATS))),
    StageSpec("to-subdir-ic", "ic", True, (OUTPUT, *SPLIT_OPTIONS)),
    StageSpec("to-images-ic", "ic", True, (IMAGES_OUTPUT,)),
    StageSpec("to-images-od", "od", True, (IMAGES_OUTPUT,)),
    StageSpec("to-yolo-od", "od", True, (
        OUTPUT, ANNOTATIONS_ONLY, *SPLIT_OPTIONS,
        OptionSpec(("-l", "--labels"), "labels"), OptionSpec(("-c", "--labels-csv"), "labels_csv"),
        OptionSpec(("-p", "--use-polygon-format"), "polygons", "flag"))),
    StageSpec("to-coco-od", "od", True, (
        OUTPUT, ANNOTATIONS_ONLY, *SPLIT_OPTIONS, OptionSpec(("--pretty",), "pretty", "flag"),
        OptionSpec(("--license-name",), "license_name"), OptionSpec(("--license-url",), "license_url"),
        OptionSpec(("--categories",), "categories", "many"),
        OptionSpec(("--error-on-new-category",), "error_on_new_category", "flag"),
        OptionSpec(("--default-supercategory",), "default_supercategory"),
        OptionSpec(("--sort-categories",), "sort_categories", "flag"),
        OptionSpec(("--category-output-file",), "category_output_file"))),
    StageSpec("to-tf-od", "od", True, (
        OUTPUT, *SPLIT_OPTIONS, OptionSpec(("-p", "--protobuf"), "protobuf"),
        OptionSpec(("--source-id-type",), "source_id_type", choices=("filename", "numeric-dummy")))),
    StageSpec("to-coqui-stt-sp", "sp", True, (OUTPUT, ANNOTATIONS_ONLY, *SPLIT_OPTIONS)),
    StageSpec("to-subdir-sc", "sc", True, (OUTPUT, *SPLIT_OPTIONS)),
)}
# Writers whose -o names a file (wai.annotations' ExpectsFile: required, its folder holds the split
# folders), and each writer's options that name a file, relative to where wai.annotations puts it.
FILE_OUTPUT = frozenset({"to-coco-od", "to-tf-od", "to-coqui-stt-sp"})
PATH_OPTIONS = {"to-yolo-od": ("labels", "labels_csv"), "to-coco-od": ("category_output_file",),
                "to-tf-od": ("protobuf",)}


@dataclass
class Stage:
    """One stage of the command line with the values of its options (a flag's: ())."""

    name: str
    values: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def one(self, key: str, default: str | None = None) -> str | None:
        """The value of a one-value option, or `default` when not given."""
        given = self.values.get(key)
        return given[0] if given else default

    def many(self, key: str) -> tuple[str, ...]:
        """The values of a many-value option (() when not given)."""
        return self.values.get(key, ())

    def flag(self, key: str) -> bool:
        """Whether a flag was given."""
        return key in self.values

    @property
    def output(self) -> str:
        """Where the stage writes (when not given: ``.`` for the images writers, whose ``-o``
        defaults to ``.`` in wai.annotations, so the stock predict default puts the images
        straight into the folder the launcher converts in; ``annotations`` for the others)."""
        default = IMAGES_DEFAULT_OUTPUT if self.name.startswith("to-images-") else DEFAULT_OUTPUT
        return self.one("output", default) or default

    @property
    def splits(self) -> tuple[list[str], list[int]]:
        """The split names and ratios ([] and [] when not splitting)."""
        return list(self.many("split_names")), [int(r) for r in self.many("split_ratios")]


@dataclass(frozen=True)
class Plan:
    """A parsed command line: its stages, the last one the writer; and the reader's
    ``--unlabelled`` values (video frames to take, :mod:`.videoframes`), where given."""

    stages: tuple[Stage, ...]
    unlabelled: tuple[str, ...] = ()

    @property
    def sink(self) -> Stage:
        """The output stage."""
        return self.stages[-1]

    @property
    def domain(self) -> str:
        """The domain code of the writer (``ic``...)."""
        return STAGES[self.sink.name].domain or ""


# -- parsing -----------------------------------------------------------------------------------


def _values(args: Sequence[str], at: int, stage: str, option: OptionSpec, spelt: str) -> list[str]:
    """The value(s) of `option` from args[at:]: one, or (many) up to the next option or stage."""
    found: list[str] = []
    for token in args[at:]:
        if token.startswith("-") or (found and (option.arity != "many" or _STAGE_LIKE.fullmatch(token))):
            break
        found.append(token)
        if option.arity != "many":
            break
    if not found:
        raise ConversionError(f"{stage} {spelt} needs a value")
    for value in found:
        if option.choices and value not in option.choices:
            raise ConversionError(f"{stage} {spelt} must be one of {list(option.choices)}, "
                                  f"not {shown(value)}")
        if option.ints and not (value.isascii() and value.isdigit() and len(value) <= 6):
            raise ConversionError(f"{stage} {spelt} must be whole numbers >= 0, not {shown(' '.join(found))}")
    return found


def _option(stage: Stage, spec: StageSpec, args: Sequence[str], at: int) -> int:
    """Parse the option at args[at] into `stage`; the index after it."""
    spelt = args[at]
    option = next((o for o in spec.options if spelt in o.names), None)
    if option is None:
        known = ", ".join(n for o in spec.options for n in o.names)
        raise ConversionError(f"option {shown(spelt)} of stage {spec.name} is not supported by the node "
                              f"(it knows {known})")
    if option.arity == "flag":
        stage.values[option.key] = ()
        return at + 1
    found = _values(args, at + 1, spec.name, option, spelt)
    stage.values[option.key] = tuple(found)
    return at + 1 + len(found)


def _stage_at(token: str, stages: list[Stage]) -> StageSpec:
    """The spec of the stage `token` starts, or the reason it cannot start one here."""
    if token.startswith("-"):
        where = f"global option {shown(token)}" if not stages else shown(token)
        raise ConversionError(f"{where} is not allowed here: a stage ({', '.join(STAGES)}) must come first")
    if token.startswith("from-"):
        raise ConversionError(f"input stage {shown(token)} is not allowed: the dataset is the input")
    spec = STAGES.get(token)
    if spec is None:
        raise ConversionError(f"stage {shown(token)} is not supported by the node "
                              f"(it runs {', '.join(STAGES)})")
    if stages and STAGES[stages[-1].name].sink:
        raise ConversionError(f"stage {token} follows the output stage {stages[-1].name}, "
                              "which must be the last")
    return spec


def parse(args: Sequence[str]) -> Plan:
    """The stages of a wai.annotations command line (no input stage): any stages, then
    one output stage. Raises ConversionError with a one-line reason."""
    if isinstance(args, str) or not all(isinstance(a, str) for a in args):
        raise ConversionError("the options must be a list of strings")
    stages: list[Stage] = []
    at = 0
    while at < len(args):
        spec = _stage_at(args[at], stages)
        stage = Stage(spec.name)
        at += 1
        while at < len(args) and args[at].startswith("-"):
            at = _option(stage, spec, args, at)
        stages.append(stage)
    sinks = [name for name, spec in STAGES.items() if spec.sink]
    if not stages or not STAGES[stages[-1].name].sink:
        raise ConversionError(f"the last stage must be an output stage ({' or '.join(sinks)})")
    for stage in stages:
        _check(stage)
    return Plan(tuple(stages))


def _check(stage: Stage) -> None:
    """What argparse alone does not check: required options, splits, paths."""
    if stage.name == "write-labels":
        if stage.one("output") is None:
            raise ConversionError("write-labels needs -o FILE")
        if relative(stage.output, "write-labels -o") == "":
            raise ConversionError("write-labels -o must name a file")
        return
    if stage.name in FILE_OUTPUT and (stage.one("output") is None or relative(stage.output, "") == ""):
        raise ConversionError(f"{stage.name} needs -o FILE (the file it writes)")
    relative(stage.output, f"{stage.name} -o")
    for key in PATH_OPTIONS.get(stage.name, ()):
        value = stage.one(key)
        if value is not None and relative(value, f"{stage.name} option {key.replace('_', '-')}") == "":
            raise ConversionError(f"{stage.name} option {key.replace('_', '-')} must name a file")
    names, ratios = stage.splits
    if len(names) != len(ratios):
        raise ConversionError(f"{stage.name} needs as many --split-names as --split-ratios")
    if len(names) > MAX_SPLITS or len(set(names)) != len(names):
        raise ConversionError(f"{stage.name} --split-names must be distinct (at most {MAX_SPLITS})")
    for name in names:
        segment(name, "split name")
    if ratios and (not any(ratios) or sum(ratios) // math.gcd(*ratios) > MAX_CYCLE):
        raise ConversionError(f"{stage.name} --split-ratios need one above 0, and a cycle "
                              f"(their sum over their gcd) of at most {MAX_CYCLE}")


# -- paths -------------------------------------------------------------------------------------


def segment(name: str, what: str) -> str:
    """`name` as one directory or file name in the layout; refused when it could be more."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or _CONTROL.search(name) \
            or len(name.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
        raise ConversionError(f"{what} {shown(name)} cannot be a name in the dataset's directory "
                              "(one path segment, no '/', '\\' or control characters)")
    return name


def relative(path: str, what: str) -> str:
    """An -o value as a normalised path inside the dataset's directory ("" for its top)."""
    if "\\" in path or _CONTROL.search(path) or len(path) > MAX_PATH_CHARS:
        raise ConversionError(f"{what} {shown(path)} is not a usable path")
    normal = posixpath.normpath(path) if path else "."
    if normal.startswith("/") or normal == ".." or normal.startswith("../"):
        raise ConversionError(f"{what} {shown(path)} leaves the dataset's directory; "
                              "outputs are relative to its top")
    return "" if normal == "." else normal


# -- the split schedule ------------------------------------------------------------------------


def split_schedule(names: Sequence[str], ratios: Sequence[int], *, interleave: bool = True) -> list[str]:
    """The split of each slot of wai.annotations' cycle; item i goes to slot i % len(cycle).

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

