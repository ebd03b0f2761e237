"""to-tf-od: TFRecords read back with the tfrecord package's own reader, the label map, and
records made one image at a time (a large dataset never sits in memory)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from tfrecord.reader import tfrecord_loader

from ufdl_node.work.convert import check_domain, plan_layout, write_layout
from ufdl_node.work.convert_od import read_od
from ufdl_node.work.tfrecords import class_ids, examples
from ufdl_node.work.wai_options import ConversionError, parse, split_schedule

TF_TRAIN = ["to-tf-od", "-o", "data.tfrecords", "-p", "labels.pbtxt",
            "--split-names", "train", "test", "val", "--split-ratios", "70", "15", "15"]


def png(width: int, height: int, extra: bytes = b"") -> bytes:
    """A PNG signature and IHDR header of that size (enough for a reader of image sizes)."""
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height) + extra


def box(x: int, y: int, w: int, h: int, label: str) -> dict[str, Any]:
    return {"x": x, "y": y, "width": w, "height": h, "label": label, "prefix": "Object"}


ANNOTATIONS = {
    "a.png": {"format": "png", "dimensions": [100, 50], "annotations": [box(0, 0, 51, 26, "dog")]},
    "b.png": {"format": "png", "dimensions": [100, 50],
              "annotations": [box(50, 25, 51, 26, "cat"), box(90, 0, 20, 5, "dog")]},  # the dog: off the edge
}


def plant(tmp_path: Path, files: Mapping[str, bytes]) -> dict[str, Path]:
    sources = {}
    for name, data in files.items():
        sources[name] = tmp_path / "src" / name
        sources[name].parent.mkdir(parents=True, exist_ok=True)
        sources[name].write_bytes(data)
    return sources


def texts(value: Any) -> list[bytes]:
    """A bytes feature as a list (the reader gives one value as bytes, several as an array)."""
    return [value] if isinstance(value, bytes) else [bytes(v) for v in value]


def read(path: Path) -> list[dict[str, Any]]:
    return list(tfrecord_loader(str(path), None, None))


def test_records_read_back_with_the_tfrecord_reader(tmp_path: Path) -> None:
    """Each image one Example with the Object Detection API's features; boxes over the image
    size; an object outside the image left out; class ids from 1 in first-seen order."""
    files = {"a.png": png(100, 50, b"A"), "b.png": png(100, 50, b"B"), "c.png": png(7, 3)}
    sources = plant(tmp_path, files)
    plan = parse(["to-tf-od", "-o", "out/data.tfrecords", "-p", "labels.pbtxt"])
    check_domain(plan, "od", "Object Detection")
    planned = plan_layout(plan, sorted(files), ANNOTATIONS)
    assert planned.paths == {} and planned.files() == ["out/data.tfrecords", "out/labels.pbtxt"]
    write_layout(planned, sources, tmp_path / "job")

    a, b, c = read(tmp_path / "job" / "out" / "data.tfrecords")
    assert a["image/encoded"] == files["a.png"] and a["image/filename"] == b"a.png"
    assert a["image/source_id"] == b"a.png" and a["image/format"] == b"png"
    assert (int(a["image/width"][0]), int(a["image/height"][0])) == (100, 50)
    assert list(a["image/object/bbox/xmin"]) == [0.0] and list(a["image/object/bbox/xmax"]) == [0.5]
    assert list(a["image/object/bbox/ymax"]) == [0.5] and list(a["image/object/class/label"]) == [1]
    assert list(b["image/object/class/label"]) == [2] and texts(b["image/object/class/text"]) == [b"cat"]
    assert list(b["image/object/is_crowd"]) == [0] and list(b["image/object/area"]) == [51.0 * 26]
    import hashlib
    assert b["image/key/sha256"] == hashlib.sha256(files["b.png"]).hexdigest().encode()
    # c.png has no file type on the server: a negative, its size read from its header
    assert (int(c["image/width"][0]), int(c["image/height"][0])) == (7, 3)
    assert len(c["image/object/bbox/xmin"]) == 0
    assert (tmp_path / "job" / "out" / "labels.pbtxt").read_text() == \
        "item {\n  id: 1\n  name: 'dog'\n}\nitem {\n  id: 2\n  name: 'cat'\n}\n"


def test_the_stock_defaults_split_the_records(tmp_path: Path) -> None:
    """The stock TF object-detection defaults: <split>/data.tfrecords and <split>/labels.pbtxt,
    the images in the cycle's order; a split without images gets no records."""
    names = [f"i{n}.png" for n in range(4)]
    annotations = {n: {"format": "png", "dimensions": [10, 10], "annotations": [box(1, 1, 5, 5, "x")]}
                   for n in names}
    planned = plan_layout(parse(TF_TRAIN), names, annotations)
    cycle = split_schedule(["train", "test", "val"], [70, 15, 15])
    assert cycle[:4] == ["train", "train", "train", "test"]
    assert planned.files() == ["test/data.tfrecords", "test/labels.pbtxt", "train/data.tfrecords",
                               "train/labels.pbtxt", "val/labels.pbtxt"]
    write_layout(planned, plant(tmp_path, {n: png(10, 10) for n in names}), tmp_path / "job")
    train = read(tmp_path / "job" / "train" / "data.tfrecords")
    assert [r["image/filename"] for r in train] == [b"i0.png", b"i1.png", b"i2.png"]
    assert [r["image/filename"] for r in read(tmp_path / "job" / "test" / "data.tfrecords")] == \
        [b"i3.png"]


