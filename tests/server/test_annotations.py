"""annotations_args on the archive download: the wai.annotations subset the shipped definitions use."""

from __future__ import annotations

import io
import tarfile
import zipfile
from typing import Any

import pytest

from ufdl_node.server.annotations import split_schedule

from .conftest import Api
from .test_datasets import create, dataset_with, download

# The shipped mmclassification_0.25.0_resnet18_train definition's dataset_options default.
MMCLS_TRAIN = ["write-labels", "-f", "csv-headless", "-o", "labels.txt", "to-subdir-ic", "-o", ".",
               "--split-names", "train", "test", "val", "--split-ratios", "70", "15", "15"]
IMAGES = {f"{kind}{n:02}.png": f"{kind} {n}".encode() for kind in ("cat", "dog") for n in range(1, 11)}


async def labelled(api: Api, labels: dict[str, str], files: dict[str, bytes] | None = None,
                   **fields: Any) -> dict[str, Any]:
    """A dataset of `files` (IMAGES), each image of `labels` with that category."""
    ds = await dataset_with(api, IMAGES if files is None else files, **fields)
    for label in sorted(set(labels.values())):
        images = [name for name, given in labels.items() if given == label]
        await api.ok("PATCH", f"/v1/classify/datasets/{ds['pk']}/categories",
                     json={"method": "add", "images": images, "categories": [label]})
    return ds


def by_kind() -> dict[str, str]:
    return {name: name[:3] for name in IMAGES}


def unzipped(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


async def converted(api: Api, ds: dict[str, Any], args: list[str]) -> dict[str, bytes]:
    reply = await download(api, ds, {"params": {"annotations_args": args}})
    assert reply.status == 200, reply
    return unzipped(reply.body)


async def test_the_mmclassification_defaults_give_labels_and_split_class_folders(api: Api) -> None:
    """MMClassification's defaults: labels.txt plus every image at <split>/<label>/<name>, 14:3:3."""
    got = await converted(api, await labelled(api, by_kind()), MMCLS_TRAIN)
    cycle = split_schedule(["train", "test", "val"], [70, 15, 15])
    expected = {f"{cycle[i]}/{name[:3]}/{name}": IMAGES[name] for i, name in enumerate(sorted(IMAGES))}
    expected["labels.txt"] = b"cat,dog"
    assert got == expected
    assert sorted(got) == sorted(expected)  # the exact member list, nothing else
    assert [path.split("/")[0] for path in got].count("train") == 14


def test_the_split_cycle_is_wai_annotations_schedule() -> None:
    """70/15/15 reduces to a cycle of 20 slots in wai.bynning's order: 14 train, 3 test, 3 val."""
    cycle = split_schedule(["train", "test", "val"], [70, 15, 15])
    t, e, v = "train", "test", "val"
    assert cycle == [t, t, t, e, v, t, t, t, t, e, v, t, t, t, t, t, e, v, t, t]


async def test_the_labels_file_is_one_headless_csv_line(api: Api) -> None:
    """write-labels -f csv-headless writes the labels on one line, comma-separated, no newline."""
    ds = await labelled(api, {"cat01.png": "tabby", "dog01.png": "beagle", "dog02.png": "beagle"})
    got = await converted(api, ds, ["write-labels", "-f", "csv-headless", "-o", "labels.txt",
                                    "to-images-ic", "-o", "."])
    assert got["labels.txt"] == b"beagle,tabby"


async def test_the_default_labels_format_is_csv_with_a_header(api: Api) -> None:
    """write-labels without -f writes wai.annotations' default csv: a label_N header line first."""
    ds = await labelled(api, {"cat01.png": "cat", "dog01.png": "dog"})
    got = await converted(api, ds, ["write-labels", "-o", "meta/labels.csv", "to-images-ic", "-o", "."])
    assert got["meta/labels.csv"] == b"label_1,label_2\ncat,dog"


async def test_splits_are_the_same_on_every_download(api: Api) -> None:
    """The same dataset and arguments give the same archive members twice."""
    ds = await labelled(api, by_kind())
    assert sorted(await converted(api, ds, MMCLS_TRAIN)) == sorted(await converted(api, ds, MMCLS_TRAIN))


async def test_an_image_without_a_label_goes_in_its_split_folder(api: Api) -> None:
    """An unlabelled image is written into the split folder itself, as wai.annotations does."""
    ds = await labelled(api, {"cat01.png": "cat"}, files={"cat01.png": b"c", "x.png": b"x"})
    got = await converted(api, ds, ["to-subdir-ic", "-o", "out", "--split-names", "a", "b",
                                    "--split-ratios", "1", "1"])
    assert got == {"out/a/cat/cat01.png": b"c", "out/b/x.png": b"x"}


async def test_to_subdir_ic_alone_writes_under_annotations(api: Api) -> None:
    """["to-subdir-ic"] without -o writes to "annotations", as the real server adds; tar.gz alike."""
    ds = await labelled(api, {"cat01.png": "cat"}, files={"cat01.png": b"c", "x.png": b"x"})
    reply = await download(api, ds, {"filetype": "tar.gz", "params": {"annotations_args": ["to-subdir-ic"]}})
    assert reply.status == 200, reply
    with tarfile.open(fileobj=io.BytesIO(reply.body), mode="r:gz") as archive:
        got = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]
    assert got == {"annotations/cat/cat01.png": b"c", "annotations/x.png": b"x"}


