"""The node's conversion of a dataset: wai.annotations options parsed, the layout planned, written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ufdl_node.work.convert import Layout, check_domain, plan_layout, write_layout
from ufdl_node.work.wai_options import ConversionError, parse, split_schedule

# The shipped mmclassification_0.25.0_resnet18_train definition's dataset_options default.
MMCLS_TRAIN = ["write-labels", "-f", "csv-headless", "-o", "labels.txt", "to-subdir-ic", "-o", ".",
               "--split-names", "train", "test", "val", "--split-ratios", "70", "15", "15"]
IMAGES = sorted(f"{kind}{n:02}.png" for kind in ("cat", "dog") for n in range(1, 11))


def by_kind() -> dict[str, list[str]]:
    return {name: [name[:3]] for name in IMAGES}


def layout(args: list[str], files: list[str], categories: dict[str, list[str]]) -> Layout:
    plan = parse(args)
    check_domain(plan, "ic", "Image Classification")
    return plan_layout(plan, files, categories)


def test_the_mmclassification_defaults_give_labels_and_split_class_folders() -> None:
    """MMClassification's defaults: labels.txt plus every image at <split>/<label>/<name>, 14:3:3."""
    got = layout(MMCLS_TRAIN, IMAGES, by_kind())
    cycle = split_schedule(["train", "test", "val"], [70, 15, 15])
    assert got.paths == {name: f"{cycle[i]}/{name[:3]}/{name}" for i, name in enumerate(IMAGES)}
    assert got.generated == {"labels.txt": b"cat,dog"}
    assert [p.split("/")[0] for p in got.paths.values()].count("train") == 14


def test_the_split_cycle_is_wai_annotations_schedule() -> None:
    """70/15/15 reduces to a cycle of 20 slots in wai.bynning's order: 14 train, 3 test, 3 val."""
    cycle = split_schedule(["train", "test", "val"], [70, 15, 15])
    t, e, v = "train", "test", "val"
    assert cycle == [t, t, t, e, v, t, t, t, t, e, v, t, t, t, t, t, e, v, t, t]


def test_no_interleave_puts_each_split_in_one_run() -> None:
    """--no-interleave: the cycle's slots grouped by split, in the order of the split names."""
    cycle = split_schedule(["a", "b"], [2, 1], interleave=False)
    assert cycle == ["a", "a", "b"]
    got = layout(["to-subdir-ic", "--split-names", "a", "b", "--split-ratios", "2", "1", "--no-interleave"],
                 ["x1", "x2", "x3"], {})
    assert got.paths == {"x1": "annotations/a/x1", "x2": "annotations/a/x2", "x3": "annotations/b/x3"}


def test_the_same_options_give_the_same_layout_every_time() -> None:
    """A re-run sees the same split: the layout depends only on the names, labels and options."""
    assert layout(MMCLS_TRAIN, IMAGES, by_kind()) == layout(MMCLS_TRAIN, list(IMAGES), by_kind())


def test_the_labels_file_formats() -> None:
    """write-labels: csv-headless one line; csv (the default) a label_N header; list; json."""
    cats = {"a.png": ["tabby"], "b.png": ["beagle"], "c.png": ["beagle"]}
    files = sorted(cats)

    def labels(*fmt: str) -> bytes:
        args = ["write-labels", *fmt, "-o", "l", "to-images-ic", "-o", "."]
        return layout(args, files, cats).generated["l"]

    assert labels("-f", "csv-headless") == b"beagle,tabby"
    assert labels() == b"label_1,label_2\nbeagle,tabby"
    assert labels("-f", "list") == b"beagle\ntabby"
    assert labels("--format", "json") == b'{"labels": ["beagle", "tabby"]}'


def test_an_image_without_a_label_goes_in_its_split_folder() -> None:
    """An unlabelled image is written into the split folder itself, as wai.annotations' SubDirWriter does."""
    got = layout(["to-subdir-ic", "-o", "out", "--split-names", "a", "b", "--split-ratios", "1", "1"],
                 ["cat01.png", "x.png"], {"cat01.png": ["cat"]})
    assert got.paths == {"cat01.png": "out/a/cat/cat01.png", "x.png": "out/b/x.png"}


