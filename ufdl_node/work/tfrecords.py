"""``to-tf-od``: object-detection TFRecords, as wai.annotations' tf plugin writes them.

``to-tf-od -o FILE [-p NAME] [--source-id-type filename|numeric-dummy] [splits]`` writes, per
split, ``<dir of FILE>/<split>/<name of FILE>``: one ``tf.train.Example`` per image (the
image's bytes inside it, so no image files beside), with the features of the TensorFlow
Object Detection API: ``image/height``, ``image/width``, ``image/filename``,
``image/source_id``, ``image/encoded``, ``image/format``, ``image/key/sha256`` and, per
object, ``image/object/bbox/xmin|xmax|ymin|ymax`` (``x / width``, ``(x + width - 1) / width``;
an object outside ``0 <= min < max <= 1`` is left out), ``image/object/class/text``,
``image/object/class/label`` (numbered from 1 in the order labels first appear),
``image/object/is_crowd`` (0) and ``image/object/area``. ``-p`` writes the label map
(``item { id: N name: 'label' }``) beside each split's records.

The records are framed and checksummed by the ``tfrecord`` package (its ``TFRecordWriter``,
CRC32C from the ``crc32c`` package, the Example proto through ``protobuf``), not by hand.
Each record is made when it is written: :func:`examples` is a generator that reads one image
at a time, so a large dataset never sits in memory. When an image's kept objects have
polygons, ``image/object/mask`` holds a PNG mask per object (:mod:`.masks`; an object
without a polygon gets its box filled), as wai.annotations stores them for Mask R-CNN.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .convert_od import Box, ODImage, polygon_area
from .imagesize import NotAnImage, image_size
from .layouts import Layout, Streamer, join, option_path, output_file, split_cycle, split_names
from .masks import png_mask
from .wai_options import ConversionError, Stage, shown

Feature = tuple[Any, str]  # (value or values, "byte" | "float" | "int"), tfrecord's datum form


def class_ids(files: Sequence[str], data: Mapping[str, ODImage]) -> dict[str, int]:
    """Each label's class id, from 1 in the order labels first appear in the stream."""
    ids: dict[str, int] = {}
    for name in files:
        for box in data[name].boxes:
            ids.setdefault(box.label, len(ids) + 1)
    return ids


