"""Object-detection writers: ``to-images-od``, ``to-yolo-od`` and ``to-coco-od``, as
wai.annotations 0.8.0 writes them (its yolo and coco plugins), from the annotations the
server gives (``GET /v1/objdet/datasets/{pk}/annotations``: ``{file: {format,
dimensions: [w, h], annotations: [{x, y, width, height, label, prefix, polygon?}]}}``).

- ``to-images-od [-o DIR]``: each image at ``DIR/<name>``, no annotations.
- ``to-yolo-od -o DIR [-l FILE] [-c FILE] [-p] [--annotations-only] [splits]``: each image
  at ``DIR/images/<split>/<name>``; an image with objects gets
  ``DIR/labels/<split>/<stem>.txt``, a line per object ``<index> <cx> <cy> <w> <h>``
  (centre and size over the image's width and height; ``-p``: ``<index>`` then each
  polygon point ``x y`` as ``%f``, the box's corners for an object without a polygon).
  Indices count from 0 in the order labels first appear; ``-l`` writes them comma-
  separated, ``-c`` as ``Index,Label`` lines; both are relative to the dataset's top.
- ``to-coco-od -o FILE [--sort-categories] [--category-output-file NAME] [--categories C...]
  [--error-on-new-category] [--default-supercategory S] [--license-name N]
  [--license-url U] [--pretty] [--annotations-only] [splits]``: per split, the images in
  ``<dir of FILE>/<split>/`` and ``<dir of FILE>/<split>/<name of FILE>``, one MS-COCO
  JSON (info, images, annotations, licenses, categories) listing the images with objects;
  categories are numbered from 1 in the order they first appear (after ``--categories``),
  each with its first object's prefix as supercategory; ``--sort-categories`` orders them
  by name and renumbers them; ``--category-output-file`` writes their names, comma-
  separated, beside each split's JSON.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .layouts import Layout, join, option_path, output_dir, output_file, split_cycle, split_names, stem
from .videoframes import FrameSpec, frame_name, frame_times
from .wai_options import ConversionError, Stage, shown


@dataclass(frozen=True)
class Box:
    """One annotated object: its box (pixels), label, prefix and polygon points, if any."""

    x: int
    y: int
    width: int
    height: int
    label: str
    prefix: str
    polygon: tuple[tuple[int, int], ...] | None = None
    time: float | None = None  # a video's object: seconds into it

    def corners(self) -> tuple[tuple[int, int], ...]:
        """The polygon, or the box's four corners (inclusive pixels) without one."""
        if self.polygon:
            return self.polygon
        right, bottom = self.x + self.width - 1, self.y + self.height - 1
        return (self.x, self.y), (right, self.y), (right, bottom), (self.x, bottom)


@dataclass(frozen=True)
class ODImage:
    """An image's file type (format, width, height: None before the server has one) and objects."""

    format: str | None
    width: int | None
    height: int | None
    boxes: tuple[Box, ...] = ()
    length: float | None = None  # a video's, in seconds (its file type has one)

    def size(self, name: str) -> tuple[int, int]:
        """(width, height), needed to normalise its objects' boxes."""
        if self.width is None or self.height is None:
            raise ConversionError(f"image {shown(name)} has objects but no dimensions on the server")
        return self.width, self.height


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _box(name: str, raw: Any) -> Box:
    """One server annotation as a Box; ConversionError naming the file when it is not one."""
    if not isinstance(raw, dict) or not all(_whole(raw.get(k)) for k in ("x", "y", "width", "height")) \
            or not isinstance(raw.get("label"), str) or not raw["label"]:
        raise ConversionError(f"an annotation of {shown(name)} is not {{x, y, width, height, label}} "
                              f"(a missing label?): {shown(json.dumps(raw, default=str))}")
    points = (raw.get("polygon") or {}).get("points") if isinstance(raw.get("polygon"), dict) else None
    polygon = tuple((int(p[0]), int(p[1])) for p in points if isinstance(p, list) and len(p) == 2
                    and _whole(p[0]) and _whole(p[1])) if isinstance(points, list) else None
    given = raw.get("prefix")
    prefix = given if isinstance(given, str) and given else "Object"
    time = float(raw["time"]) if _seconds(raw.get("time")) else None
    return Box(raw["x"], raw["y"], raw["width"], raw["height"], raw["label"], prefix, polygon or None, time)


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def read_od(files: Sequence[str], annotations: Any) -> dict[str, ODImage]:
    """Each file's type and objects from the server's ``{file: {format, dimensions,
    annotations}}`` (a file it leaves out: no type, no objects)."""
    if not isinstance(annotations, dict):
        raise ConversionError("the object-detection annotations are not {file: {...}}")
    read: dict[str, ODImage] = {}
    for name in files:
        entry = annotations.get(name)
        if entry is None:
            read[name] = ODImage(None, None, None)
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("annotations", []), list):
            raise ConversionError(f"the annotations of {shown(name)} are not "
                                  "{format, dimensions, annotations}")
        dims = entry.get("dimensions")
        width, height = (dims[0], dims[1]) if isinstance(dims, list) and len(dims) == 2 and \
            all(_whole(d) and d > 0 for d in dims) else (None, None)
        fmt = entry.get("format") if isinstance(entry.get("format"), str) else None
        length = float(entry["length"]) if _seconds(entry.get("length")) else None
        boxes = tuple(_box(name, a) for a in entry.get("annotations", []))
        read[name] = ODImage(fmt, width, height, boxes, length)
    return read


