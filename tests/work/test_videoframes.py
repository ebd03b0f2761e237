"""Video frames in object-detection conversions (ufdl_node/work/videoframes.py): the
``--unlabelled`` specs as ufdl-annotations-plugin reads them, the frames' names, the frame
shown at each time (checked by the colour each frame of a video made here carries), the
layout they take, and a video that cannot be decoded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from ufdl_node.work.convert import plan_layout, write_layout
from ufdl_node.work.predictions import VIDEO_FRAME
from ufdl_node.work.videoframes import extract_frames, frame_name, frame_times, parse_spec, parse_specs
from ufdl_node.work.wai_options import ConversionError, parse

FPS, COUNT = 5, 10  # frame i starts at i/5 s and is red 25*i


def make_video(path: Path, count: int = COUNT, fps: int = FPS, size: tuple[int, int] = (32, 24)) -> Path:
    """An MPEG-4 video whose frame i is a flat colour of red 25*i (PyAV's encoder)."""
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            pixels = np.zeros((height, width, 3), dtype=np.uint8)
            pixels[:, :, 0] = 25 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def frame_index(jpeg: Path) -> int:
    """Which frame of make_video's a JPEG shows (its red, within the codecs' error)."""
    with av.open(str(jpeg)) as image:
        (frame,) = image.decode(video=0)
        red = float(frame.to_ndarray(format="rgb24")[:, :, 0].mean())
    return round(red / 25)


@pytest.mark.parametrize(("spec", "length", "times"), [
    ("every:1", 2.5, [0.0, 1.0, 2.0]),
    ("every:1", 2.0, [0.0, 1.0, 2.0]),              # both ends included
    ("every:0.5+0.25", 1.5, [0.25, 0.75, 1.25]),
    ("every:1/3", 1.0, [0.0, 1 / 3, 2 / 3, 1.0]),   # exact fractions, then floats
    ("every:0.1", 0.35, [0.0, 0.1, 0.2, 0.3]),      # 0.3, not 0.30000000000000004
    ("every:0.1", 0.3, [0.0, 0.1, 0.2]),            # 3/10 is past the float 0.3 (as there)
    ("every:-1", 2.5, [0.5, 1.5, 2.5]),              # back from the length
    ("every:-1+0.5", 2.5, [0.0, 1.0, 2.0]),         # 0.5 % -1 = -0.5, from 2.0 down
    ("every:1-0.25", 2.0, [0.75, 1.75]),             # wai.annotations divides by zero here
    ("1,2.5,3", 2.5, [1.0, 2.5]),
    ("*.mp4@every:2", 3.0, [0.0, 2.0]),
    ("*.avi@every:1", 3.0, []),                      # another video's spec
    ("clip@x.mp4@0.5", 3.0, []),                     # the glob runs to the last '@'
])
def test_the_times_of_a_spec(spec: str, length: float, times: list[float]) -> None:
    assert frame_times(parse_specs([spec]), "v.mp4", length, []) == times


def test_labelled_times_join_the_specs() -> None:
    """A labelled frame is taken whatever the specs say, once (1.0 and every:1's 1 are one)."""
    assert frame_times(parse_specs(["every:1"]), "v.mp4", 2.0, [1.0, 0.3]) == [0.0, 0.3, 1.0, 2.0]
    assert frame_times((), "v.mp4", 2.0, [1.5]) == [1.5]


@pytest.mark.parametrize("spec", ["every:0", "every:x", "every:1+y", "1,,2", "abc", "every:1/0"])
def test_a_bad_spec_is_one_line(spec: str) -> None:
    with pytest.raises(ConversionError) as caught:
        parse_spec(spec)
    assert "\n" not in str(caught.value) and spec in str(caught.value)


def test_a_frame_is_named_as_wai_annotations_names_it() -> None:
    """<video>@|frametime=<float>|.jpg, which the predictions reader takes back to the video."""
    assert frame_name("v.mp4", 1) == "v.mp4@|frametime=1.0|.jpg"
    assert frame_name("a/v.mp4", 0.25) == "a/v.mp4@|frametime=0.25|.jpg"
    found = VIDEO_FRAME.match(frame_name("v.mp4", 2.5))
    assert found is not None and (found["video"], float(found["time"])) == ("v.mp4", 2.5)


def test_the_frame_shown_at_each_time(tmp_path: Path) -> None:
    """The last frame starting at or before t (frame 2 at 0.4 s is still shown at 0.5 s); past
    the end, the last frame; each a JPEG of the video's size."""
    video = make_video(tmp_path / "v.mp4")
    wanted = {0.0: 0, 0.19: 0, 0.2: 1, 0.5: 2, 1.0: 5, 1.8: 9, 2.0: 9, 30.0: 9}
    targets = [(t, tmp_path / "out" / f"{n}.jpg") for n, t in enumerate(wanted)]
    extract_frames(video, "v.mp4", targets)
    assert {t: frame_index(path) for t, path in targets} == wanted
    assert targets[0][1].read_bytes()[:2] == b"\xff\xd8"
    with av.open(str(targets[0][1])) as image:
        assert (image.streams.video[0].width, image.streams.video[0].height) == (32, 24)


@pytest.mark.parametrize("content", [b"", b"not a video at all", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64])
def test_a_video_that_cannot_be_decoded_is_one_line(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(ConversionError) as caught:
        extract_frames(bad, "bad.mp4", [(0.0, tmp_path / "out.jpg")])
    assert "bad.mp4" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out.jpg").exists()


def _annotations(length: float) -> dict[str, Any]:
    box = {"x": 1, "y": 2, "width": 10, "height": 8, "label": "dog", "prefix": "Object"}
    return {"a.jpg": {"format": "jpg", "dimensions": [32, 24], "annotations": [box]},
            "v.mp4": {"format": "mp4", "dimensions": [32, 24], "length": length,
                      "annotations": [{**box, "time": 0.4}]},
            "quiet.mp4": {"format": "mp4", "dimensions": [32, 24], "length": length, "annotations": []}}


def test_to_images_od_puts_the_frames_in_the_videos_place(tmp_path: Path) -> None:
    """The predict templates' to-images-od with every:1: the image, and each video's frames
    (every second, and its labelled time) named as wai.annotations names them; a video with
    no time to take (the spec is for another) is left out; no scratch folder stays."""
    sources = {"a.jpg": tmp_path / "a.jpg", "v.mp4": make_video(tmp_path / "v.mp4"),
               "quiet.mp4": make_video(tmp_path / "quiet.mp4")}
    sources["a.jpg"].write_bytes(b"jpeg")
    plan = parse(["to-images-od", "-o", "in"])
    plan = type(plan)(plan.stages, ("v.mp4@every:1",))
    layout = plan_layout(plan, ["a.jpg", "quiet.mp4", "v.mp4"], _annotations(1.8))
    frames = [frame_name("v.mp4", t) for t in (0.0, 0.4, 1.0)]
    assert layout.paths == {"a.jpg": "in/a.jpg", **{f: f"in/{f}" for f in frames}}
    written = write_layout(layout, sources, tmp_path / "dest")
    assert written == sorted(["in/a.jpg", *(f"in/{f}" for f in frames)])
    assert [frame_index(tmp_path / "dest" / "in" / f) for f in frames] == [0, 2, 5]
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["in"]


def test_to_yolo_od_gives_a_labelled_frame_its_boxes(tmp_path: Path) -> None:
    """A train layout of a video with a timed annotation: its frame at that time is an image
    with the box; the other frames are negatives."""
    plan = parse(["to-yolo-od", "-o", "."])
    layout = plan_layout(plan, ["v.mp4"], {"v.mp4": _annotations(1.0)["v.mp4"]})
    frame = frame_name("v.mp4", 0.4)
    assert layout.paths == {frame: f"images/{frame}"}
    assert layout.generated[f"labels/{frame[:-4]}.txt"] == b"0 0.1875 0.25 0.3125 0.3333333333333333"
    write_layout(layout, {"v.mp4": make_video(tmp_path / "v.mp4")}, tmp_path / "dest")
    assert frame_index(tmp_path / "dest" / "images" / frame) == 2


def test_unlabelled_is_for_object_detection() -> None:
    plan = parse(["to-subdir-ic", "-o", "."])
    with pytest.raises(ConversionError, match="object-detection"):
        plan_layout(type(plan)(plan.stages, ("every:1",)), ["a.jpg"], {})