async def test_to_images_ic_with_the_top_level_gives_the_bare_images(api: Api) -> None:
    """to-images-ic -o . gives the images at the top level, without labels."""
    ds = await labelled(api, {"cat01.png": "cat"}, files={"cat01.png": b"c", "x.png": b"x"})
    assert await converted(api, ds, ["to-images-ic", "-o", "."]) == {"cat01.png": b"c", "x.png": b"x"}


async def test_the_first_category_is_the_label(api: Api) -> None:
    """An image with several categories goes to the folder of the first one added."""
    ds = await labelled(api, {"cat01.png": "cat"}, files={"cat01.png": b"c"})
    await api.ok("PATCH", f"/v1/classify/datasets/{ds['pk']}/categories",
                 json={"method": "add", "images": ["cat01.png"], "categories": ["animal"]})
    assert await converted(api, ds, ["to-subdir-ic", "-o", "."]) == {"cat/cat01.png": b"c"}


REFUSALS = [
    (["to-yolo-od", "-o", "."], "'to-yolo-od'"),
    (["filter-labels", "--labels", "a", "to-subdir-ic", "-o", "."], "'filter-labels'"),
    (["to-subdir-ic", "-o", ".", "--seed", "1"], "'--seed'"),
    (["write-labels", "-f", "yaml", "-o", "l.txt", "to-images-ic"], "'yaml'"),
    (["--verbose", "to-subdir-ic"], "'--verbose'"),
    (["from-subdir-ic", "-i", "x", "to-subdir-ic"], "'from-subdir-ic'"),
    (["write-labels", "-o", "labels.txt"], "output stage"),
    (["to-subdir-ic", "write-labels", "-o", "l.txt"], "must be the last"),
    (["to-subdir-ic", "--split-names", "a", "b", "--split-ratios", "1"], "--split-names"),
    (["to-subdir-ic", "--split-names", "a", "--split-ratios", "x"], "'x'"),
    (["to-subdir-ic", "--split-names", "../up", "--split-ratios", "1"], "'../up'"),
    (["to-subdir-ic", "-o", "../escape"], "'../escape'"),
    (["to-subdir-ic", "-o", "/abs"], "'/abs'"),
    (["write-labels", "-o", "cat01.png", "to-images-ic", "-o", "."], "twice"),
    (["to-subdir-ic", "-o"], "needs a value"),
]


@pytest.mark.parametrize(("args", "named"), REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
async def test_arguments_outside_the_subset_are_a_400_naming_them(api: Api, args: list[str],
                                                                  named: str) -> None:
    """Another stage or option, an input stage, a bad value or path: 400, a one-line detail naming it."""
    ds = await labelled(api, {"cat01.png": "cat"}, files={"cat01.png": b"c"})
    reply = await download(api, ds, {"params": {"annotations_args": args}})
    assert reply.status == 400, reply
    detail = reply.json["detail"]
    assert named in detail and "\n" not in detail, detail


async def test_object_detection_args_are_a_400_that_says_so(api: Api) -> None:
    """The yolov5 defaults on an object-detection dataset: a 400 saying only image classification converts."""
    ds = await dataset_with(api, {"a.jpg": b"a"}, domain="od")
    args = ["to-yolo-od", "-o", ".", "--labels", "./labels.txt"]
    reply = await download(api, ds, {"params": {"annotations_args": args}})
    assert reply.status == 400, reply
    assert "Object Detection" in reply.json["detail"] and "'to-yolo-od'" in reply.json["detail"]


async def test_a_label_that_is_not_a_folder_name_is_a_400(api: Api) -> None:
    """A category with '/' (or '..') cannot become a folder: 400 naming it, nothing outside the archive."""
    ds = await labelled(api, {"cat01.png": "../../etc"}, files={"cat01.png": b"c"})
    reply = await download(api, ds, {"params": {"annotations_args": ["to-subdir-ic", "-o", "."]}})
    assert reply.status == 400 and "'../../etc'" in reply.json["detail"], reply


async def test_annotations_args_as_a_string_are_a_400(api: Api) -> None:
    """annotations_args must be an array of arguments: a single string is a 400."""
    reply = await download(api, await create(api), {"params": {"annotations_args": "to-subdir-ic -o ."}})
    assert reply.status == 400 and "annotations_args" in reply.json["detail"], reply