def test_every_split_folder_is_made_even_an_empty_one() -> None:
    """wai.annotations makes each split's directory at the start: one image, three split folders."""
    got = layout(MMCLS_TRAIN, ["a.png"], {"a.png": ["cat"]})
    assert got.folders == ("train", "test", "val")


def test_to_subdir_ic_alone_writes_under_annotations() -> None:
    """["to-subdir-ic"] without -o writes to "annotations", as wai.annotations' launcher runs do."""
    got = layout(["to-subdir-ic"], ["cat01.png", "x.png"], {"cat01.png": ["cat"]})
    assert got.paths == {"cat01.png": "annotations/cat/cat01.png", "x.png": "annotations/x.png"}


def test_to_images_ic_with_the_top_level_gives_the_bare_images() -> None:
    """to-images-ic -o . gives the images at the top level, without labels."""
    got = layout(["to-images-ic", "-o", "."], ["cat01.png", "sub/x.png"], {"cat01.png": ["cat"]})
    assert got.paths == {"cat01.png": "cat01.png", "sub/x.png": "sub/x.png"} and got.generated == {}


def test_the_first_category_is_the_label() -> None:
    """An image with several categories goes to the folder of the first one."""
    got = layout(["to-subdir-ic", "-o", "."], ["c.png"], {"c.png": ["cat", "animal"]})
    assert got.paths == {"c.png": "cat/c.png"}


REFUSALS = [
    (["to-vgg-od", "-o", "."], "stage 'to-vgg-od' is not supported by the node"),
    (["to-tf-od", "-o", "x.tfrecords", "--shards", "a"], "option '--shards' of stage to-tf-od"),
    (["to-coco-od", "--sort-categories"], "to-coco-od needs -o FILE"),
    (["to-yolo-od", "-o", ".", "--labels", "../labels.txt"], "'../labels.txt' leaves"),
    (["to-yolo-od", "-o", ".", "--labels-csv", "."], "to-yolo-od option labels-csv must name a file"),
    (["to-coco-od", "-o", "a.json", "--category-output-file", "/etc/x"], "'/etc/x' leaves"),
    (["to-coco-od", "-o", "."], "to-coco-od needs -o FILE"),
    (["to-tf-od", "-o", "d.tfrecords", "--source-id-type", "uuid"], "must be one of ['filename', "),
    (["to-tf-od", "-o", "d.tfrecords", "--dense"], "option '--dense' of stage to-tf-od"),
    (["to-coqui-stt-sp", "-o", "s.csv", "--split-names", "a", "b", "--split-ratios", "1"], "--split-names"),
    (["filter-labels", "--labels", "a", "to-subdir-ic", "-o", "."], "'filter-labels'"),
    (["to-subdir-ic", "-o", ".", "--seed", "1"], "option '--seed' of stage to-subdir-ic"),
    (["write-labels", "-f", "yaml", "-o", "l.txt", "to-images-ic"], "'yaml'"),
    (["--verbose", "to-subdir-ic"], "global option '--verbose'"),
    (["from-subdir-ic", "-i", "x", "to-subdir-ic"], "input stage 'from-subdir-ic'"),
    (["write-labels", "-o", "labels.txt"], "output stage"),
    (["to-subdir-ic", "write-labels", "-o", "l.txt"], "must be the last"),
    (["to-subdir-ic", "--split-names", "a", "b", "--split-ratios", "1"], "--split-names"),
    (["to-subdir-ic", "--split-names", "a", "--split-ratios", "x"], "'x'"),
    (["to-subdir-ic", "--split-names", "a", "--split-ratios", "0"], "one above 0"),
    (["to-subdir-ic", "--split-names", "../up", "--split-ratios", "1"], "'../up'"),
    (["to-subdir-ic", "-o", "../escape"], "'../escape'"),
    (["to-subdir-ic", "-o", "/abs"], "'/abs'"),
    (["write-labels", "-o", ".", "to-images-ic"], "must name a file"),
    (["to-subdir-ic", "-o"], "needs a value"),
    ([], "output stage"),
]


@pytest.mark.parametrize(("args", "named"), REFUSALS, ids=[" ".join(a) or "empty" for a, _ in REFUSALS])
def test_options_outside_what_the_node_runs_are_refused_in_one_line(args: list[str], named: str) -> None:
    """Another stage or option, an input stage, a bad value or path: one line naming it."""
    with pytest.raises(ConversionError) as info:
        parse(args)
    assert named in str(info.value) and "\n" not in str(info.value), info.value


