"""Datasets as handlers use them: record, files, the archive download, image-classification categories (UFDL-API.md section 8).

Datasets are made through the image-classification app (`/v1/classify/datasets/create`), which both
servers offer, as the admin user. The real server wants a project and a licence on create:
set UFDL_DATASET_PROJECT (a project pk) and, if licence pk 1 will not do, UFDL_DATASET_LICENCE.
Without UFDL_DATASET_PROJECT these tests are skipped in lenient mode (UFDL_STRICT=0); in strict
mode they take project 1 and licence 1, which the embedded server seeds. Each test soft-deletes the datasets it made (`DELETE /v1/datasets/{pk}`),
named `ufdl-conformance-<run>-<n>`, when it ends.
"""
import email.message
import functools
import io
import json
import os
import tarfile
import uuid
import zipfile

import pytest

from _ufdl import error, expect, need_ordinary_worker, ok, seg, sha256, ufdl_test

IC = "/v1/classify/datasets"
RECORD_FIELDS = {"pk", "name", "version", "previous_version", "description", "project", "licence",
                 "is_public", "domain", "tags", "creator", "creation_time", "deletion_time", "files"}
# No empty file: the real server cannot store one (test_an_empty_file_is_refused).
FILES = {"dog1.png": b"\x89PNG not really a dog", "cat 2.jpg": bytes(range(256)) * 20, "one.txt": b"1"}


def deletes_datasets(fn):
    """Soft-delete the datasets the test made when it ends (best effort), as the suite does with jobs."""
    @functools.wraps(fn)
    async def run(api, **kwargs):
        try:
            await fn(api, **kwargs)
        finally:
            for pk in getattr(api, "datasets_made", []):
                try:
                    await api.call("DELETE", f"/v1/datasets/{pk}", as_="admin")
                except Exception:  # cleanup is best effort
                    pass
    return run


async def create_dataset(api, **fields):
    """A new image-classification dataset owned by the admin user (deleted after the test)."""
    body = {"name": f"ufdl-conformance-{api.env.run_id}-{uuid.uuid4().hex[:8]}", "description": "conformance",
            "is_public": False, "tags": ""}
    project = os.environ.get("UFDL_DATASET_PROJECT", "").strip()
    if project:
        body.update(project=int(project), licence=int(os.environ.get("UFDL_DATASET_LICENCE", "1")))
    elif not api.cfg.strict:
        pytest.skip("the real server needs a project for a dataset: set UFDL_DATASET_PROJECT")
    else:  # the embedded server seeds project 1 ("default") and licence 1 ("Apache 2.0")
        body.update(project=1, licence=1)
    body.update(fields)
    dataset = ok(await api.call("POST", f"{IC}/create", as_="admin", json=body), 201)
    api.__dict__.setdefault("datasets_made", []).append(dataset["pk"])
    return dataset


async def add_file(api, dataset, name, data, *, as_="admin", filename=True):
    headers = {"Content-Type": "application/data"}
    if filename:
        headers["Content-Disposition"] = f"attachment; filename={name}"
    return await api.call("POST", f"/v1/datasets/{dataset['pk']}/files/{seg(name)}", as_=as_, data=data,
                          headers=headers)


async def dataset_with(api, files):
    dataset = await create_dataset(api)
    for name, data in files.items():
        ok(await add_file(api, dataset, name, data))
    return dataset


async def download(api, dataset, body=None):
    path = f"/v1/datasets/{dataset['pk']}/download"
    if body is None:
        return await api.call("POST", path, as_="admin")
    return await api.call("POST", path, as_="admin", json=body)


def attachment_name(reply):
    message = email.message.Message()
    message["content-disposition"] = reply.headers.get("Content-Disposition", "")
    return message.get_filename()


@ufdl_test
@deletes_datasets
async def test_create_answers_201_with_the_dataset_record(api):
    """Create answers 201 with the real server's record: domain "Image Classification" (the domain's
    name, as parity/test_domain_datasets.py pins it), version 1, no files yet."""
    dataset = await create_dataset(api)
    assert RECORD_FIELDS <= set(dataset), f"record lacks {RECORD_FIELDS - set(dataset)}: {dataset}"
    assert (dataset["domain"], dataset["version"], dataset["files"]) == ("Image Classification", 1, {}), dataset


@ufdl_test
@deletes_datasets
async def test_record_lists_files_with_their_sha256(api):
    """GET /v1/datasets/{pk} shows files as {name: sha256}, and the list call finds the dataset by name."""
    dataset = await dataset_with(api, FILES)
    got = ok(await api.call("GET", f"/v1/datasets/{dataset['pk']}", as_="admin"))
    assert got["files"] == {name: sha256(data) for name, data in FILES.items()}, got["files"]
    spec = {"expressions": [{"type": "exact", "field": "name", "value": dataset["name"]}]}
    assert [d["pk"] for d in ok(await api.list("datasets", spec))] == [dataset["pk"]]


@ufdl_test
@deletes_datasets
async def test_a_file_downloads_byte_for_byte(api):
    """GET /v1/datasets/{pk}/files/{name} returns exactly the bytes that were added."""
    dataset = await dataset_with(api, FILES)
    for name, data in FILES.items():
        reply = expect(await api.call("GET", f"/v1/datasets/{dataset['pk']}/files/{seg(name)}", as_="admin"),
                       200)
        assert reply.body == data, f"{name}: {len(reply.body)} bytes back for {len(data)}"


@ufdl_test
@deletes_datasets
async def test_adding_a_file_without_a_filename_is_400(api):
    """Adding a file without a Content-Disposition filename answers 400 and adds nothing."""
    dataset = await create_dataset(api)
    error(await add_file(api, dataset, "a.png", b"x", filename=False), 400, api.cfg)
    assert ok(await api.call("GET", f"/v1/datasets/{dataset['pk']}", as_="admin"))["files"] == {}


