"""`ufdl-node dataset add` for every domain it takes, and its refusals, against the embedded
server on loopback (real processes): object detection (COCO, YOLO), speech, spectra, project,
licence, tags and visibility; bad folders and options leave nothing behind."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.client import UfdlClient
from ufdl_node.server import EmbeddedServer

from ..handlers.images import image_folder, png
from .conftest import ADMIN_PW
from .test_dataset import NO_FRONTEND, TRAIN, cli, import_templates, read, submit


async def datasets(server: EmbeddedServer, *, deleted: bool = False) -> list[dict[str, Any]]:
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        found: list[dict[str, Any]] = await admin.request("POST", "/v1/datasets/list",
                                                          json={"include_inactive": deleted})
        return found


async def added(server: EmbeddedServer, *args: str) -> int:
    code, out, err = await cli(server, "dataset", "add", *args)
    assert code == 0, err
    return int(out.strip())


def images(folder: Path, names: dict[str, int]) -> Path:
    """PNGs of the given sizes in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in names.items():
        (folder / name).write_bytes(png(1, 2, 3, size))
    return folder


async def test_an_ic_dataset_gets_project_licence_tags_and_visibility(server, tmp_path):
    """--licence by name, --tags and --public reach the record; the project is the server's first."""
    folder = image_folder(tmp_path / "pets", {"dog": 1, "cat": 1})
    pk = await added(server, str(folder), "--licence", "mit", "--tags", "pets,test", "--public")
    record = await read(server, f"/v1/classify/datasets/{pk}")
    assert (record["project"], record["licence"], record["tags"], record["is_public"]) == \
        (1, 2, "pets,test", True)
    assert await read(server, f"/v1/classify/datasets/{pk}/categories") == \
        {"cat0.png": ["cat"], "dog0.png": ["dog"]}


async def test_an_od_folder_with_a_coco_file(server, tmp_path):
    """Images and a COCO file: every image's format and size from its header, the boxes and
    polygons under their category names; the COCO file is no dataset file."""
    folder = images(tmp_path / "boxes", {"a.png": 4, "b.png": 6})
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "categories": [{"id": 7, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0.4, 1, 2, 2.6],
                             "segmentation": [[0, 1, 2, 1, 2, 3]]}]}
    (folder / "annotations.json").write_text(json.dumps(coco))
    pk = await added(server, str(folder), "--domain", "od")
    assert sorted((await read(server, f"/v1/datasets/{pk}"))["files"]) == ["a.png", "b.png"]
    box = {"x": 0, "y": 1, "width": 2, "height": 3, "label": "dog", "prefix": "Object",
           "polygon": {"points": [[0, 1], [2, 1], [2, 3]]}}
    assert await read(server, f"/v1/objdet/datasets/{pk}/annotations") == {
        "a.png": {"format": "png", "dimensions": [4, 4], "annotations": [box]},
        "b.png": {"format": "png", "dimensions": [6, 6], "annotations": []}}


async def test_an_od_folder_with_yolo_files(server, tmp_path):
    """YOLO .txt files beside the images, label names in classes.txt: boxes in pixels."""
    folder = images(tmp_path / "yolo", {"a.png": 10, "b.png": 10})
    (folder / "classes.txt").write_text("cat\ndog\n")
    (folder / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.2 0.2\n")
    pk = await added(server, str(folder), "--domain", "Object Detection")
    assert await read(server, f"/v1/objdet/datasets/{pk}/annotations/a.png") == [
        {"x": 4, "y": 3, "width": 2, "height": 4, "label": "dog", "prefix": "Object"},
        {"x": 0, "y": 0, "width": 2, "height": 2, "label": "cat", "prefix": "Object"}]
    assert await read(server, f"/v1/objdet/datasets/{pk}/labels") == ["cat", "dog"]


async def test_a_speech_folder_with_its_transcriptions(server, tmp_path):
    """Audio files and transcriptions.csv: each file's transcription; the CSV is no dataset file."""
    folder = tmp_path / "speech"
    folder.mkdir()
    for name in ("a.wav", "b.wav"):
        (folder / name).write_bytes(b"RIFF " + name.encode())
    (folder / "transcriptions.csv").write_text('file,transcription\na.wav,hello there\nb.wav,"bye, now"\n')
    pk = await added(server, str(folder), "--domain", "sp")
    assert sorted((await read(server, f"/v1/datasets/{pk}"))["files"]) == ["a.wav", "b.wav"]
    assert await read(server, f"/v1/speech/datasets/{pk}/transcriptions") == {
        "a.wav": {"transcription": "hello there"}, "b.wav": {"transcription": "bye, now"}}


async def test_a_spectra_folder_per_label(server, tmp_path):
    """Spectrum classification: a sub-folder per label, as for images."""
    folder = tmp_path / "spectra"
    for label in ("oil", "water"):
        (folder / label).mkdir(parents=True)
        (folder / label / f"{label}.spec").write_text("1 2 3")
    pk = await added(server, str(folder), "--domain", "sc")
    assert (await read(server, f"/v1/datasets/{pk}"))["domain"] == "Spectrum Classification"
    assert await read(server, f"/v1/spectra/datasets/{pk}/categories") == {"oil.spec": ["oil"],
                                                                           "water.spec": ["water"]}


def _unlabelled(folder: Path) -> list[str]:
    image_folder(folder, {"dog": 1})
    (folder / "stray.png").write_bytes(png(0, 0, 0))
    return ["--domain", "ic"]


def _csv_names_a_missing_file(folder: Path) -> list[str]:
    images(folder, {"a.png": 2})
    (folder / "labels.csv").write_text("a.png,dog\nnope.png,cat\n")
    return []


def _coco_names_a_missing_image(folder: Path) -> list[str]:
    images(folder, {"a.png": 2})
    (folder / "coco.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "gone.png"}],
                                                  "annotations": [], "categories": []}))
    return ["--domain", "od"]


