"""Videos in an object-detection dataset, as the real server takes them (docs/real-server.md,
"Videos in object-detection datasets": each answer here was first seen on the real backend).

A file type with ``length`` makes a video's container; its annotations each carry ``time``, an
image's none; a mismatch is a 400 (the real server has emptied the file's list by then; the
embedded server changes nothing, which the last test pins as our own choice).
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Api
from .test_dataset_domains import BOX, OD, with_files

READ = dict(BOX, prefix="Object")
VIDEO_TYPE = {"format": "mp4", "dimensions": [64, 48], "length": 2.5}


async def _typed(api: Api) -> tuple[str, dict[str, Any]]:
    ds = await with_files(api, "od", ["v.mp4", "a.jpg", "n.mp4"])
    base = f"{OD}/{ds['pk']}"
    assert await api.ok("POST", f"{base}/file-type/v.mp4", json=VIDEO_TYPE) == {}
    image = {"format": "jpg", "dimensions": [64, 48]}
    assert await api.ok("POST", f"{base}/file-type/a.jpg", json=image) == {}
    return base, ds


async def test_a_file_type_with_a_length_is_a_video(api: Api) -> None:
    """The length comes back as a float (3 → 3.0; 0 is a length); an image's type has none;
    GET .../file-types lists every typed file."""
    base, _ = await _typed(api)
    assert await api.ok("GET", f"{base}/file-type/v.mp4") == VIDEO_TYPE
    assert await api.ok("GET", f"{base}/file-type/a.jpg") == {"format": "jpg", "dimensions": [64, 48]}
    assert await api.ok("POST", f"{base}/file-type/n.mp4", json={**VIDEO_TYPE, "length": 0}) == {}
    reply = await api.call("GET", f"{base}/file-type/n.mp4")
    assert reply.json == {**VIDEO_TYPE, "length": 0.0}
    assert b'"length": 0.0' in reply.body
    assert await api.ok("GET", f"{base}/file-types") == {
        "a.jpg": {"format": "jpg", "dimensions": [64, 48]}, "n.mp4": {**VIDEO_TYPE, "length": 0.0},
        "v.mp4": VIDEO_TYPE}


@pytest.mark.parametrize("length", [-1, "2", True, None])
async def test_a_bad_length_is_400(api: Api, length: Any) -> None:
    ds = await with_files(api, "od", ["w.mp4"])
    reply = await api.call("POST", f"{OD}/{ds['pk']}/file-type/w.mp4", json={**VIDEO_TYPE, "length": length})
    assert reply.status == 400
    assert (await api.call("GET", f"{OD}/{ds['pk']}/file-type/w.mp4")).status == 400  # still no type


async def test_a_videos_annotations_carry_their_time(api: Api) -> None:
    """POST and PATCH take annotations with time (a whole number comes back a float; a time
    past the length is taken); GET of all files shows the video's length."""
    base, _ = await _typed(api)
    path = f"{base}/annotations/v.mp4"
    assert await api.ok("POST", path, json=[dict(BOX, time=0.5), dict(BOX, time=1, label="cat")]) == {}
    assert await api.ok("PATCH", path, json=[dict(BOX, time=99)]) == {}
    assert await api.ok("GET", path) == [dict(READ, time=0.5), dict(READ, time=1.0, label="cat"),
                                         dict(READ, time=99.0)]
    everything = await api.ok("GET", f"{base}/annotations")
    assert everything["v.mp4"] == {**VIDEO_TYPE, "annotations": await api.ok("GET", path)}
    assert everything["a.jpg"] == {"format": "jpg", "dimensions": [64, 48], "annotations": []}
    assert sorted(await api.ok("GET", f"{base}/labels")) == ["cat", "dog"]


@pytest.mark.parametrize(("name", "body"), [
    ("v.mp4", [BOX]),                            # a video's annotation without its time
    ("v.mp4", [dict(BOX, time=0.5), BOX]),
    ("a.jpg", [dict(BOX, time=0.5)]),            # an image's with one
    ("v.mp4", [dict(BOX, time=-1)]), ("v.mp4", [dict(BOX, time="1")]),
    ("v.mp4", [dict(BOX, time=None)]), ("v.mp4", [dict(BOX, time=True)]),
])
async def test_an_annotation_of_the_other_kind_is_400(api: Api, name: str, body: list[Any]) -> None:
    base, _ = await _typed(api)
    for method in ("POST", "PATCH"):
        assert (await api.call(method, f"{base}/annotations/{name}", json=body)).status == 400


async def test_all_files_at_once_take_videos(api: Api) -> None:
    """POST .../annotations: an entry with a length makes a video (its annotations timed); a
    type given for a file that has one is ignored; an entry whose annotations do not fit its
    kind, or a file's kind, is a 400."""
    base, _ = await _typed(api)
    timed = [dict(BOX, time=1.5)]
    body = {"n.mp4": {"format": "mp4", "dimensions": [8, 8], "length": 1.25, "annotations": timed},
            "v.mp4": {"format": "avi", "dimensions": [9, 9], "length": 7, "annotations": []}}
    assert await api.ok("POST", f"{base}/annotations", json=body) == {}
    assert await api.ok("GET", f"{base}/file-types") == {
        "a.jpg": {"format": "jpg", "dimensions": [64, 48]},
        "n.mp4": {"format": "mp4", "dimensions": [8, 8], "length": 1.25}, "v.mp4": VIDEO_TYPE}
    assert await api.ok("GET", f"{base}/annotations/n.mp4") == [dict(READ, time=1.5)]
    for bad in ({"a.jpg": {"format": "jpg", "dimensions": [8, 8], "annotations": timed}},
                {"n.mp4": {"length": 1.25, "annotations": [BOX]}},
                {"n.mp4": {"length": 2, "annotations": [*timed, BOX]}},
                {"a.jpg": {"length": 2, "annotations": timed}},       # an image's container
                {"v.mp4": {"annotations": [BOX]}}):                   # a video's container
        assert (await api.call("POST", f"{base}/annotations", json=bad)).status == 400, bad


async def test_a_refused_write_changes_nothing(api: Api) -> None:
    """Our choice where the real server differs: it empties the file's list before the add
    that fails; the embedded server refuses the whole write first."""
    base, _ = await _typed(api)
    path = f"{base}/annotations/v.mp4"
    assert await api.ok("POST", path, json=[dict(BOX, time=1)]) == {}
    assert (await api.call("POST", path, json=[dict(BOX, time=0.5), BOX])).status == 400
    untimed = {"v.mp4": {"annotations": [BOX]}}
    assert (await api.call("POST", f"{base}/annotations", json=untimed)).status == 400
    assert await api.ok("GET", path) == [dict(READ, time=1.0)]
