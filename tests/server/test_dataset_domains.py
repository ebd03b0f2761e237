"""The domain apps' dataset routes on the embedded server: spectrum-classification categories,
object-detection file types and annotations, speech transcriptions, file metadata, clear, and a
database made before them (migration 4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.server.store import MIGRATIONS

from .conftest import Api, MakeApi, MakeServer
from .test_datasets import PREFIXES, add_file, create

OD, SP, SC = PREFIXES["od"], PREFIXES["sp"], PREFIXES["sc"]
BOX = {"x": 1, "y": 2, "width": 3, "height": 4, "label": "dog"}


async def with_files(api: Api, domain: str, names: list[str], as_: str = "worker") -> dict[str, Any]:
    ds = await create(api, as_=as_, domain=domain)
    for name in names:
        assert (await add_file(api, ds, name, name.encode(), as_=as_)).status == 200
    return ds


# -- spectrum classification ---------------------------------------------------------------


async def test_spectra_datasets_take_categories_as_image_classification_does(api: Api) -> None:
    """/v1/spectra/datasets: create shows "Spectrum Classification"; PATCH, POST and GET of
    categories answer as the classify routes do (the backend's spectrum CategoriesViewSet)."""
    ds = await with_files(api, "sc", ["a.spec", "b.spec"])
    assert ds["domain"] == "Spectrum Classification"
    path = f"{SC}/{ds['pk']}/categories"
    added = await api.ok("PATCH", path, json={"method": "add", "images": ["a.spec", "b.spec"],
                                              "categories": ["oil"]})
    assert added == {"a.spec": ["oil"], "b.spec": ["oil"]}
    assert await api.ok("POST", path, json={"b.spec": ["water"]}) == {"b.spec": ["water"]}
    assert await api.ok("GET", path) == {"a.spec": ["oil"], "b.spec": ["water"]}
    assert await api.ok("GET", f"{path}/b.spec") == ["water"]
    assert (await api.call("GET", f"{PREFIXES['ic']}/{ds['pk']}/categories")).status == 404
    assert (await api.call("POST", path, json={"nope.spec": ["oil"]})).status == 400
    listed = await api.ok("POST", f"{SC}/list", json={})
    assert ds["pk"] in [d["pk"] for d in listed]
    assert {d["domain"] for d in listed} == {"Spectrum Classification"}


# -- object detection ------------------------------------------------------------------------


async def test_od_file_type_and_annotations(api: Api) -> None:
    """A file type once, then annotations: POST replaces, PATCH appends, GET reads with the
    default prefix; labels and prefixes list what is used."""
    ds = await with_files(api, "od", ["a.jpg", "b.jpg"])
    base = f"{OD}/{ds['pk']}"
    assert (await api.call("POST", f"{base}/annotations/a.jpg", json=[BOX])).status == 400
    assert await api.ok("POST", f"{base}/file-type/a.jpg", json={"format": "jpg", "dimensions": [8, 6]}) == {}
    assert await api.ok("POST", f"{base}/annotations/a.jpg", json=[BOX]) == {}
    poly = dict(BOX, label="cat", prefix="Thing", polygon={"points": [[1, 2], [3, 4], [1, 4]]})
    assert await api.ok("PATCH", f"{base}/annotations/a.jpg", json=[poly]) == {}
    assert await api.ok("GET", f"{base}/annotations/a.jpg") == [dict(BOX, prefix="Object"), poly]
    assert await api.ok("GET", f"{base}/labels") == ["cat", "dog"]
    assert await api.ok("GET", f"{base}/prefixes") == ["Object", "Thing"]
    assert await api.ok("GET", f"{base}/annotations") == {
        "a.jpg": {"format": "jpg", "dimensions": [8, 6], "annotations": [dict(BOX, prefix="Object"), poly]}}


@pytest.mark.parametrize("body", [[dict(BOX, x=1.5)], [dict(BOX, colour="red")], [dict(BOX, prefix="")],
                                  [dict(BOX, polygon={"points": [[1, 2]]})], {"a.jpg": [BOX]}])
async def test_od_bad_annotations_are_400(api: Api, body: Any) -> None:
    """Fractions, unknown keys, a blank prefix, a polygon of under 3 points, a body not a list: 400."""
    ds = await with_files(api, "od", ["a.jpg"])
    base = f"{OD}/{ds['pk']}"
    await api.ok("POST", f"{base}/file-type/a.jpg", json={"format": "jpg", "dimensions": [8, 6]})
    reply = await api.call("POST", f"{base}/annotations/a.jpg", json=body)
    assert reply.status == 400 and reply.json["detail"], reply
    assert await api.ok("GET", f"{base}/annotations/a.jpg") == []


async def test_od_all_files_need_a_type_for_each(api: Api) -> None:
    """Setting every file's annotations for a file without a type, and none given, is a 400 that
    changes nothing."""
    ds = await with_files(api, "od", ["a.jpg", "b.jpg"])
    base = f"{OD}/{ds['pk']}"
    await api.ok("POST", f"{base}/annotations", json={
        "a.jpg": {"format": "jpg", "dimensions": [4, 4], "annotations": [BOX]}})
    reply = await api.call("POST", f"{base}/annotations", json={
        "a.jpg": {"annotations": []}, "b.jpg": {"annotations": [BOX]}})
    assert reply.status == 400 and "b.jpg" in reply.json["detail"], reply
    assert await api.ok("GET", f"{base}/annotations/a.jpg") == [dict(BOX, prefix="Object")]


async def test_another_user_may_not_annotate(api: Api) -> None:
    """Annotations and transcriptions are changes: the creator's (or staff's), 403 for another user."""
    od = await with_files(api, "od", ["a.jpg"], as_="admin")
    sp = await with_files(api, "sp", ["a.wav"], as_="admin")
    reply = await api.call("POST", f"{OD}/{od['pk']}/file-type/a.jpg",
                           json={"format": "jpg", "dimensions": [1, 1]})
    assert reply.status == 403, reply
    reply = await api.call("POST", f"{SP}/{sp['pk']}/transcriptions/a.wav", json={"transcription": "x"})
    assert reply.status == 403, reply
    assert await api.ok("GET", f"{OD}/{od['pk']}/annotations") == {}


# -- speech, metadata, clear ---------------------------------------------------------------------


async def test_clear_empties_every_kind_of_annotation(api: Api) -> None:
    """Clear on a speech dataset drops its transcriptions and metadata; the files stay."""
    ds = await with_files(api, "sp", ["a.wav", "b.wav"])
    path = f"{SP}/{ds['pk']}/transcriptions"
    assert await api.ok("POST", f"{path}/a.wav", json={"transcription": "hi"}) == {"transcription": "hi"}
    await api.ok("POST", f"{SP}/{ds['pk']}/metadata/b.wav", json={"metadata": "m"})
    assert await api.ok("GET", f"/v1/datasets/{ds['pk']}/metadata") == {"a.wav": "", "b.wav": "m"}
    cleared = await api.ok("DELETE", f"{SP}/{ds['pk']}/clear")
    assert sorted(cleared["files"]) == ["a.wav", "b.wav"]
    assert await api.ok("GET", path) == {}
    assert await api.ok("GET", f"/v1/datasets/{ds['pk']}/metadata") == {"a.wav": "", "b.wav": ""}


@pytest.mark.parametrize("body", [{"metadata": 3}, {"meta": "x"}, ["x"]])
async def test_bad_metadata_is_400(api: Api, body: Any) -> None:
    ds = await with_files(api, "ic", ["a.png"])
    reply = await api.call("POST", f"/v1/datasets/{ds['pk']}/metadata/a.png", json=body)
    assert reply.status == 400 and reply.json["detail"], reply
    assert (await api.call("GET", f"/v1/datasets/{ds['pk']}/metadata/nope.png")).status == 400


# -- a database from before the domain apps --------------------------------------------------


def _version_3_database(data_dir: Path) -> None:
    """A data directory as the server left it at migration 3: an "ic" dataset without a project."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(data_dir / "ufdl.sqlite3")
    for script in MIGRATIONS[:3]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 3")
    db.execute("INSERT INTO domains (code, name) VALUES ('ic', 'Image Classification')")
    db.execute("""INSERT INTO datasets (name, version, description, project, licence, is_public, domain,
                  tags, creation_time) VALUES ('old', 1, '', NULL, NULL, 0, 'ic', '', '2024-01-01')""")
    db.execute("""INSERT INTO dataset_files (dataset, name, sha256, size, creation_time)
                  VALUES (1, 'a.png', 'x', 0, '2024-01-01')""")
    db.execute("INSERT INTO categories (file, category) VALUES (1, 'dog')")
    db.commit()
    db.close()


async def test_an_older_database_keeps_its_datasets(tmp_path: Path, make_server: MakeServer,
                                                    make_api: MakeApi) -> None:
    """Migration 4 keeps a dataset stored with its domain's code: shown by the domain's name, in the
    default project, previous_version -1, its categories on the classify route."""
    _version_3_database(tmp_path / "data")
    api = make_api(await make_server(tmp_path / "data"))
    record = await api.ok("GET", "/v1/datasets/1")
    assert (record["domain"], record["project"], record["previous_version"]) == \
        ("Image Classification", 1, -1), record
    assert await api.ok("GET", "/v1/classify/datasets/1/categories", as_="admin") == {"a.png": ["dog"]}
    assert await api.ok("GET", "/v1/datasets/1/metadata") == {"a.png": ""}
