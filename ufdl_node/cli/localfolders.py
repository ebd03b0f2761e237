"""A local folder read as a dataset of one domain: its files and what labels them.

- image classification (ic) and spectrum classification (sc): a sub-folder per label
  holding its files, or the files with a ``labels.csv`` of ``file,label`` lines (a file
  may have several lines, one per label);
- object detection (od): images (png, jpg, gif, bmp) with their boxes in a COCO file
  (a ``*.json`` with ``images``, ``annotations`` and ``categories``) or in YOLO ``.txt``
  files beside the images (``class cx cy w h``, fractions of the image) with the label
  names in ``labels.txt``, ``classes.txt`` or ``obj.names``. Each image's format comes
  from its extension and its size from its header;
- speech (sp): the audio files and a ``transcriptions.csv`` (or the folder's one ``*.csv``)
  of ``file,transcription`` lines.

Every problem is a ConfigError of one line, raised before anything is made on a server:
a file without a label (ic, sc) or transcription (sp), a label for a file the folder lacks,
two files of one name (dataset file names are one path segment).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..logs import one_line
from ..work.imagesize import FORMATS, NotAnImage, image_format, image_size

LABELS_FILE = "labels.csv"  # ic, sc: "file,label" lines instead of a folder per label
TRANSCRIPTIONS_FILE = "transcriptions.csv"
YOLO_NAMES = ("labels.txt", "classes.txt", "obj.names")


@dataclass(frozen=True)
class LocalDataset:
    """A folder read as a dataset: file name → local path, and per domain what labels them."""

    files: dict[str, Path]
    labels: dict[str, list[str]] = field(default_factory=dict)  # ic, sc
    # od: {file: {format, dimensions, annotations}}
    annotations: dict[str, dict[str, Any]] = field(default_factory=dict)
    transcriptions: dict[str, str] = field(default_factory=dict)  # sp


def _visible(relative: Path) -> bool:
    return not any(part.startswith(".") for part in relative.parts)  # .DS_Store, .git, backups


def _files(folder: Path, skip: set[Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    """name → path and name → path relative to `folder`, for every visible file but `skip`."""
    files: dict[str, Path] = {}
    relative: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p not in skip):
        rel = path.relative_to(folder)
        if not _visible(rel):
            continue
        if path.name in files:
            raise ConfigError(f"dataset folder {folder}: two files named {path.name!r} "
                              f"({relative[path.name]}, {rel}); dataset file names must differ")
        files[path.name], relative[path.name] = path, rel
    return files, relative


def _csv_rows(path: Path, header: list[str]) -> list[tuple[int, str, str]]:
    """(line number, file, value) of a two-column CSV; a first line equal to `header` is skipped."""
    rows: list[tuple[int, str, str]] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.reader(f), 1):
                if not row or (number == 1 and [c.strip().lower() for c in row] == header):
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise ConfigError(f"{path}:{number}: expected '{','.join(header)}', "
                                      f"got {one_line(row, 80)}")
                rows.append((number, row[0].strip(), row[1].strip()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{path}: cannot be read as CSV: {one_line(e, 120)}") from None
    return rows


def _known(path: Path, number: int, name: str, files: dict[str, Path]) -> str:
    if name not in files:
        raise ConfigError(f"{path}:{number}: no file {name!r} in the folder")
    return name


def _unlabelled(folder: Path, files: dict[str, Path], labelled: set[str], how: str) -> None:
    missing = sorted(set(files) - labelled)
    if missing:
        raise ConfigError(f"dataset folder {folder}: {len(missing)} file(s) without a {how} "
                          f"(first: {missing[0]})")


def read_classified(folder: Path, *, allow_unlabelled: bool = False) -> LocalDataset:
    """An ic or sc folder: a sub-folder per label, or the files and a labels.csv."""
    labels_file = folder / LABELS_FILE
    files, relative = _files(folder, {labels_file})
    labels: dict[str, list[str]] = {}
    if labels_file.is_file():
        for number, name, label in _csv_rows(labels_file, ["file", "label"]):
            found = labels.setdefault(_known(labels_file, number, name, files), [])
            if label not in found:
                found.append(label)
    else:
        labels = {name: [rel.parts[0]] for name, rel in relative.items() if len(rel.parts) == 2}
    if not allow_unlabelled:
        _unlabelled(folder, files, set(labels), "label: put each file in a sub-folder named by its "
                    f"label, or list it in {LABELS_FILE}")
    return LocalDataset(files, labels=labels)


def read_speech(folder: Path, *, allow_unlabelled: bool = False) -> LocalDataset:
    """An sp folder: audio files and a CSV of 'file,transcription' lines."""
    sheets = [p for p in folder.glob("*.csv") if p.is_file()]
    sheet = folder / TRANSCRIPTIONS_FILE if (folder / TRANSCRIPTIONS_FILE).is_file() else \
        sheets[0] if len(sheets) == 1 else None
    if sheet is None and len(sheets) > 1:
        raise ConfigError(f"dataset folder {folder}: {len(sheets)} CSV files; name the transcriptions "
                          f"{TRANSCRIPTIONS_FILE}")
    files, _ = _files(folder, {sheet} if sheet else set())
    texts: dict[str, str] = {}
    for number, name, text in _csv_rows(sheet, ["file", "transcription"]) if sheet else []:
        texts[_known(sheet, number, name, files)] = text  # type: ignore[arg-type]
    if not allow_unlabelled:
        _unlabelled(folder, files, set(texts), f"transcription (a CSV of 'file,transcription' lines, "
                    f"{TRANSCRIPTIONS_FILE})")
    return LocalDataset(files, transcriptions=texts)


# -- object detection -----------------------------------------------------------------------


def _coco_files(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{path}: not JSON: {one_line(e, 120)}") from None
        if isinstance(data, dict) and {"images", "annotations"} <= set(data):
            found.append(path)
    return found


def _box(x: float, y: float, width: float, height: float, label: str) -> dict[str, Any]:
    return {"x": round(x), "y": round(y), "width": max(0, round(width)), "height": max(0, round(height)),
            "label": label}


def _coco(path: Path, images: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """{image name: annotations} from a COCO file; a ConfigError for what does not fit."""
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        names = {c["id"]: str(c["name"]) for c in data.get("categories") or []}
        by_id: dict[Any, str] = {}
        for image in data["images"]:
            name = Path(str(image["file_name"])).name
            if name not in images:
                raise ConfigError(f"{path}: image {image['file_name']!r} is not in the folder")
            by_id[image["id"]] = name
        found: dict[str, list[dict[str, Any]]] = {}
        for item in data["annotations"]:
            if item["image_id"] not in by_id or item["category_id"] not in names:
                raise ConfigError(f"{path}: annotation {item.get('id')!r} names an unknown image or category")
            x, y, width, height = (float(v) for v in item["bbox"])
            box = _box(x, y, width, height, names[item["category_id"]])
            polygon = item.get("segmentation")
            if isinstance(polygon, list) and polygon and isinstance(polygon[0], list) \
                    and len(polygon[0]) >= 6:
                flat = [round(float(v)) for v in polygon[0]]
                box["polygon"] = {"points": [list(p) for p in zip(flat[::2], flat[1::2], strict=False)]}
            found.setdefault(by_id[item["image_id"]], []).append(box)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: not a COCO file this can read ({one_line(e, 80)})") from None
    return found


def _yolo(folder: Path, txts: dict[Path, Path],
          sizes: dict[str, tuple[int, int]]) -> dict[str, list[dict[str, Any]]]:
    """{image name: annotations} from YOLO .txt files (`txts`: txt → its image)."""
    names_file = next((folder / n for n in YOLO_NAMES if (folder / n).is_file()), None)
    if names_file is None:
        raise ConfigError(f"dataset folder {folder}: YOLO .txt annotations need the label names in one of "
                          f"{', '.join(YOLO_NAMES)}")
    names = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    found: dict[str, list[dict[str, Any]]] = {}
    for txt, image in txts.items():
        width, height = sizes[image.name]
        boxes = found.setdefault(image.name, [])
        for number, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                label = names[int(parts[0])]
                cx, cy, w, h = (float(v) for v in parts[1:5])
            except (ValueError, IndexError):
                raise ConfigError(f"{txt}:{number}: expected 'class cx cy w h' with a class of "
                                  f"{names_file.name} (0-{len(names) - 1})") from None
            boxes.append(_box((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height, label))
    return found


def read_detection(folder: Path) -> LocalDataset:
    """An od folder: images and their boxes (COCO or YOLO), each image's format and size."""
    cocos = _coco_files(folder)
    if len(cocos) > 1:
        raise ConfigError(f"dataset folder {folder}: {len(cocos)} COCO files ({cocos[0].name}, "
                          f"{cocos[1].name}); keep one")
    names_files = {folder / n for n in YOLO_NAMES}
    every, _ = _files(folder, set(cocos) | names_files)
    images = {n: p for n, p in every.items() if image_format(p)}
    txts = {p: p.with_suffix(s) for p in every.values() if p.suffix == ".txt"
            for s in FORMATS if p.with_suffix(s).is_file()}
    for name, path in every.items():
        if name not in images and path not in txts:
            raise ConfigError(f"dataset folder {folder}: {path.relative_to(folder)} is neither an image "
                              f"({', '.join(sorted(FORMATS))}) nor its YOLO .txt" +
                              ("" if path.suffix != ".txt" else ": no image of that name beside it"))
    if cocos and txts:
        raise ConfigError(f"dataset folder {folder}: both a COCO file and YOLO .txt files; keep one kind")
    sizes: dict[str, tuple[int, int]] = {}
    for name, path in images.items():
        try:
            sizes[name] = image_size(path)
        except (NotAnImage, OSError) as e:
            raise ConfigError(f"{path}: its size cannot be read: {one_line(e, 80)}") from None
    boxes = _coco(cocos[0], images) if cocos else _yolo(folder, txts, sizes) if txts else {}
    annotations = {name: {"format": image_format(path), "dimensions": list(sizes[name]),
                          "annotations": boxes.get(name, [])} for name, path in images.items()}
    return LocalDataset(images, annotations=annotations)


def read_folder(folder: Path, domain: str, *, allow_unlabelled: bool = False) -> LocalDataset:
    """The files of `folder` as a dataset of `domain` (a code: ic, od, sp, sc); see the module."""
    if not folder.is_dir():
        raise ConfigError(f"dataset folder {folder}: not a directory")
    if domain == "od":
        local = read_detection(folder)
    elif domain == "sp":
        local = read_speech(folder, allow_unlabelled=allow_unlabelled)
    else:
        local = read_classified(folder, allow_unlabelled=allow_unlabelled)
    if not local.files:
        raise ConfigError(f"dataset folder {folder}: no files")
    empty = sorted(name for name, path in local.files.items() if path.stat().st_size == 0)
    if empty:  # the real server answers a 0-byte upload with a 500 (docs/real-server.md)
        raise ConfigError(f"dataset folder {folder}: {len(empty)} empty file(s) (first: {empty[0]!r}); "
                          "a UFDL server cannot store an empty file")
    return local