def kept(box: Box, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The box's (left, right, top, bottom) over the image's size; None when out of bounds."""
    left, right = box.x / width, (box.x + box.width - 1) / width
    top, bottom = box.y / height, (box.y + box.height - 1) / height
    if 0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0:
        return left, right, top, bottom
    return None


def _objects(image: ODImage, name: str, ids: Mapping[str, int]) -> dict[str, Feature]:
    width, height = image.size(name) if image.boxes else (1, 1)
    columns: dict[str, list[Any]] = {k: [] for k in ("xmin", "xmax", "ymin", "ymax", "text", "label", "area")}
    shapes: list[Box] = []
    for box in image.boxes:
        bounds = kept(box, width, height)
        if bounds is None:
            continue
        for key, value in zip(("xmin", "xmax", "ymin", "ymax"), bounds, strict=True):
            columns[key].append(value)
        columns["text"].append(box.label.encode("utf-8"))
        columns["label"].append(ids[box.label])
        columns["area"].append(polygon_area(box.polygon) if box.polygon else float(box.width * box.height))
        shapes.append(box)
    kinds = {"xmin": "float", "xmax": "float", "ymin": "float", "ymax": "float"}
    features: dict[str, Feature] = {f"image/object/bbox/{k}": (columns[k], kind) for k, kind in kinds.items()}
    if any(box.polygon for box in shapes):
        features["image/object/mask"] = ([png_mask(box.corners(), width, height) for box in shapes], "byte")
    return {**features, "image/object/class/text": (columns["text"], "byte"),
            "image/object/class/label": (columns["label"], "int"),
            "image/object/is_crowd": ([0] * len(columns["label"]), "int"),
            "image/object/area": (columns["area"], "float")}


def _size(image: ODImage, name: str, source: Path) -> tuple[int, int]:
    """The image's size from the server, or (an image without a file type) from its header."""
    if image.width is not None and image.height is not None:
        return image.width, image.height
    try:
        return image_size(source)
    except (NotAnImage, OSError) as e:
        raise ConversionError(f"image {shown(name)} has no dimensions on the server and its own "
                              f"cannot be read ({e})") from None


def example(name: str, image: ODImage, data: bytes, size: tuple[int, int], ids: Mapping[str, int], *,
            numeric_id: bool = False) -> dict[str, Feature]:
    """The features of one image's Example, in tfrecord's ``{key: (value, kind)}`` form."""
    fmt = (image.format or posixpath.splitext(name)[1].lstrip(".") or "jpg").lower()
    fmt = "jpg" if fmt == "jpeg" else fmt
    return {"image/height": (size[1], "int"), "image/width": (size[0], "int"),
            "image/filename": (name.encode("utf-8"), "byte"),
            "image/source_id": (b"0" if numeric_id else name.encode("utf-8"), "byte"),
            "image/encoded": (data, "byte"), "image/format": (fmt.encode("utf-8"), "byte"),
            "image/key/sha256": (hashlib.sha256(data).hexdigest().encode("utf-8"), "byte"),
            **_objects(image, name, ids)}


def examples(names: Sequence[str], data: Mapping[str, ODImage], sources: Mapping[str, Path],
             ids: Mapping[str, int], *, numeric_id: bool = False) -> Iterator[dict[str, Feature]]:
    """The Examples of `names`, in order, each made when asked for: one image read at a time."""
    for name in names:
        source = sources[name]
        yield example(name, data[name], source.read_bytes(), _size(data[name], name, source), ids,
                      numeric_id=numeric_id)


def write_records(target: Path, records: Iterator[dict[str, Feature]]) -> None:
    """Write `records` to the TFRecord file `target`, one at a time."""
    from tfrecord import TFRecordWriter  # imported when used: the package pulls numpy in

    writer = TFRecordWriter(str(target))
    try:
        for record in records:
            writer.write(record)
    finally:
        writer.close()


def label_map(ids: Mapping[str, int]) -> bytes:
    """The label map in protobuf text (``item { id: N name: 'label' }`` per label, by id)."""
    def quoted(label: str) -> str:
        return label.replace("\\", "\\\\").replace("'", "\\'")
    items = [f"item {{\n  id: {n}\n  name: '{quoted(label)}'\n}}\n" for label, n in sorted(ids.items(),
                                                                                         key=lambda i: i[1])]
    return "".join(items).encode("utf-8")


def to_tf_od(stage: Stage, files: Sequence[str], data: Mapping[str, ODImage]) -> Layout:
    """Per split, a TFRecord file of its images' Examples (and the label map with -p)."""
    folder, records_name = output_file(stage)
    cycle = split_cycle(stage)
    ids = class_ids(files, data)
    in_split: dict[str, list[str]] = {split: [] for split in split_names(stage)}
    for position, name in enumerate(files):
        in_split[cycle[position % len(cycle)]].append(name)
    numeric = stage.one("source_id_type") == "numeric-dummy"
    used = {box.label: ids[box.label] for image in data.values() for box in image.boxes
            if image.width and image.height and kept(box, image.width, image.height)}
    protobuf = option_path(stage, "protobuf")
    streamed: dict[str, Streamer] = {}
    generated: dict[str, bytes] = {}
    for split, names in in_split.items():
        if protobuf is not None:
            generated[join(folder, split, protobuf)] = label_map(used)
        if not names:
            continue  # wai.annotations opens a split's records with its first image

        def write(target: Path, sources: Mapping[str, Path], names: list[str] = names) -> None:
            write_records(target, examples(names, data, sources, ids, numeric_id=numeric))
        streamed[join(folder, split, records_name)] = write
    return Layout({}, generated, tuple(join(folder, split) for split in in_split), streamed)
