"""A video dataset through a stock object-detection predict job, end to end: the daemon on the
embedded server, the stock definition with its stand-in image.

The dataset holds an image and a video (a file type with ``length``); the predict template's
``unlabelled`` turns the video into JPEG frames ``<video>@|frametime=<t>|.jpg`` in the
container's input directory (ufdl_node/work/videoframes.py), the stand-in predicts one box on
each image it finds there, and with ``store_predictions`` the boxes on the frames go back as
the video's annotations, each with the ``time`` of its frame (work/writeback.py). The video's
name has a space, an ``@`` and a ``#``: the frame names carry it, and what predicts on them
must take them as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from ufdl_node.cli.localdata import resolve_licence, resolve_project
from ufdl_node.client import content_disposition
from ufdl_node.work.videoframes import frame_name

from ..handlers.stockrun import StockRun, stock_run
from ..work.test_videoframes import make_video
from .conftest import unavailable
from .standins import build_standin
from .standins_stock import build_stock_standin
from .test_stock_families import NODE, members, od_folder, png

OD = "/v1/objdet/datasets"
VIDEO = "cam 2 @ gate#1.mp4"  # 10 frames at 4 fps: 2.5 s
LENGTH = 2.5


@pytest.fixture
def docker_ok(docker_problem: str | None) -> None:
    if docker_problem:
        unavailable(docker_problem)


async def video_dataset(ufdl: StockRun, tmp_path: Path) -> int:
    """An object-detection dataset of the image still.png (no file type: the write-back gives
    it one) and the video VIDEO (a file type with its length, as the real server keeps it)."""
    made = await ufdl.admin.request("POST", f"{OD}/create", json={
        "name": "video-od", "version": 1, "description": "a video and an image", "tags": "",
        "project": await resolve_project(ufdl.admin, None),
        "licence": await resolve_licence(ufdl.admin, None), "is_public": False})
    pk = int(made["pk"])
    video = make_video(tmp_path / "made.mp4", count=10, fps=4).read_bytes()
    for name, data in ((VIDEO, video), ("still.png", png(32, 24, 7))):
        await ufdl.admin.request("POST", f"{OD}/{pk}/files/{quote(name, safe='')}", data=data, headers={
            "Content-Disposition": content_disposition(name), "Content-Type": "application/octet-stream"})
    await ufdl.admin.request("POST", f"{OD}/{pk}/file-type/{quote(VIDEO, safe='')}",
                             json={"format": "mp4", "dimensions": [32, 24], "length": LENGTH})
    return pk


async def predict_on_video(ufdl: StockRun, tmp_path: Path, template: str, trained: dict[str, Any],
                           image: str, **params: Any) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Predict with `template` on a new video dataset with store_predictions and clear_dataset:
    the predictions_csv zip's members, and the dataset's annotations of every file after."""
    pk = await video_dataset(ufdl, tmp_path)
    predicted = await ufdl.finished(template, {"dataset": pk, "model": ufdl.output(trained, "model")["pk"]},
                                    docker_image=image, store_predictions=True, clear_dataset=True, **params)
    rois = members(await ufdl.download(predicted, "predictions_csv"))
    return rois, await ufdl.admin.request("GET", f"{OD}/{pk}/annotations")


def seen(rois: dict[str, bytes]) -> dict[str, str]:
    """{-rois.csv member: the image its first row names}: the names the container read from its
    input directory (a stand-in writes ``<stem>-rois.csv`` with the image's name in ``file``)."""
    return {name: data.decode().splitlines()[1].split(",")[0] for name, data in rois.items()}


def expected(times: list[float]) -> dict[str, str]:
    frames = {frame_name(VIDEO, t) for t in times} | {"still.png"}
    return {f"{f.rsplit('.', 1)[0]}-rois.csv": f for f in frames}


def timed(boxes: list[dict[str, Any]]) -> list[tuple[float, int, int, int, int, str]]:
    return sorted((b["time"], b["x"], b["y"], b["width"], b["height"], b["label"]) for b in boxes)


async def test_yolov5_predicts_on_a_videos_frames(tmp_path: Path, docker_ok: None) -> None:
    """yolo_v5_objectdetection-predict with its unlabelled parameter (every:1 and a time):
    frames at 0, 1, 2 and 0.5 s beside the image; each frame's box goes back with its time."""
    image = await build_standin("yolov5")
    async with stock_run(tmp_path, **NODE) as ufdl:
        weights = await ufdl.pretrained("yolov5m_v6.0", b"standin weights", "od", ("yolo", "v5"))
        trained = await ufdl.finished("yolo_v5_objectdetection-train",
                                      {"dataset": str(od_folder(tmp_path / "od", 2))},
                                      docker_image=image, pretrained_model=weights, epochs=1)
        rois, annotations = await predict_on_video(ufdl, tmp_path, "yolo_v5_objectdetection-predict",
                                                   trained, image, unlabelled=["every:1", "*.mp4@0.5"])
    assert seen(rois) == expected([0.0, 0.5, 1.0, 2.0])
    video = annotations[VIDEO]
    assert (video["format"], video["length"]) == ("mp4", LENGTH)
    # x1, y1 of a ROI are inclusive (wai.annotations): 1..11 is 11 wide
    assert timed(video["annotations"]) == [(t, 1, 2, 11, 11, "car") for t in (0.0, 0.5, 1.0, 2.0)]
    still = annotations["still.png"]
    assert "length" not in still and [b["label"] for b in still["annotations"]] == ["car"]
    assert all("time" not in b for b in still["annotations"])


async def test_mmdetection_predicts_on_every_second(tmp_path: Path, docker_ok: None) -> None:
    """The mmdetection predict definition's own unlabelled (every:1): the ROIS stand-in's
    frames and boxes, the frame at each second of the 2.5 s video."""
    image = await build_stock_standin("mmdetection")
    async with stock_run(tmp_path, **NODE) as ufdl:
        weights = await ufdl.pretrained("pretrained-weights", b"standin weights", "od",
                                        ("mmdetection", "2020"))
        trained = await ufdl.finished("mmdetection_2020-03-01_faster_rcnn_r101_fpn_1x-train",
                                      {"dataset": str(od_folder(tmp_path / "od", 4))},
                                      docker_image=image, pretrained_model=weights, epochs=1)
        rois, annotations = await predict_on_video(ufdl, tmp_path, "mmdetection_2020-03-01-predict",
                                                   trained, image)
    assert seen(rois) == expected([0.0, 1.0, 2.0])
    assert timed(annotations[VIDEO]["annotations"]) == [(t, 2, 3, 10, 11, "car") for t in (0.0, 1.0, 2.0)]

