"""Predictions written back per domain, against the embedded server on loopback.

Each test writes the files a stock framework writes into ``prediction/out`` (MMClassification
``.json``, TensorFlow ``.csv``, ROI ``-rois.csv``, Coqui ``.txt``, Weka ``.txt``), runs
:func:`ufdl_node.work.writeback.store_directory` as a predict job's end does, and reads the
dataset back through the server's own routes.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.client import UfdlClient
from ufdl_node.errors import JobFailed
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import ServerSettings
from ufdl_node.work.predictions import read_predictions, roi_annotation, wants_confidence
from ufdl_node.work.server_access import ServerAccess
from ufdl_node.work.writeback import store_directory

ADMIN_PW = "writeback-admin-pw-1"
PREFIX = {"ic": "/v1/classify/datasets", "od": "/v1/objdet/datasets", "sp": "/v1/speech/datasets",
          "sc": "/v1/spectra/datasets"}


def png(width: int, height: int) -> bytes:
    """A valid PNG of `width` x `height` grey pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@dataclass
class Ufdl:
    admin: UfdlClient
    access: ServerAccess

    async def dataset(self, domain: str, files: dict[str, bytes]) -> int:
        body = {"name": f"d-{domain}", "project": 1, "licence": 1, "tags": ""}
        record = await self.admin.request("POST", f"{PREFIX[domain]}/create", json=body)
        pk = int(record["pk"])
        for name, data in files.items():
            await self.admin.request("POST", f"/v1/datasets/{pk}/files/{name}", data=data,
                                     headers={"Content-Disposition": f'attachment; filename="{name}"'})
        return pk

    async def get(self, domain: str, pk: int, rest: str) -> Any:
        return await self.admin.request("GET", f"{PREFIX[domain]}/{pk}/{rest}")

    async def metadata(self, domain: str, pk: int, name: str) -> dict[str, Any]:
        text = (await self.get(domain, pk, f"metadata/{name}"))["metadata"]
        return json.loads(text) if text else {}

    async def store(self, pk: int, out: Path, fmt: str, files: list[str], **kw: Any) -> int:
        return await store_directory(self.access, pk, out, fmt, files, **kw)


@pytest.fixture
async def ufdl(tmp_path: Path) -> AsyncIterator[Ufdl]:
    settings = ServerSettings(data_dir=tmp_path / "server", port=0, admin=f"admin:{ADMIN_PW}",
                              log_level="error")
    async with EmbeddedServer(settings) as server, UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        io = admin.node_io()  # the one adapter handlers reach the server through
        yield Ufdl(admin, ServerAccess(io, retry_s=1.0, initial_delay_s=0.01, max_delay_s=0.05))


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


ROIS = ("file,x0,y0,x1,y1,x0n,y0n,x1n,y1n,label,label_str,score,poly_x,poly_y\n"
        "a.png,1,2,10,20,0.03,0.05,0.3,0.5,0,cat,0.9,\"1,10,10\",\"2,2,20\"\n"
        "a.png,5,5,8,9,0.15,0.12,0.24,0.22,1,dog,0.5,,\n")


async def test_ic_json_labels_replace_and_keep_others_and_confidence(ufdl: Ufdl, tmp_path: Path) -> None:
    pk = await ufdl.dataset("ic", {"a.jpg": b"a", "b.jpg": b"b", "c.jpg": b"c"})
    await ufdl.admin.request("PATCH", f"{PREFIX['ic']}/{pk}/categories",
                             json={"method": "add", "images": ["a.jpg", "c.jpg"], "categories": ["old"]})
    out = write(tmp_path / "out", {"a.json": json.dumps({"cat": 0.8, "dog": 0.2}),
                                   "b.json": json.dumps({"cat": 0.1, "dog": 0.9})})
    written = await ufdl.store(pk, out, "ic-json", ["a.jpg", "b.jpg", "c.jpg"], store=True,
                               confidence=True)
    assert written == 2
    assert await ufdl.get("ic", pk, "categories") == {"a.jpg": ["cat"], "b.jpg": ["dog"], "c.jpg": ["old"]}
    meta = await ufdl.metadata("ic", pk, "a.jpg")
    assert meta["confidence"]["top_score"] == 0.8
    assert math.isclose(meta["confidence"]["entropy"], -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)))


