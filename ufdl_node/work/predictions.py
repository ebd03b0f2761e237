"""A predict job's prediction files read per domain, as the stock predict executors read them.

The stock executors (``ufdl-job-launcher-plugins``, their ``_post_run``) read what the
framework wrote into ``prediction/out`` and, with ``store_predictions``, write it back into
the dataset (:mod:`ufdl_node.work.writeback`). The formats, by the name a definition gives:

- ``ic-json`` (MMClassification): ``<image stem>.json`` ``{label: probability}``; the label
  is the most probable one;
- ``ic-csv`` (TensorFlow image classification): ``<image stem>.csv`` with ``label`` and
  ``probability`` columns; the label is the most probable one;
- ``rois-csv`` (every object-detection family): ``<image stem>-rois.csv`` in the
  wai.annotations ROI format (``x0,y0,x1,y1`` corners, or ``x,y,w,h`` sizes, ``label_str``,
  ``score``, optionally ``poly_x``/``poly_y``): a box ``x0, y0, x1 - x0 + 1, y1 - y0 + 1``
  (wai.annotations' ``ROIObject``), rounded to whole pixels as the server stores them;
- ``sp-txt`` (Coqui STT): ``<audio stem>.txt``, the transcription;
- ``sc-txt`` (Weka): ``<spectrum stem>.txt``, the label.

A prediction file names its dataset file by stem; a stem two dataset files share is
resolved by a file of that full name beside the prediction (the stock predict tools move
each input there), else refused. A video frame's name (``video.mp4@|frametime=1.5|.jpg``,
what the stock object-detection predict extracts with ``unlabelled``) names the video and
the time. Everything is read and checked before anything is written back, so that bad
output fails the job with one line and leaves the dataset as it was.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import JobFailed

FORMATS = {"ic-json": "ic", "ic-csv": "ic", "rois-csv": "od", "sp-txt": "sp", "sc-txt": "sc"}
_SUFFIX = {"ic-json": ".json", "ic-csv": ".csv", "rois-csv": "-rois.csv", "sp-txt": ".txt", "sc-txt": ".txt"}
VIDEO_FRAME = re.compile(r"^(?P<video>.*)@\|frametime=(?P<time>[0-9]+(\.[0-9]*)?|\.[0-9]+)\|\.jpg$")


@dataclass
class Prediction:
    """What the framework predicted for one dataset file (the fields of its domain)."""

    file: str
    label: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    box_scores: list[float] = field(default_factory=list)
    text: str | None = None
    frame_time: float | None = None


def domain_of(fmt: str) -> str:
    """The domain code (``ic``, ``od``, ``sp``, ``sc``) of prediction format `fmt`."""
    if fmt not in FORMATS:
        raise JobFailed(f"predictions: unknown format {fmt!r} (one of {', '.join(sorted(FORMATS))})")
    return FORMATS[fmt]


def read_predictions(directory: Path, fmt: str, files: Iterable[str]) -> list[Prediction]:
    """The predictions in `directory` (format `fmt`) for the dataset files `files`, by file
    name; blocking (run it in a thread). JobFailed names the first file that does not fit."""
    domain_of(fmt)
    by_stem: dict[str, list[str]] = {}
    for name in files:
        by_stem.setdefault(Path(name).stem, []).append(name)
    suffix = _SUFFIX[fmt]
    found: list[Prediction] = []
    if not directory.is_dir():
        raise JobFailed(f"predictions: {directory.name}/ was not written")
    for path in sorted(directory.iterdir()):
        if not path.is_file() or not path.name.endswith(suffix):
            continue
        if fmt == "ic-csv" and path.name.endswith("-rois.csv"):
            continue
        stem = path.name[: -len(suffix)]
        try:
            found.append(_read_one(path, fmt, _file_of(directory, stem, by_stem)))
        except (OSError, UnicodeDecodeError, ValueError, KeyError) as e:
            raise JobFailed(f"predictions: {path.name}: {e}") from None
    return found


def _file_of(directory: Path, stem: str, by_stem: dict[str, list[str]]) -> tuple[str, float | None]:
    """The dataset file (and a video frame's time) that prediction stem `stem` names."""
    frame = VIDEO_FRAME.match(stem + ".jpg")
    if frame and frame["video"] in {n for names in by_stem.values() for n in names}:
        return frame["video"], float(frame["time"])
    names = by_stem.get(stem, [])
    if len(names) == 1:
        return names[0], None
    beside = [n for n in names if (directory / n).is_file()]
    if len(beside) == 1:
        return beside[0], None
    if not names:
        raise ValueError(f"no file of the dataset is named {stem}.*")
    raise ValueError(f"{len(names)} files of the dataset are named {stem}.* ({', '.join(sorted(names))})")


def _read_one(path: Path, fmt: str, target: tuple[str, float | None]) -> Prediction:
    name, time = target
    if fmt == "ic-json":
        scores = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(scores, dict) or not all(isinstance(v, (int, float)) for v in scores.values()):
            raise ValueError("not {label: probability}")
        return _labelled(name, {str(k): float(v) for k, v in scores.items()})
    if fmt == "ic-csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if "label" in r and "probability" in r]
        return _labelled(name, {r["label"]: float(r["probability"]) for r in rows})
    if fmt == "rois-csv":
        with path.open(newline="", encoding="utf-8") as f:
            boxes = [roi_annotation(row) for row in csv.DictReader(f)]
        return Prediction(name, annotations=[b for b, _ in boxes], box_scores=[s for _, s in boxes],
                          frame_time=time)
    text = path.read_text(encoding="utf-8")
    return Prediction(name, text=text) if fmt == "sp-txt" else Prediction(name, label=text.strip() or None)


def _labelled(name: str, scores: dict[str, float]) -> Prediction:
    best = max(scores.items(), key=lambda item: item[1], default=None)
    return Prediction(name, label=best[0] if best else None, scores=scores)


def roi_annotation(row: dict[str, str]) -> tuple[dict[str, Any], float]:
    """One row of a ROI CSV as a server annotation ``{x, y, width, height, label, polygon?}``
    and its score (wai.annotations' ``ROIObject``: corner or size mode)."""
    def num(key: str) -> float:
        return float(row[key])
    if row.get("x", "") != "":
        x0, y0, w, h = num("x"), num("y"), num("w"), num("h")
    else:
        x0, y0 = num("x0"), num("y0")
        w, h = num("x1") - x0 + 1, num("y1") - y0 + 1
    label = row.get("label_str") or row.get("label") or ""
    if not label:
        raise ValueError("a row without label_str")
    box: dict[str, Any] = {"x": round(x0), "y": round(y0), "width": max(0, round(w)),
                           "height": max(0, round(h)), "label": label}
    xs, ys = row.get("poly_x") or "", row.get("poly_y") or ""
    if xs and ys:
        pairs = zip(xs.split(","), ys.split(","), strict=True)
        points = [[round(float(a)), round(float(b))] for a, b in pairs]
        if len(points) >= 3:
            box["polygon"] = {"points": points}
    score = row.get("score", "")
    return box, float(score) if score != "" else math.nan


# -- confidence scores (the stock ``confidence.Common`` of each domain) ---------------------------


def _stats(prefix: str, values: Sequence[float]) -> dict[str, float | None]:
    """min/max/mean/median/stdev (population, as numpy's) of `values`; None when empty
    (the stock code writes NaN, which is not JSON)."""
    if not values:
        return {f"{prefix}-{k}": None for k in ("min", "max", "mean", "median", "stdev")}
    return {f"{prefix}-min": min(values), f"{prefix}-max": max(values),
            f"{prefix}-mean": statistics.fmean(values), f"{prefix}-median": statistics.median(values),
            f"{prefix}-stdev": statistics.pstdev(values)}


def label_confidence(scores: dict[str, float]) -> dict[str, float | None]:
    """``top_score`` and ``entropy`` (-sum p ln p) of an image's label scores
    (``classify.confidence.Common``)."""
    top = max([0.0, *scores.values()])
    try:
        entropy: float | None = -sum(p * math.log(p) for p in scores.values())
    except ValueError:  # a zero or negative probability: NaN in the stock code
        entropy = None
    return {"top_score": top, "entropy": entropy}


def box_confidence(prediction: Prediction) -> dict[str, float | None]:
    """The score distribution and the boxes' width/height distributions
    (``objdet.confidence.Common``: ``score-dist-*``, ``widths-*``, ``heights-*``)."""
    scores = [s for s in prediction.box_scores if not math.isnan(s)]
    return {**_stats("score-dist", scores),
            **_stats("widths", [float(a["width"]) for a in prediction.annotations]),
            **_stats("heights", [float(a["height"]) for a in prediction.annotations])}


def wants_confidence(classes: Any) -> bool:
    """Whether a template's ``confidence_scores`` (class names: a list, or one text of names
    separated by ``;``) asks for the ``Common`` scores (or one of its parts); other classes are
    not known on the node."""
    names = classes.split(";") if isinstance(classes, str) else list(classes or [])
    known = {"Common", "TopScore", "Entropy", "ScoreDist", "ObjectDims"}
    return any(isinstance(n, str) and n.strip().rsplit(".", 1)[-1] in known for n in names)
