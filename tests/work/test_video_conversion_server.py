"""A predict job's dataset with videos, end to end through the embedded server: ctx.dataset with
the stock OD predict's options and ``unlabelled`` gives frames in the layout (kept in the
conversion cache, keyed by ``unlabelled`` too), a video that cannot be decoded fails the job in
one line naming the template and the step, and the predictions on frames go back into the
dataset as the video's timed annotations (writeback.store_directory, as the docker handler's
``predictions`` key runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ufdl_node.errors import JobFailed
from ufdl_node.work.server_access import ServerAccess
from ufdl_node.work.videoframes import frame_name
from ufdl_node.work.writeback import store_directory

from . import test_conversion_server as conversion
from .test_conversion_server import Server
from .test_videoframes import frame_index, make_video

server = conversion.server  # the fixture: the embedded server and an admin session
OD = "/v1/objdet/datasets"
BOX = {"x": 1, "y": 2, "width": 10, "height": 8, "label": "dog"}


async def video_dataset(server: Server, tmp_path: Path, video: bytes) -> int:
    pk = await server.dataset("od", {"v.mp4": video, "a.jpg": b"jpeg"})
    await server.call("POST", f"{OD}/{pk}/annotations", json={
        "v.mp4": {"format": "mp4", "dimensions": [32, 24], "length": 1.8,
                  "annotations": [dict(BOX, time=0.4)]},
        "a.jpg": {"format": "jpg", "dimensions": [32, 24], "annotations": []}})
    return pk


async def test_a_videos_frames_reach_the_predict_layout(server: Server, tmp_path: Path) -> None:
    """to-images-od with every:1: the image and the video's frames (every second and the
    labelled 0.4 s); a second job links the cached tree; other unlabelled specs another."""
    video = make_video(tmp_path / "made.mp4").read_bytes()
    pk = await video_dataset(server, tmp_path, video)
    every = {"options": ["to-images-od"], "unlabelled": ["every:1"]}
    ds = await server.ctx(tmp_path, "od", pk, "one").dataset(**every)
    frames = [frame_name("v.mp4", t) for t in (0.0, 0.4, 1.0)]
    assert sorted(ds.files) == sorted(["a.jpg", *frames])
    assert [frame_index(ds.directory / f) for f in frames] == [0, 2, 5]
    again = await server.ctx(tmp_path, "od", pk, "two").dataset(**every)
    assert again.downloaded == 0 and (again.directory / frames[2]).samefile(ds.directory / frames[2])
    other = await server.ctx(tmp_path, "od", pk, "three").dataset(options=["to-images-od"],
                                                                  unlabelled=["1.5"])
    assert sorted(other.files) == sorted(["a.jpg", frame_name("v.mp4", 0.4), frame_name("v.mp4", 1.5)])


async def test_a_video_that_cannot_be_decoded_fails_the_job_in_one_line(server: Server,
                                                                         tmp_path: Path) -> None:
    pk = await video_dataset(server, tmp_path, b"not a video")
    with pytest.raises(JobFailed) as info:
        await server.ctx(tmp_path, "od", pk).dataset(options=["to-images-od"], unlabelled=["every:1"])
    reason = str(info.value)
    assert reason.startswith("template 'stock_train', dataset step: options: video 'v.mp4' cannot be decoded")
    assert "\n" not in reason
    assert not list((tmp_path / "cache" / "datasets").glob("converted/*"))
    assert not list((tmp_path / "cache" / "datasets").glob("archives/*"))


async def test_a_bad_unlabelled_spec_fails_before_anything_is_fetched(server: Server, tmp_path: Path) -> None:
    pk = await video_dataset(server, tmp_path, b"never read")
    with pytest.raises(JobFailed, match=r"unlabelled 'every:0': the step cannot be zero$"):
        await server.ctx(tmp_path, "od", pk).dataset(options=["to-images-od"], unlabelled=["every:0"])
    assert not (tmp_path / "cache" / "datasets" / "sha256").exists()


async def test_predictions_on_frames_go_back_as_the_videos_timed_annotations(server: Server,
                                                                             tmp_path: Path) -> None:
    """<frame stem>-rois.csv per frame (what the stock predict images write): one list of
    annotations with time for the video, as the stock yolov5 executor stores them; the image
    gets its boxes and scores."""
    pk = await video_dataset(server, tmp_path, b"video")
    out = tmp_path / "out"
    out.mkdir()
    rows = "x0,y0,x1,y1,label_str,score\n"
    (out / f"{frame_name('v.mp4', 0.0)[:-4]}-rois.csv").write_text(rows + "0,0,9,9,cat,0.9\n")
    (out / f"{frame_name('v.mp4', 1.0)[:-4]}-rois.csv").write_text(rows + "1,1,4,4,dog,0.5\n"
                                                                   "2,2,3,3,dog,0.4\n")
    (out / "a-rois.csv").write_text(rows + "5,5,6,6,bird,0.7\n")
    access: ServerAccess = server.ctx(tmp_path, "od", pk).server
    done = await store_directory(access, pk, out, "rois-csv", ["a.jpg", "v.mp4"], store=True, clear=True)
    assert done == 2
    video = await server.call("GET", f"{OD}/{pk}/annotations/v.mp4")
    def timed(x: int, size: int, label: str, time: float) -> dict[str, object]:
        return {"x": x, "y": x, "width": size, "height": size, "label": label, "prefix": "Object",
                "time": time}
    assert video == [timed(0, 10, "cat", 0.0), timed(1, 4, "dog", 1.0), timed(2, 2, "dog", 1.0)]
    assert await server.call("GET", f"{OD}/{pk}/annotations/a.jpg") == [
        {"x": 5, "y": 5, "width": 2, "height": 2, "label": "bird", "prefix": "Object"}]
