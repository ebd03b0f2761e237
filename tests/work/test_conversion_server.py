"""ctx.dataset(options=...) end to end through the embedded server, one domain at a time: the
annotations read from the real routes, the layout the stock templates' dataset_options ask for,
the conversion cache, and the refusals as one-line JobFailed reasons."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tfrecord.reader import tfrecord_loader

from tests.conftest import StartServer
from tests.server.conftest import ADMIN, server_settings
from ufdl_node.api import JobContext, handler
from ufdl_node.errors import JobFailed
from ufdl_node.logs import get_logger
from ufdl_node.server import EmbeddedServer
from ufdl_node.work.server_access import SessionIO
from ufdl_node.work.wai_options import split_schedule

YOLO = ["to-yolo-od", "-o", ".", "--labels", "./labels.txt", "--labels-csv", "./labels.csv",
        "--split-names", "train", "test", "val", "--split-ratios", "70", "15", "15"]
COCO = ["to-coco-od", "--sort-categories", "--category-output-file", "labels.txt", "-o",
        "annotations.json", "--split-names", "train", "test", "val", "--split-ratios", "70", "15", "15"]
TF = ["to-tf-od", "-o", "data.tfrecords", "-p", "labels.pbtxt", "--split-names", "train", "test", "val",
      "--split-ratios", "70", "15", "15"]
COQUI = ["to-coqui-stt-sp", "-o", "samples.csv", "--split-names", "train", "test", "val",
         "--split-ratios", "70", "15", "15"]
MMCLS = ["write-labels", "-f", "csv-headless", "-o", "labels.txt", "to-subdir-ic", "-o", ".",
         "--split-names", "train", "test", "val", "--split-ratios", "70", "15", "15"]
TYPES = {"ic": "Image Classification", "od": "Object Detection", "sp": "Speech",
         "sc": "Spectrum Classification"}
PREFIX = {"ic": "/v1/classify/datasets", "od": "/v1/objdet/datasets", "sp": "/v1/speech/datasets",
          "sc": "/v1/spectra/datasets"}
CYCLE = split_schedule(["train", "test", "val"], [70, 15, 15])


@handler("conversion_e2e")
async def _nothing(ctx: JobContext) -> None:
    """The job these contexts belong to (never run)."""


def png(width: int, height: int, tag: int) -> bytes:
    header = struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height)
    return b"\x89PNG\r\n\x1a\n" + header + bytes([tag])


class Server:
    """The embedded server, an admin session to it, and job contexts that reach it."""

    def __init__(self, server: EmbeddedServer, session: aiohttp.ClientSession, token: str) -> None:
        self.url, self.session, self.token = server.url, session, token

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        async with self.session.request(method, self.url + path, headers=headers, **kw) as resp:
            assert resp.status in (200, 201), f"{method} {path}: {resp.status} {await resp.text()}"
            return await resp.json()

    async def dataset(self, domain: str, files: dict[str, bytes]) -> int:
        made = await self.call("POST", f"{PREFIX[domain]}/create", json={
            "name": f"conv-{domain}-{len(files)}", "project": 1, "licence": 1, "tags": ""})
        for name, data in files.items():
            await self.call("POST", f"/v1/datasets/{made['pk']}/files/{name}", data=data,
                            headers={"Content-Type": "application/data",
                                     "Content-Disposition": "attachment; filename=upload"})
        return int(made["pk"])

    def ctx(self, tmp_path: Path, domain: str, pk: int, job: str = "job") -> JobContext:
        server = self

        class IO:
            def report_progress(self, amount: float, data: dict[str, Any]) -> None: ...
            async def upload(self, name: str, type_: str, path: Path) -> None: ...
            async def download(self, path: str, dest: Path) -> Path: return dest
            def write_log(self, line: str) -> None: ...

            def server_io(self) -> SessionIO:
                async def auth() -> dict[str, str]:
                    return {"Authorization": f"Bearer {server.token}"}
                return SessionIO(server.session, server.url, auth)

        record = {"pk": 1, "name": "stock_train", "version": 1, "parameters": {}}
        value = {"value": pk, "type": f"PK<Dataset<Domain<'{TYPES[domain]}'>>>"}
        job_record = {"pk": 3, "template": record, "parameter_values": {}, "input_values": {"dataset": value}}
        return JobContext(job=job_record, template=record, spec=_nothing, work_dir=tmp_path / job,
                          cache_dir=tmp_path / "cache", io=IO(), cancel_event=asyncio.Event(),
                          logger=get_logger("test"))


@pytest.fixture
async def server(tmp_path: Path, embedded_servers: StartServer) -> AsyncIterator[Server]:
    started = await embedded_servers(server_settings(tmp_path / "server"))
    async with aiohttp.ClientSession() as session:
        async with session.post(started.url + "/v1/auth/obtain",
                                json={"username": ADMIN[0], "password": ADMIN[1]}) as resp:
            token = (await resp.json())["access"]
        yield Server(started, session, token)


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def box(x: int, y: int, w: int, h: int, label: str) -> dict[str, Any]:
    return {"x": x, "y": y, "width": w, "height": h, "label": label}


async def od_dataset(server: Server) -> int:
    images = {f"img{n}.png": png(100, 50, n) for n in range(5)}
    pk = await server.dataset("od", images)
    await server.call("POST", f"/v1/objdet/datasets/{pk}/annotations", json={
        name: {"format": "png", "dimensions": [100, 50],
               "annotations": [] if n == 4 else [box(10, 5, 20, 10, "dog" if n % 2 else "cat")]}
        for n, name in enumerate(images)})
    return pk


async def test_object_detection_to_yolo_coco_and_tfrecords(server: Server, tmp_path: Path) -> None:
    """The stock YOLOv5, MMDetection and TF object-detection defaults on one dataset."""
    pk = await od_dataset(server)
    yolo = await server.ctx(tmp_path, "od", pk, "yolo").dataset(options=YOLO)
    root = yolo.directory
    assert (root / "labels.txt").read_text() == "cat,dog"
    assert (root / "labels.csv").read_text() == "Index,Label\n0,cat\n1,dog"
    assert (root / f"images/{CYCLE[1]}/img1.png").read_bytes() == png(100, 50, 1)
    assert (root / f"labels/{CYCLE[1]}/img1.txt").read_text() == "1 0.2 0.2 0.2 0.2"
    assert not (root / f"labels/{CYCLE[4]}/img4.txt").exists() and tree(root) == list(yolo.files)

    coco = await server.ctx(tmp_path, "od", pk, "coco").dataset(options=COCO)
    train = json.loads((coco.directory / "train" / "annotations.json").read_text())
    assert [c["name"] for c in train["categories"]] == ["cat", "dog"]
    assert [i["file_name"] for i in train["images"]] == ["img0.png", "img1.png", "img2.png"]
    assert (coco.directory / "test" / "labels.txt").read_text() == "cat,dog"

    tf = await server.ctx(tmp_path, "od", pk, "tf").dataset(options=TF)
    records = list(tfrecord_loader(str(tf.directory / "train" / "data.tfrecords"), None, None))
    assert [r["image/filename"] for r in records] == [b"img0.png", b"img1.png", b"img2.png"]
    assert [list(r["image/object/class/label"]) for r in records] == [[1], [2], [1]]
    assert records[1]["image/encoded"] == png(100, 50, 1)


async def test_a_second_conversion_links_the_cached_tree(server: Server, tmp_path: Path) -> None:
    """Same dataset, same options: nothing downloaded, the finished tree from the conversion
    cache (its generated files shared, read-only); other options make a tree of their own."""
    pk = await od_dataset(server)
    first = await server.ctx(tmp_path, "od", pk, "one").dataset(options=YOLO)
    second = await server.ctx(tmp_path, "od", pk, "two").dataset(options=YOLO)
    assert first.downloaded == 5 and second.downloaded == 0 and first.files == second.files
    assert (second.directory / "labels.txt").samefile(first.directory / "labels.txt")
    assert (second.directory / "labels.txt").stat().st_mode & 0o222 == 0
    assert len(list((tmp_path / "cache" / "datasets" / "converted").iterdir())) == 1
    await server.ctx(tmp_path, "od", pk, "three").dataset(options=[*YOLO[:-3], "80", "10", "10"])
    assert len(list((tmp_path / "cache" / "datasets" / "converted").iterdir())) == 2


async def test_a_cached_tree_missing_a_file_is_made_again(server: Server, tmp_path: Path) -> None:
    """A conversion cache pruned by hand (a file of a tree gone): the tree is made again."""
    pk = await od_dataset(server)
    await server.ctx(tmp_path, "od", pk, "one").dataset(options=COCO)
    (cached,) = (tmp_path / "cache" / "datasets" / "converted").iterdir()
    (cached / "train" / "annotations.json").unlink()
    again = await server.ctx(tmp_path, "od", pk, "two").dataset(options=COCO)
    assert json.loads((again.directory / "train" / "annotations.json").read_text())["images"]
    assert (cached / "train" / "annotations.json").is_file()


async def test_speech_to_coqui_stt(server: Server, tmp_path: Path) -> None:
    """The stock Coqui STT train defaults: per split the audio and samples.csv with sizes."""
    audio = {f"a{n}.wav": b"RIFF" + b"-" * n for n in range(4)}
    pk = await server.dataset("sp", audio)
    for n, name in enumerate(audio):
        await server.call("POST", f"/v1/speech/datasets/{pk}/transcriptions/{name}",
                          json={"transcription": f"number {n}"})
    ds = await server.ctx(tmp_path, "sp", pk).dataset(options=COQUI)
    assert (ds.directory / "train" / "samples.csv").read_text() == (
        "wav_filename,wav_filesize,transcript\na0.wav,4,number 0\na1.wav,5,number 1\na2.wav,6,number 2\n")
    assert tree(ds.directory) == ["test/a3.wav", "test/samples.csv", "train/a0.wav", "train/a1.wav",
                                  "train/a2.wav", "train/samples.csv"]


async def test_image_classification_to_the_mmclassification_layout(server: Server, tmp_path: Path) -> None:
    """The stock MMClassification defaults: labels.txt and <split>/<label>/<image>."""
    pk = await server.dataset("ic", {"a.jpg": b"A", "b.jpg": b"B"})
    await server.call("POST", f"/v1/classify/datasets/{pk}/categories",
                      json={"a.jpg": ["cat"], "b.jpg": ["dog"]})
    ds = await server.ctx(tmp_path, "ic", pk).dataset(options=MMCLS)
    assert tree(ds.directory) == ["labels.txt", f"{CYCLE[0]}/cat/a.jpg", f"{CYCLE[1]}/dog/b.jpg"]


async def test_spectrum_classification_to_subdirectories(server: Server, tmp_path: Path) -> None:
    """to-subdir-sc: each spectrum in <split>/<category>/, the categories from the spectra app."""
    pk = await server.dataset("sc", {"a.spec": b"1 2", "b.spec": b"3 4"})
    await server.call("POST", f"/v1/spectra/datasets/{pk}/categories",
                      json={"a.spec": ["oil"], "b.spec": ["water"]})
    ds = await server.ctx(tmp_path, "sc", pk).dataset(options=["to-subdir-sc", "-o", "data", "--split-names",
                                                                "train", "test", "--split-ratios", "1", "1"])
    assert tree(ds.directory) == ["data/test/water/b.spec", "data/train/oil/a.spec"]
    assert ds.labels() == {"a.spec": "oil", "b.spec": "water"}


async def test_refusals_name_the_template_and_the_step(server: Server, tmp_path: Path) -> None:
    """An IC writer on an OD dataset, and an option wai.annotations' writer does not have: one
    line naming the template and the step; nothing fetched, nothing written."""
    pk = await od_dataset(server)
    ctx = server.ctx(tmp_path, "od", pk)
    with pytest.raises(JobFailed) as info:
        await ctx.dataset(options=MMCLS, options_name="dataset_options")
    assert info.value.reason.startswith("template 'stock_train', dataset step: dataset_options: stage "
                                        "'to-subdir-ic' writes another domain than the dataset's "
                                        "(Object Detection); the node writes to-images-od, to-yolo-od")
    with pytest.raises(JobFailed, match=r"^template 'stock_train', dataset step: options: option "
                                        r"'--shards' of stage to-tf-od is not supported"):
        await ctx.dataset(options=[*TF, "--shards", "x.tfrecords"])
    assert tree(tmp_path / "job") == [] and not (tmp_path / "cache" / "datasets" / "sha256").exists()
