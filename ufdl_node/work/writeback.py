"""Predictions written back into their dataset, per domain, with the real server's calls.

What the stock predict executors do with ``store_predictions`` (``ufdl-job-launcher-plugins``,
``classify/*``, ``objdet/core.py``, ``speech/core.py``, ``spectra/weka/executors.py``), and
the python client's calls they make (UFDL-API.md section 8):

- image classification: each image's most probable label (``PATCH /v1/classify/datasets/{pk}/
  categories``, as :func:`ufdl_node.work.labels.store_predictions`: the image ends up holding
  just its prediction); with ``confidence_scores``, ``{"confidence": {"top_score",
  "entropy"}}`` merged into its metadata (``POST .../metadata/{file}``);
- object detection: each image's boxes replace its annotations (``POST /v1/objdet/datasets/
  {pk}/annotations/{file}``, a list of ``{x, y, width, height, label, polygon?}``); an image
  without a file type (not in ``GET .../annotations``, read once) gets one first (``POST
  .../file-type/{file}`` with its format and size read from the image; the stock launcher
  leaves that to a labelling tool and so fails on such an image);
  ``{"scores": [...]}`` and, with ``confidence_scores``, ``"confidence"`` merged into its
  metadata; a video's frames become one list of annotations with ``time`` for the video;
- speech: each file's transcription (``POST /v1/speech/datasets/{pk}/transcriptions/{file}``);
- spectrum classification: each spectrum's label (``PATCH /v1/spectra/datasets/{pk}/categories``).

``clear_dataset`` clears every annotation first (``DELETE /v1/datasets/{pk}/clear``). The
stock launcher clears before it downloads the dataset, even when the job then fails; here it
clears once the framework has run and its predictions were read, so that a failed job leaves
the dataset as it was. A call the server refuses fails the job with one line saying how far it
got (what was written stays; the stock launcher logs it and goes on).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import JobFailed, ServerError
from ..logs import one_line
from .datasets import clear_annotations
from .imagesize import NotAnImage, image_format, image_size
from .labels import store_predictions as store_labels
from .predictions import Prediction, box_confidence, domain_of, label_confidence, read_predictions
from .server_access import ServerAccess

PREFIXES = {"ic": "/v1/classify/datasets", "od": "/v1/objdet/datasets", "sp": "/v1/speech/datasets",
            "sc": "/v1/spectra/datasets"}
FileFinder = Callable[[str], Path | None]


def _file(pk: int, domain: str, what: str, name: str) -> str:
    return f"{PREFIXES[domain]}/{pk}/{what}/{quote(name, safe='')}"


async def write_back(access: ServerAccess, pk: int, fmt: str, predictions: list[Prediction], *,
                     clear: bool = False, confidence: bool = False,
                     find_file: FileFinder | None = None) -> int:
    """Write `predictions` (format `fmt`, see :mod:`ufdl_node.work.predictions`) into dataset
    `pk`; the files written. `clear` clears the dataset first; `confidence` adds the stock
    ``Common`` confidence scores to each file's metadata; `find_file` finds a dataset file on
    disk (an object-detection image without a file type needs its size)."""
    domain = domain_of(fmt)
    done = 0
    try:
        if clear:
            await clear_annotations(access, pk)
        if domain in ("ic", "sc"):
            labels = {p.file: p.label for p in predictions}
            await store_labels(access, pk, labels, domain=domain)
            done = sum(1 for p in predictions if p.label)
            if confidence and domain == "ic":
                for p in predictions:
                    values = {"confidence": label_confidence(p.scores)}
                    await _merge_metadata(access, pk, domain, p.file, values)
        elif domain == "od":
            done = await _write_boxes(access, pk, predictions, confidence, find_file)
        else:
            for p in predictions:
                await access.json("POST", _file(pk, "sp", "transcriptions", p.file),
                                  json={"transcription": p.text or ""}, what=f"transcription of {p.file}")
                done += 1
    except (ServerError, JobFailed) as e:
        kept = "the dataset was cleared; " if clear else ""
        raise JobFailed(f"dataset {pk}: storing the predictions stopped after {done} file(s): "
                        f"{one_line(e, 160)} ({kept}what was written stays)") from None
    return done


async def _merge_metadata(access: ServerAccess, pk: int, domain: str, name: str,
                          values: dict[str, Any]) -> None:
    """Merge `values` into file `name`'s metadata (a JSON object in a text, "" when none)."""
    path = _file(pk, domain, "metadata", name)
    reply = await access.get(path, what=f"metadata of {name}")
    text = reply.get("metadata", "") if isinstance(reply, dict) else ""
    try:
        current = json.loads(text) if text else {}
    except ValueError:
        current = {}
    if not isinstance(current, dict):
        current = {}
    current.update(values)
    await access.json("POST", path, json={"metadata": json.dumps(current)}, what=f"metadata of {name}")