async def test_ic_csv_with_clear_leaves_only_the_predictions(ufdl: Ufdl, tmp_path: Path) -> None:
    pk = await ufdl.dataset("ic", {"a.jpg": b"a", "c.jpg": b"c"})
    await ufdl.admin.request("PATCH", f"{PREFIX['ic']}/{pk}/categories",
                             json={"method": "add", "images": ["c.jpg"], "categories": ["old"]})
    out = write(tmp_path / "out", {"a.csv": "label,probability\ncat,0.25\nbird,0.75\n"})
    await ufdl.store(pk, out, "ic-csv", ["a.jpg", "c.jpg"], store=True, clear=True)
    assert await ufdl.get("ic", pk, "categories") == {"a.jpg": ["bird"]}


async def test_clear_without_store_clears_and_writes_nothing(ufdl: Ufdl, tmp_path: Path) -> None:
    pk = await ufdl.dataset("ic", {"a.jpg": b"a"})
    await ufdl.admin.request("PATCH", f"{PREFIX['ic']}/{pk}/categories",
                             json={"method": "add", "images": ["a.jpg"], "categories": ["old"]})
    out = write(tmp_path / "out", {"a.json": json.dumps({"cat": 1.0})})
    assert await ufdl.store(pk, out, "ic-json", ["a.jpg"], store=False, clear=True) == 0
    assert await ufdl.get("ic", pk, "categories") == {}


async def test_od_rois_set_file_type_annotations_scores_and_confidence(ufdl: Ufdl, tmp_path: Path) -> None:
    pk = await ufdl.dataset("od", {"a.png": png(40, 30), "b.png": png(8, 8)})
    out = write(tmp_path / "out", {"a-rois.csv": ROIS})
    (out / "a.png").write_bytes(png(40, 30))  # the stock predict tools move the image beside
    assert await ufdl.store(pk, out, "rois-csv", ["a.png", "b.png"], store=True, confidence=True) == 1
    assert await ufdl.get("od", pk, "file-type/a.png") == {"format": "png", "dimensions": [40, 30]}
    boxes = await ufdl.get("od", pk, "annotations/a.png")
    assert [(b["x"], b["y"], b["width"], b["height"], b["label"]) for b in boxes] == \
        [(1, 2, 10, 19, "cat"), (5, 5, 4, 5, "dog")]
    assert boxes[0]["polygon"] == {"points": [[1, 2], [10, 2], [10, 20]]}
    meta = await ufdl.metadata("od", pk, "a.png")
    assert meta["scores"] == [0.9, 0.5]
    assert meta["confidence"]["score-dist-max"] == 0.9 and meta["confidence"]["widths-min"] == 4
    assert await ufdl.get("od", pk, "annotations/b.png") == []


async def test_od_image_found_under_the_input_layout(ufdl: Ufdl, tmp_path: Path) -> None:
    pk = await ufdl.dataset("od", {"a.png": png(12, 7)})
    out = write(tmp_path / "out", {"a-rois.csv": ROIS})
    (tmp_path / "in" / "images").mkdir(parents=True)
    (tmp_path / "in" / "images" / "a.png").write_bytes(png(12, 7))
    await ufdl.store(pk, out, "rois-csv", ["a.png"], store=True, roots=[tmp_path / "in"])
    assert await ufdl.get("od", pk, "file-type/a.png") == {"format": "png", "dimensions": [12, 7]}


async def test_speech_transcriptions(ufdl: Ufdl, tmp_path: Path) -> None:
    pk = await ufdl.dataset("sp", {"one.wav": b"RIFF1", "two.wav": b"RIFF2"})
    out = write(tmp_path / "out", {"one.txt": "hello world", "two.txt": ""})
    assert await ufdl.store(pk, out, "sp-txt", ["one.wav", "two.wav"], store=True) == 2
    assert await ufdl.get("sp", pk, "transcriptions") == {
        "one.wav": {"transcription": "hello world"}, "two.wav": {"transcription": ""}}