def test_a_writer_of_another_domain_is_refused_naming_both() -> None:
    """An image-classification writer on an object-detection dataset: refused, saying which domain
    and which writers fit it; a domain the node converts nothing of says so."""
    with pytest.raises(ConversionError, match=r"'to-subdir-ic' writes another domain than the dataset's "
                                              r"\(Object Detection\); the node writes to-images-od"):
        check_domain(parse(["to-subdir-ic"]), "od", "Object Detection")
    with pytest.raises(ConversionError, match=r"\(Image Segmentation\); the node converts no dataset"):
        check_domain(parse(["to-subdir-ic"]), "is", "Image Segmentation")


def test_a_label_that_is_not_a_folder_name_is_refused() -> None:
    """A category with '/' (or '..') cannot become a folder: refused naming it."""
    with pytest.raises(ConversionError, match=r"'\.\./\.\./etc' cannot be a name"):
        layout(["to-subdir-ic", "-o", "."], ["c.png"], {"c.png": ["../../etc"]})


def test_a_generated_file_over_a_dataset_file_is_refused() -> None:
    """labels written where an image goes: the layout would write one name twice."""
    with pytest.raises(ConversionError, match=r"'cat01\.png' twice"):
        layout(["write-labels", "-o", "cat01.png", "to-images-ic", "-o", "."], ["cat01.png"], {})


def test_a_file_where_a_split_folder_goes_is_refused() -> None:
    """An image named like a split folder, at the layout's top: a file and a folder of one name."""
    with pytest.raises(ConversionError, match="'train' twice"):
        layout(["write-labels", "-o", "train", "to-subdir-ic", "-o", ".", "--split-names", "train",
                "--split-ratios", "1"], ["a.png"], {})


def test_write_layout_links_the_sources_and_writes_the_generated_files(tmp_path: Path) -> None:
    """The layout on disk: hard links to the sources (no bytes read), the labels file, the split folders."""
    sources = tmp_path / "cache"
    sources.mkdir()
    for name in IMAGES:
        (sources / name).write_bytes(name.encode())
    planned = layout(MMCLS_TRAIN, IMAGES, by_kind())

    written = write_layout(planned, {n: sources / n for n in IMAGES}, tmp_path / "job")

    assert written == planned.files() and "labels.txt" in written
    for name, path in planned.paths.items():
        assert (tmp_path / "job" / path).samefile(sources / name)
    assert (tmp_path / "job" / "labels.txt").read_bytes() == b"cat,dog"


def test_write_layout_copies_when_asked(tmp_path: Path) -> None:
    """copy=True gives files of their own (for a handler that changes them in place)."""
    (tmp_path / "a.png").write_bytes(b"A")
    write_layout(layout(["to-subdir-ic", "-o", "."], ["a.png"], {"a.png": ["cat"]}),
                 {"a.png": tmp_path / "a.png"}, tmp_path / "job", copy=True)
    target = tmp_path / "job" / "cat" / "a.png"
    assert target.read_bytes() == b"A" and not target.samefile(tmp_path / "a.png")


def test_ten_thousand_images_convert_as_links(tmp_path: Path) -> None:
    """10,000 images: the layout is names only, and writing it makes links, not copies."""
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 4096)
    names = [f"img{n:05}.png" for n in range(10_000)]
    planned = layout(MMCLS_TRAIN, names, {n: ["even" if int(n[3:8]) % 2 == 0 else "odd"] for n in names})

    write_layout(planned, dict.fromkeys(names, blob), tmp_path / "job")

    assert os.stat(blob).st_nlink == 10_001  # every image is the one blob, linked
    assert sum(1 for p in (tmp_path / "job" / "train").rglob("*.png")) == 7_000


def test_every_domain_with_labels_has_an_annotation_source() -> None:
    """A domain the node converts needs both halves: its labels here and its source in datasets."""
    from ufdl_node.work.convert import DOMAIN_LABELS, DOMAIN_READERS
    from ufdl_node.work.datasets import ANNOTATION_SOURCES

    assert set(DOMAIN_LABELS) == set(ANNOTATION_SOURCES) == set(DOMAIN_READERS)
