"""The object-detection writers against wai.annotations' formats: YOLO lines and label files,
the MS-COCO JSON, images only; each as the stock templates' dataset_options ask for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.work.convert import Layout, check_domain, plan_layout, write_layout
from ufdl_node.work.wai_options import ConversionError, parse, split_schedule

# The stock templates' dataset_options defaults (templates.json of the real server).
YOLO_TRAIN = ["to-yolo-od", "-o", ".", "--labels", "./labels.txt", "--labels-csv", "./labels.csv",
              "--split-names", "train", "test", "val", "--split-ratios", "70", "15", "15"]
COCO_TRAIN = ["to-coco-od", "--sort-categories", "--category-output-file", "labels.txt", "-o",
              "annotations.json", "--split-names", "train", "test", "val", "--split-ratios", "70", "15", "15"]
CYCLE = split_schedule(["train", "test", "val"], [70, 15, 15])


def box(x: int, y: int, w: int, h: int, label: str, **extra: Any) -> dict[str, Any]:
    return {"x": x, "y": y, "width": w, "height": h, "label": label, "prefix": "Object", **extra}


# Four 100x50 images: a dog, a zebra and a cat, nothing, a dog with a polygon.
ANNOTATIONS: dict[str, Any] = {
    "a.jpg": {"format": "jpg", "dimensions": [100, 50], "annotations": [box(10, 5, 20, 10, "dog")]},
    "b.jpg": {"format": "jpg", "dimensions": [100, 50],
              "annotations": [box(0, 0, 50, 25, "zebra"), box(50, 25, 50, 25, "cat", prefix="Pet")]},
    "c.jpg": {"format": "jpg", "dimensions": [100, 50], "annotations": []},
    "d.jpg": {"format": "jpg", "dimensions": [100, 50],
              "annotations": [box(0, 0, 10, 10, "dog", polygon={"points": [[0, 0], [10, 0], [10, 10]]})]},
}
FILES = sorted(ANNOTATIONS)


def layout(args: list[str], annotations: dict[str, Any] = ANNOTATIONS, files: list[str] = FILES) -> Layout:
    plan = parse(args)
    check_domain(plan, "od", "Object Detection")
    return plan_layout(plan, files, annotations)


def test_yolo_with_the_stock_defaults() -> None:
    """to-yolo-od: images/<split>/, a labels/<split>/<stem>.txt per annotated image with
    'index cx cy w h' over the image size, labels.txt and labels.csv in first-seen order."""
    got = layout(YOLO_TRAIN)
    assert got.paths == {name: f"images/{CYCLE[i]}/{name}" for i, name in enumerate(FILES)}
    assert got.generated["labels/train/a.txt"] == b"0 0.2 0.2 0.2 0.2"
    assert got.generated["labels/train/b.txt"] == b"1 0.25 0.25 0.5 0.5\n2 0.75 0.75 0.5 0.5"
    assert "labels/test/c.txt" not in got.generated  # a negative: its image only
    assert got.generated["labels/test/d.txt"] == b"0 0.05 0.1 0.1 0.2"
    assert got.generated["labels.txt"] == b"dog,zebra,cat"
    assert got.generated["labels.csv"] == b"Index,Label\n0,dog\n1,zebra\n2,cat"
    assert set(got.folders) == {f"{k}/{s}" for k in ("images", "labels") for s in ("train", "test", "val")}


def test_yolo_polygon_format() -> None:
    """-p: 'index x y ...' as %f over the image size; a box without a polygon gives its corners."""
    got = layout(["to-yolo-od", "-o", "out", "-p"])
    assert got.generated["out/labels/d.txt"] == b"0 0.000000 0.000000 0.100000 0.000000 0.100000 0.200000"
    assert got.generated["out/labels/a.txt"] == \
        b"0 0.100000 0.100000 0.290000 0.100000 0.290000 0.280000 0.100000 0.280000"
    assert got.paths["a.jpg"] == "out/images/a.jpg"


def test_coco_with_the_stock_defaults() -> None:
    """to-coco-od: per split, its images and annotations.json (images with objects, annotations
    numbered per split, categories sorted by name and renumbered) and labels.txt beside it."""
    got = layout(COCO_TRAIN)
    assert got.paths == {name: f"{CYCLE[i]}/{name}" for i, name in enumerate(FILES)}
    train = json.loads(got.generated["train/annotations.json"])
    assert list(train) == ["info", "images", "annotations", "licenses", "categories"]
    assert train["categories"] == [{"id": 1, "name": "cat", "supercategory": "Pet"},
                                   {"id": 2, "name": "dog", "supercategory": "Object"},
                                   {"id": 3, "name": "zebra", "supercategory": "Object"}]
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in train["images"]] == \
        [(1, "a.jpg", 100, 50), (2, "b.jpg", 100, 50)]
    rows = [(a["id"], a["image_id"], a["category_id"], a["bbox"], a["area"]) for a in train["annotations"]]
    assert rows == [
        (1, 1, 2, [10.0, 5.0, 20.0, 10.0], 200.0), (2, 2, 3, [0.0, 0.0, 50.0, 25.0], 1250.0),
        (3, 2, 1, [50.0, 25.0, 50.0, 25.0], 1250.0)]
    assert train["annotations"][0]["segmentation"] == [] and train["annotations"][0]["iscrowd"] == 0
    test = json.loads(got.generated["test/annotations.json"])
    assert [i["file_name"] for i in test["images"]] == ["d.jpg"]  # c.jpg, a negative, is not listed
    assert test["annotations"][0]["segmentation"] == [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0]]
    assert test["annotations"][0]["area"] == 50.0 and test["annotations"][0]["category_id"] == 2
    assert json.loads(got.generated["val/annotations.json"])["images"] == []
    assert got.generated["train/labels.txt"] == got.generated["val/labels.txt"] == b"cat,dog,zebra"


def test_coco_categories_in_first_seen_order_and_predefined() -> None:
    """Without --sort-categories, first-seen order; --categories comes first; and
    --error-on-new-category refuses a label it does not list, naming it."""
    plain = json.loads(layout(["to-coco-od", "-o", "a.json"]).generated["a.json"])
    assert [c["name"] for c in plain["categories"]] == ["dog", "zebra", "cat"]
    args = ["to-coco-od", "-o", "a.json", "--categories", "cat", "cow"]
    given = json.loads(layout(args).generated["a.json"])
    assert [(c["id"], c["name"]) for c in given["categories"]] == [(1, "cat"), (2, "cow"), (3, "dog"),
                                                                  (4, "zebra")]
    with pytest.raises(ConversionError, match="label 'dog' is not one of --categories"):
        layout(["to-coco-od", "-o", "a.json", "--categories", "cat", "--error-on-new-category"])


def test_images_od_writes_the_images_only() -> None:
    """to-images-od (the stock predict templates): each image at its name, nothing else."""
    got = layout(["to-images-od"])
    assert got.paths == {name: f"annotations/{name}" for name in FILES} and got.generated == {}
    assert layout(["to-images-od", "-o", "."]).paths == {name: name for name in FILES}


def test_od_writers_refuse_what_does_not_fit() -> None:
    """An annotation without a label, annotations that are not the server's shape, and two images
    whose label files would be one name: one line each, naming the file."""
    no_label = {"a.jpg": {"format": "jpg", "dimensions": [9, 9],
                          "annotations": [{"x": 1, "y": 1, "width": 2, "height": 2}]}}
    with pytest.raises(ConversionError, match=r"an annotation of 'a\.jpg' .*missing label"):
        layout(YOLO_TRAIN, no_label, ["a.jpg"])
    with pytest.raises(ConversionError, match=r"annotations of 'a\.jpg' are not"):
        layout(YOLO_TRAIN, {"a.jpg": ["dog"]}, ["a.jpg"])
    twins = {name: ANNOTATIONS["a.jpg"] for name in ("x.jpg", "x.png")}
    with pytest.raises(ConversionError, match=r"'labels/x\.txt' twice"):
        layout(["to-yolo-od", "-o", "."], twins, sorted(twins))


def test_coco_layout_written_to_disk(tmp_path: Path) -> None:
    """The planned COCO layout on disk: images linked into their split folders, JSON beside them."""
    sources = {}
    for name in FILES:
        sources[name] = tmp_path / "src" / name
        sources[name].parent.mkdir(exist_ok=True)
        sources[name].write_bytes(name.encode())
    planned = layout(COCO_TRAIN)
    written = write_layout(planned, sources, tmp_path / "job")
    assert written == sorted(p.relative_to(tmp_path / "job").as_posix()
                             for p in (tmp_path / "job").rglob("*") if p.is_file())
    assert (tmp_path / "job" / "train" / "a.jpg").samefile(sources["a.jpg"])
    assert json.loads((tmp_path / "job" / "train" / "annotations.json").read_text())["images"][0]["id"] == 1