def expand_videos(files: Sequence[str], data: Mapping[str, ODImage], specs: Sequence[FrameSpec]) -> tuple[
        list[str], dict[str, ODImage], dict[str, tuple[tuple[float, str], ...]]]:
    """The files with each video (a file type with a length) replaced by its frames in its
    place (:mod:`.videoframes`: the `specs`' times and its labelled ones; none: left out),
    each frame a JPEG of the video's size with the boxes of its time; and each video's
    frames, {video: ((time, frame name), ...)}."""
    names: list[str] = []
    read: dict[str, ODImage] = {}
    frames: dict[str, tuple[tuple[float, str], ...]] = {}
    for name in files:
        image = data[name]
        if image.length is None:
            names.append(name)
            read[name] = image
            continue
        labelled = [box.time for box in image.boxes if box.time is not None]
        times = frame_times(specs, name, image.length, labelled)
        frames[name] = tuple((time, frame_name(name, time)) for time in times)
        for time, frame in frames[name]:
            if frame in data:
                raise ConversionError(f"a frame of {shown(name)} would be {shown(frame)}, "
                                      "a file of the dataset")
            names.append(frame)
            boxes = tuple(replace(box, time=None) for box in image.boxes if box.time == time)
            read[frame] = ODImage("jpg", image.width, image.height, boxes)
    return names, read, {video: taken for video, taken in frames.items() if taken}


def od_labels(data: Mapping[str, ODImage]) -> set[str]:
    """The labels the objects carry (what write-labels writes)."""
    return {box.label for image in data.values() for box in image.boxes}


# -- to-images-od ------------------------------------------------------------------------------


def to_images_od(stage: Stage, files: Sequence[str], data: Mapping[str, Any]) -> Layout:
    """Each image at ``DIR/<name>``."""
    base = output_dir(stage)
    return Layout({name: join(base, name) for name in files}, {})


# -- to-yolo-od --------------------------------------------------------------------------------


def yolo_line(box: Box, index: int, width: int, height: int, polygons: bool) -> str:
    """One YOLO line: the class index and the box's centre and size over the image's size,
    or (`polygons`) the class index and each point over the image's size."""
    if polygons:
        points = " ".join(f"{x / width:f} {y / height:f}" for x, y in box.corners())
        return f"{index} {points}"
    return (f"{index} {(box.x + box.width / 2) / width} {(box.y + box.height / 2) / height} "
            f"{box.width / width} {box.height / height}")


def to_yolo_od(stage: Stage, files: Sequence[str], data: Mapping[str, ODImage]) -> Layout:
    """Images under ``images/<split>/``, a labels text per annotated image under ``labels/<split>/``."""
    base = output_dir(stage)
    cycle = split_cycle(stage)
    indices: dict[str, int] = {}
    paths: dict[str, str] = {}
    generated: dict[str, bytes] = {}
    for position, name in enumerate(files):
        split = cycle[position % len(cycle)]
        if not stage.flag("annotations_only"):
            paths[name] = join(base, "images", split, name)
        image = data[name]
        if not image.boxes:
            continue  # a negative: its image only
        width, height = image.size(name)
        lines = [yolo_line(box, indices.setdefault(box.label, len(indices)), width, height,
                           stage.flag("polygons")) for box in image.boxes]
        target = join(base, "labels", split, stem(name) + ".txt")
        if target in generated:  # x.jpg and x.png: one labels file
            raise ConversionError(f"the conversion would write {shown(target)} twice")
        generated[target] = "\n".join(lines).encode("utf-8")
    labels_file, labels_csv = option_path(stage, "labels"), option_path(stage, "labels_csv")
    if labels_file is not None:
        generated[labels_file] = ",".join(indices).encode("utf-8")
    if labels_csv is not None:
        rows = ["Index,Label", *(f"{index},{label}" for label, index in indices.items())]
        generated[labels_csv] = "\n".join(rows).encode("utf-8")
    folders = [join(base, kind, split) for kind in ("images", "labels") for split in split_names(stage)]
    return Layout(paths, generated, tuple(folders))