async def _write_boxes(access: ServerAccess, pk: int, predictions: list[Prediction], confidence: bool,
                       find_file: FileFinder | None) -> int:
    images = [p for p in predictions if p.frame_time is None]
    videos: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        if p.frame_time is not None:
            videos.setdefault(p.file, []).extend({**a, "time": p.frame_time} for a in p.annotations)
    typed = await access.get(f"{PREFIXES['od']}/{pk}/annotations", what=f"dataset {pk}: annotations")
    # the files with a file type: the real server lists exactly those (each its annotations container)
    entries = typed.items() if isinstance(typed, dict) else ()
    has_type = {name for name, entry in entries if isinstance(entry, dict) and entry.get("format")}
    done = 0
    for p in images:
        if p.file not in has_type:
            await _set_file_type(access, pk, p.file, find_file)
        await access.json("POST", _file(pk, "od", "annotations", p.file), json=p.annotations,
                          what=f"annotations of {p.file}")
        values: dict[str, Any] = {"scores": [s if s == s else None for s in p.box_scores]}
        if confidence:
            values["confidence"] = box_confidence(p)
        await _merge_metadata(access, pk, "od", p.file, values)
        done += 1
    for video, boxes in sorted(videos.items()):
        await access.json("POST", _file(pk, "od", "annotations", video), json=boxes,
                          what=f"annotations of {video}")
        done += 1
    return done


async def _set_file_type(access: ServerAccess, pk: int, name: str, find_file: FileFinder | None) -> None:
    """Give image `name`, which has no file type yet, its format and size (from its header)."""
    fmt = image_format(Path(name))
    path = await asyncio.to_thread(find_file, name) if find_file and fmt else None
    if path is None or fmt is None:
        raise JobFailed(f"{name}: no file type on the server, and no image on the node to read its size from")
    try:
        width, height = await asyncio.to_thread(image_size, path)
    except (NotAnImage, OSError) as e:
        raise JobFailed(f"{name}: {e}") from None
    await access.json("POST", _file(pk, "od", "file-type", name),
                      json={"format": fmt, "dimensions": [width, height]}, what=f"file type of {name}")


def finder(*roots: Path) -> FileFinder:
    """A FileFinder that looks for a dataset file by its base name directly in `roots`,
    then anywhere below them (the layouts the writers make), never outside them."""
    def find(name: str) -> Path | None:
        base = Path(name).name
        for root in roots:
            direct = root / base
            if direct.is_file():
                return direct
        for root in roots:
            for found in root.rglob(base) if root.is_dir() else ():
                if found.is_file() and not found.is_symlink():
                    return found
        return None
    return find


async def store_directory(access: ServerAccess, pk: int, directory: Path, fmt: str, files: Iterable[str], *,
                          store: bool, clear: bool = False, confidence: bool = False,
                          roots: Iterable[Path] = ()) -> int:
    """A predict job's end, as the stock executors' ``_post_run``: the predictions in
    `directory` (format `fmt`) for the dataset files `files` read and checked (in a thread;
    bad output fails the job before anything is written), then, with `store`, written back
    into dataset `pk`; `clear` (``clear_dataset``) clears the dataset first, stored or not.
    `roots`: where the dataset's images are on the node (beside `directory`). The files written."""
    predictions = await asyncio.to_thread(read_predictions, directory, fmt, list(files))
    if not store:
        if clear:
            await clear_annotations(access, pk)
        return 0
    return await write_back(access, pk, fmt, predictions, clear=clear, confidence=confidence,
                            find_file=finder(directory, *roots))