async def test_spectrum_categories(ufdl: Ufdl, tmp_path: Path) -> None:
    pk = await ufdl.dataset("sc", {"s1.spec": b"1", "s2.spec": b"2"})
    out = write(tmp_path / "out", {"s1.txt": "high", "s2.txt": "low\n"})
    assert await ufdl.store(pk, out, "sc-txt", ["s1.spec", "s2.spec"], store=True) == 2
    assert await ufdl.get("sc", pk, "categories") == {"s1.spec": ["high"], "s2.spec": ["low"]}


@pytest.mark.parametrize(("files", "error"), [
    ({"zzz.json": "{}"}, "no file of the dataset is named zzz"),
    ({"a.json": "[1, 2]"}, "a.json: not {label: probability}"),
    ({"a.json": "{"}, "a.json"),
])
async def test_bad_output_fails_before_anything_is_written(ufdl: Ufdl, tmp_path: Path, files: dict[str, str],
                                                           error: str) -> None:
    pk = await ufdl.dataset("ic", {"a.jpg": b"a"})
    await ufdl.admin.request("PATCH", f"{PREFIX['ic']}/{pk}/categories",
                             json={"method": "add", "images": ["a.jpg"], "categories": ["old"]})
    out = write(tmp_path / "out", files)
    with pytest.raises(JobFailed, match=error):
        await ufdl.store(pk, out, "ic-json", ["a.jpg"], store=True, clear=True)
    assert await ufdl.get("ic", pk, "categories") == {"a.jpg": ["old"]}


async def test_od_without_image_fails_in_one_line(ufdl: Ufdl, tmp_path: Path) -> None:
    pk = await ufdl.dataset("od", {"a.png": png(4, 4)})
    out = write(tmp_path / "out", {"a-rois.csv": ROIS})
    with pytest.raises(JobFailed, match=r"a\.png: no file type on the server, and no image"):
        await ufdl.store(pk, out, "rois-csv", ["a.png"], store=True)


def test_same_stem_resolved_by_the_file_beside_else_refused(tmp_path: Path) -> None:
    out = write(tmp_path / "out", {"a.json": '{"x": 1}'})
    with pytest.raises(JobFailed, match="2 files of the dataset are named a"):
        read_predictions(out, "ic-json", ["a.jpg", "a.png"])
    (out / "a.png").write_bytes(b"")
    assert [p.file for p in read_predictions(out, "ic-json", ["a.jpg", "a.png"])] == ["a.png"]


def test_video_frames_name_their_video(tmp_path: Path) -> None:
    out = write(tmp_path / "out", {"clip.mp4@|frametime=1.5|-rois.csv": ROIS})
    [p] = read_predictions(out, "rois-csv", ["clip.mp4"])
    assert (p.file, p.frame_time, len(p.annotations)) == ("clip.mp4", 1.5, 2)


def test_roi_size_mode() -> None:
    box, score = roi_annotation({"x": "3", "y": "4", "w": "5", "h": "6", "xn": "", "yn": "", "wn": "",
                                 "hn": "", "label": "0", "label_str": "car", "score": ""})
    assert box == {"x": 3, "y": 4, "width": 5, "height": 6, "label": "car"} and math.isnan(score)




def test_confidence_classes_as_a_list_or_a_semicolon_text() -> None:
    assert wants_confidence(["ufdl.joblauncher.objdet.confidence.Common"])
    assert wants_confidence("x.Other; ufdl.joblauncher.classify.confidence.TopScore")
    assert not wants_confidence("") and not wants_confidence(None) and not wants_confidence(["my.Own"])


def test_no_prediction_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(JobFailed, match=r"^predictions: out/ was not written$"):
        read_predictions(tmp_path / "out", "rois-csv", ["a.png"])
    with pytest.raises(JobFailed, match="unknown format 'xml'"):
        read_predictions(tmp_path, "xml", ["a.png"])