def test_examples_read_one_image_at_a_time(tmp_path: Path) -> None:
    """The records of 10,000 images come from a generator: asking for one reads one image,
    so the writer holds one image's bytes at a time, never the dataset."""
    names = [f"img{n:05}.png" for n in range(10_000)]
    blob = tmp_path / "blob.png"
    blob.write_bytes(png(4, 4))
    reads: list[str] = []

    class Counted(type(blob)):  # type: ignore[misc]
        def read_bytes(self) -> bytes:
            reads.append(self.name)
            return super().read_bytes()

    sources = {name: Counted(blob) for name in names}
    data = read_od(names, {})
    stream = examples(names, data, sources, class_ids(names, data))
    first = next(stream)
    assert len(reads) == 1 and first["image/filename"][0] == b"img00000.png"
    next(stream)
    assert len(reads) == 2
    assert sum(1 for _ in stream) == 9_998 and len(reads) == 10_000


def test_an_image_whose_size_cannot_be_read_fails_in_one_line(tmp_path: Path) -> None:
    """A file without a type on the server and no image header: one line naming it."""
    sources = plant(tmp_path, {"n.png": b"not an image"})
    planned = plan_layout(parse(["to-tf-od", "-o", "d.tfrecords"]), ["n.png"], {})
    with pytest.raises(ConversionError, match=r"image 'n\.png' has no dimensions on the server"):
        write_layout(planned, sources, tmp_path / "job")


def unpng(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows) of an 8-bit greyscale PNG with filter 0 rows, its CRCs checked."""
    import zlib
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, size = 8, b"", (0, 0)
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
            assert body[8:] == b"\x08\x00\x00\x00\x00"
        idat += body if kind == b"IDAT" else b""
        at += 12 + length
    raw = zlib.decompress(idat)
    stride = size[0] + 1
    rows = [raw[i * stride:(i + 1) * stride] for i in range(size[1])]
    assert all(row[0] == 0 for row in rows)
    return size[0], size[1], [row[1:] for row in rows]


def test_polygons_become_png_masks(tmp_path: Path) -> None:
    """An image whose objects have polygons: image/object/mask holds a PNG per object, 1 inside
    the polygon (an object without one: its box), and the area is the polygon's."""
    triangle = {"points": [[0, 0], [3, 0], [0, 3]]}
    annotations = {"m.png": {"format": "png", "dimensions": [5, 4], "annotations": [
        {**box(0, 0, 4, 4, "tri"), "polygon": triangle}, box(3, 1, 2, 2, "sq")]}}
    sources = plant(tmp_path, {"m.png": png(5, 4)})
    write_layout(plan_layout(parse(["to-tf-od", "-o", "m.tfrecords"]), ["m.png"], annotations),
                 sources, tmp_path / "job")
    (record,) = read(tmp_path / "job" / "m.tfrecords")
    tri, square = (unpng(m) for m in texts(record["image/object/mask"]))
    assert tri == (5, 4, [b"\x01\x01\x01\x01\x00", b"\x01\x01\x01\x00\x00", b"\x01\x01\x00\x00\x00",
                          b"\x01\x00\x00\x00\x00"])
    assert square[2] == [b"\x00" * 5, b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x01\x01", b"\x00" * 5]
    assert list(record["image/object/area"]) == [4.5, 4.0]