# -- to-coco-od --------------------------------------------------------------------------------


def polygon_area(points: Sequence[tuple[int, int]]) -> float:
    """The shoelace area of a polygon."""
    following = [*points[1:], points[0]]
    total = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, following, strict=True))
    return abs(total) / 2.0


def _coco_annotation(box: Box, ids: tuple[int, int, int]) -> dict[str, Any]:
    annotation_id, image_id, category_id = ids
    polygon = [float(c) for point in box.polygon for c in point] if box.polygon else []
    area = polygon_area(box.polygon) if box.polygon else float(box.width * box.height)
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id,
            "segmentation": [polygon] if polygon else [], "area": area,
            "bbox": [float(box.x), float(box.y), float(box.width), float(box.height)], "iscrowd": 0}


@dataclass
class _CocoSplit:
    """One split's COCO file as it grows."""

    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]


class _Categories:
    """COCO categories in the order they first appear (after --categories), numbered from 1."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        default = stage.one("default_supercategory", "Object") or "Object"
        self.found: dict[str, dict[str, Any]] = {
            label: {"id": n, "name": label, "supercategory": default}
            for n, label in enumerate(dict.fromkeys(stage.many("categories")), 1)}

    def id_of(self, box: Box) -> int:
        if box.label not in self.found:
            if self.stage.flag("error_on_new_category"):
                raise ConversionError(f"to-coco-od --error-on-new-category: label {shown(box.label)} "
                                      "is not one of --categories")
            self.found[box.label] = {"id": len(self.found) + 1, "name": box.label,
                                     "supercategory": box.prefix}
        return int(self.found[box.label]["id"])


def _coco_splits(stage: Stage, files: Sequence[str], data: Mapping[str, ODImage], folder: str) -> tuple[
        dict[str, str], dict[str, _CocoSplit], _Categories]:
    """Where each image goes, each split's images and annotations, and the categories."""
    cycle = split_cycle(stage)
    categories = _Categories(stage)
    splits = {split: _CocoSplit([], []) for split in split_names(stage)}
    paths: dict[str, str] = {}
    for position, name in enumerate(files):
        split = cycle[position % len(cycle)]
        if not stage.flag("annotations_only"):
            paths[name] = join(folder, split, name)
        image = data[name]
        if not image.boxes:
            continue
        coco = splits[split]
        width, height = image.size(name)
        image_id = len(coco.images) + 1
        coco.images.append({"id": image_id, "width": width, "height": height, "file_name": name, "license": 1,
                            "flickr_url": "", "coco_url": "", "date_captured": ""})
        for box in image.boxes:
            ids = (len(coco.annotations) + 1, image_id, categories.id_of(box))
            coco.annotations.append(_coco_annotation(box, ids))
    return paths, splits, categories


def _coco_categories(categories: _Categories, coco: _CocoSplit, sort: bool) -> list[dict[str, Any]]:
    """The categories (sorted by name and renumbered when `sort`, the annotations remapped)."""
    ordered = sorted(categories.found.values(), key=lambda c: c["id"])
    if not sort:
        return [dict(c) for c in ordered]
    by_name = sorted(ordered, key=lambda c: c["name"])
    remap = {c["id"]: n for n, c in enumerate(by_name, 1)}
    for annotation in coco.annotations:
        annotation["category_id"] = remap[annotation["category_id"]]
    return [{**c, "id": remap[c["id"]]} for c in by_name]


def to_coco_od(stage: Stage, files: Sequence[str], data: Mapping[str, ODImage]) -> Layout:
    """Per split, its images and one COCO JSON file (plus the category names file, if asked)."""
    folder, json_name = output_file(stage)
    paths, splits, categories = _coco_splits(stage, files, data, folder)
    now = datetime.datetime.now()
    info = {"year": now.year, "version": "", "description": "Converted using wai.annotations",
            "contributor": "", "url": "", "date_created": str(now)}
    licence = {"id": 1, "name": stage.one("license_name", "default"), "url": stage.one("license_url", "")}
    category_file = option_path(stage, "category_output_file")
    generated: dict[str, bytes] = {}
    for split, coco in splits.items():
        listed = _coco_categories(categories, coco, stage.flag("sort_categories"))
        document = {"info": info, "images": coco.images, "annotations": coco.annotations,
                    "licenses": [licence], "categories": listed}
        text = json.dumps(document, indent=2 if stage.flag("pretty") else None)
        generated[join(folder, split, json_name)] = text.encode("utf-8")
        if category_file is not None:
            names = ",".join(c["name"] for c in listed)
            generated[join(folder, split, category_file)] = names.encode("utf-8")
    return Layout(paths, generated, tuple(join(folder, split) for split in splits))