def _transcription_of_a_missing_file(folder: Path) -> list[str]:
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"RIFF")
    (folder / "transcriptions.csv").write_text("a.wav,hi\nb.wav,ho\n")
    return ["--domain", "sp"]


def _unknown_domain(folder: Path) -> list[str]:
    image_folder(folder, {"dog": 1})
    return ["--domain", "xx"]


def _unknown_licence(folder: Path) -> list[str]:
    image_folder(folder, {"dog": 1})
    return ["--licence", "WTFPL"]


def _empty_file(folder: Path) -> list[str]:
    image_folder(folder, {"dog": 1})
    (folder / "dog" / "blank.png").write_bytes(b"")
    return []


BAD = {
    "empty": (_empty_file, "1 empty file(s) (first: 'blank.png'); a UFDL server cannot store an empty file"),
    "unlabelled": (_unlabelled, "1 file(s) without a label: put each file in a sub-folder named by its "
                                "label, or list it in labels.csv (first: stray.png)"),
    "csv": (_csv_names_a_missing_file, "labels.csv:2: no file 'nope.png' in the folder"),
    "coco": (_coco_names_a_missing_image, "coco.json: image 'gone.png' is not in the folder"),
    "speech": (_transcription_of_a_missing_file, "transcriptions.csv:2: no file 'b.wav' in the folder"),
    "domain": (_unknown_domain, "--domain 'xx': not a domain dataset add takes"),
    "licence": (_unknown_licence, "--licence 'WTFPL': no such licence on the server (known: Apache 2.0, MIT"),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_input_is_one_line_and_exit_2_with_nothing_made(server, tmp_path, case):
    """Each bad folder or option: exit 2, one line on stderr naming the problem, no dataset made."""
    make, message = BAD[case]
    folder = tmp_path / "data"
    args = make(folder)
    code, out, err = await cli(server, "dataset", "add", str(folder), *args)
    assert (code, out) == (2, ""), err
    assert err.startswith("ufdl-node: dataset: ") and err.count("\n") == 1 and message in err, err
    assert await datasets(server, deleted=True) == []


async def test_a_refusal_after_the_create_deletes_the_dataset(server, tmp_path):
    """A box the server refuses (an empty label) fails the command with one line (exit 1) and
    soft-deletes the dataset it had made: no active dataset is left."""
    folder = images(tmp_path / "boxes", {"a.png": 4})
    (folder / "coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": ""}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}))
    code, out, err = await cli(server, "dataset", "add", str(folder), "--domain", "od")
    assert (code, out) == (1, ""), err
    assert err.startswith("ufdl-node: dataset: the server refused the dataset: ") and err.count("\n") == 1
    assert await datasets(server) == []
    [gone] = await datasets(server, deleted=True)
    assert gone["deletion_time"] is not None
    # The deleted dataset keeps its name and version: a retry with the box fixed takes the next.
    coco = folder / "coco.json"
    coco.write_text(coco.read_text().replace('"name": ""', '"name": "dog"'))
    pk = await added(server, str(folder), "--domain", "od")
    assert (await read(server, f"/v1/datasets/{pk}"))["version"] == gone["version"] + 1


async def test_a_server_without_a_project_is_one_line_naming_what_it_needs(server, tmp_path):
    """With no project on the server (here: the seeded one deleted) and no --project: exit 2, one
    line saying to create a project or pass --project; nothing made. With --project it goes."""
    db = sqlite3.connect(Path(server.settings.data_dir) / "ufdl.sqlite3")
    with db:
        db.execute("UPDATE projects SET deletion_time = '2024-01-01T00:00:00.000000+00:00'")
    db.close()
    folder = image_folder(tmp_path / "pets", {"dog": 1})
    code, out, err = await cli(server, "dataset", "add", str(folder))
    assert (code, out) == (2, "")
    assert err == ("ufdl-node: dataset: the server has no project to put the dataset in: create a "
                   "project first or pass --project PK\n")
    assert await datasets(server, deleted=True) == []
    code, out, err = await cli(server, "dataset", "add", str(folder), "--project", "7")
    assert code == 1 and "project" in err and err.count("\n") == 1, err


async def test_submit_takes_a_folder_of_unlabelled_images(server, tmp_path):
    """--input dataset=DIR of a job takes images without labels (a Predict job's may have none):
    the dataset is made with its files and no categories, where dataset add refuses the folder."""
    await import_templates(server)
    folder = images(tmp_path / "new", {"a.png": 2, "b.png": 2})
    assert (await cli(server, "dataset", "add", str(folder)))[0] == 2
    job = await submit(server, TRAIN, "--input", f"dataset={folder}", *NO_FRONTEND)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        pk = (await admin.get_job(job))["input_values"]["dataset"]["value"]
    assert sorted((await read(server, f"/v1/datasets/{pk}"))["files"]) == ["a.png", "b.png"]
    assert await read(server, f"/v1/classify/datasets/{pk}/categories") == {}