@ufdl_test
@deletes_datasets
async def test_the_zip_archive_holds_exactly_the_files(api):
    """POST .../download (no body: zip) answers application/data, <name>.v<version>.zip, the files at the top level."""
    dataset = await dataset_with(api, FILES)
    reply = expect(await download(api, dataset), 200)
    assert reply.headers.get("Content-Type", "").startswith("application/data"), reply.headers
    assert attachment_name(reply) == f"{dataset['name']}.v1.zip", reply.headers
    with zipfile.ZipFile(io.BytesIO(reply.body)) as archive:
        got = {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    assert got == FILES, sorted(got)


@ufdl_test
@deletes_datasets
async def test_the_tar_gz_archive_holds_exactly_the_files(api):
    """filetype tar.gz answers a gzipped tar with the files at the top level, named .v<version>.tar.gz."""
    dataset = await dataset_with(api, FILES)
    reply = expect(await download(api, dataset, {"filetype": "tar.gz"}), 200)
    assert attachment_name(reply) == f"{dataset['name']}.v1.tar.gz", reply.headers
    with tarfile.open(fileobj=io.BytesIO(reply.body), mode="r:gz") as archive:
        got = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    assert got == FILES, sorted(got)


@ufdl_test
@deletes_datasets
async def test_adding_an_empty_file_is_refused(api):
    """A 0-byte file is not stored: 400 JSON (strict); the real server answers 500 (its parser gives
    the view no file: KeyError 'file'). Nothing is added either way."""
    dataset = await create_dataset(api)
    reply = await add_file(api, dataset, "empty.txt", b"")
    if api.cfg.strict:
        error(reply, 400, api.cfg)
    else:
        expect(reply, 400, 500)
    assert ok(await api.call("GET", f"/v1/datasets/{dataset['pk']}", as_="admin"))["files"] == {}


@ufdl_test
@deletes_datasets
async def test_an_unknown_filetype_is_415(api):
    """A download with filetype "rar" answers 415 with a JSON detail (strict: as JSON; the real
    server sends that JSON as application/data)."""
    reply = await download(api, await create_dataset(api), {"filetype": "rar"})
    if api.cfg.strict:
        error(reply, 415, api.cfg)
    else:
        expect(reply, 415)
        assert "detail" in json.loads(reply.body), reply


@ufdl_test
@deletes_datasets
async def test_get_on_the_download_is_refused(api):
    """GET .../download is not the download: 405 JSON (strict); the real server answers 500."""
    reply = await api.call("GET", f"/v1/datasets/{(await create_dataset(api))['pk']}/download", as_="admin")
    if api.cfg.strict:
        error(reply, 405, api.cfg)
    else:
        expect(reply, 405, 500)


@ufdl_test
@deletes_datasets
async def test_categories_round_trip(api):
    """PATCH .../categories add then remove answers the changes made; GET shows {file: [categories]}."""
    dataset = await dataset_with(api, {"a.png": b"a", "b.png": b"b"})
    path = f"{IC}/{dataset['pk']}/categories"
    assert ok(await api.call("GET", path, as_="admin")) == {}
    added = ok(await api.call("PATCH", path, as_="admin", json={
        "method": "add", "images": ["a.png", "b.png"], "categories": ["dog"]}))
    assert added == {"a.png": ["dog"], "b.png": ["dog"]}, added
    removed = ok(await api.call("PATCH", path, as_="admin", json={
        "method": "remove", "images": ["b.png"], "categories": ["dog"]}))
    assert removed == {"b.png": ["dog"]}, removed
    assert ok(await api.call("GET", path, as_="admin")) == {"a.png": ["dog"]}


@ufdl_test
@deletes_datasets
async def test_clear_removes_the_categories_and_keeps_the_files(api):
    """DELETE /v1/datasets/{pk}/clear answers the record with its files; the categories are gone."""
    dataset = await dataset_with(api, {"a.png": b"a"})
    path = f"{IC}/{dataset['pk']}/categories"
    ok(await api.call("PATCH", path, as_="admin", json={
        "method": "add", "images": ["a.png"], "categories": ["dog"]}))
    cleared = ok(await api.call("DELETE", f"/v1/datasets/{dataset['pk']}/clear", as_="admin"))
    assert set(cleared["files"]) == {"a.png"}, cleared
    assert ok(await api.call("GET", path, as_="admin")) == {}


@ufdl_test
@deletes_datasets
async def test_a_category_for_an_unknown_image_is_400(api):
    """Adding a category to an image the dataset does not have answers 400."""
    dataset = await dataset_with(api, {"a.png": b"a"})
    error(await api.call("PATCH", f"{IC}/{dataset['pk']}/categories", as_="admin", json={
        "method": "add", "images": ["nope.png"], "categories": ["dog"]}), 400, api.cfg)


@ufdl_test
@deletes_datasets
async def test_a_missing_dataset_is_404(api):
    """GET of a dataset pk that does not exist answers 404 JSON."""
    error(await api.call("GET", "/v1/datasets/987654321", as_="admin"), 404, api.cfg)


@ufdl_test
@deletes_datasets
async def test_another_user_may_not_add_files(api):
    """An ordinary user adding a file to the admin's private dataset gets 403, and the dataset is unchanged."""
    need_ordinary_worker(api.cfg)
    dataset = await create_dataset(api)
    error(await add_file(api, dataset, "a.png", b"x", as_="worker"), 403, api.cfg)
    assert ok(await api.call("GET", f"/v1/datasets/{dataset['pk']}", as_="admin"))["files"] == {}
