"""Datasets on the embedded server: records, files, the streamed archive, permissions, categories."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import threading
import tracemalloc
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.server import EmbeddedServer
from ufdl_node.server.common import WHOLE_FILE_BYTES

from .conftest import Api, MakeApi, MakeServer, Reply, seg

IC_TYPE = "PK<Dataset<Domain<'Image Classification'>>>"
TRAIN_TEMPLATE = {
    "name": "dataset-test-train", "version": 1, "description": "a Train template", "scope": "public",
    "licence": "Apache 2.0", "domain": "ic",
    "specific": {"job_type": "Train", "executor_class": "tests.Train", "required_packages": "",
                 "parameters": {}},
}


def unique(prefix: str = "ds") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# Each domain's create route, by the domain's code.
PREFIXES = {"ic": "/v1/classify/datasets", "od": "/v1/objdet/datasets", "sp": "/v1/speech/datasets",
            "sc": "/v1/spectra/datasets"}


def create_body(**fields: Any) -> dict[str, Any]:
    """A create body with the seeded project 1 ("default") and licence 1 ("Apache 2.0")."""
    return {"name": unique(), "project": 1, "licence": 1, "tags": "", **fields}


async def create(api: Api, as_: str = "worker", domain: str = "ic", **fields: Any) -> dict[str, Any]:
    """A new dataset made through its domain's create route, as the web UI makes it."""
    return await api.ok("POST", f"{PREFIXES[domain]}/create", 201, as_=as_,  # type: ignore[no-any-return]
                        json=create_body(**fields))


async def add_file(api: Api, dataset: dict[str, Any], name: str, data: Any, *, as_: str = "worker",
                   filename: str | None = "upload", node: Any = None) -> Reply:
    headers = {"Content-Type": "application/data"}
    if filename is not None:
        headers["Content-Disposition"] = f"attachment; filename={filename}"
    return await api.call("POST", f"/v1/datasets/{dataset['pk']}/files/{seg(name)}", as_=as_, data=data,
                          headers=headers, node=node)


async def dataset_with(api: Api, files: dict[str, bytes], **fields: Any) -> dict[str, Any]:
    dataset = await create(api, **fields)
    for name, data in files.items():
        reply = await add_file(api, dataset, name, data)
        assert reply.status == 200, reply
    return dataset


async def download(api: Api, dataset: dict[str, Any], body: Any = None, *, as_: str = "worker") -> Reply:
    if body is None:
        return await api.call("POST", f"/v1/datasets/{dataset['pk']}/download", as_=as_)
    return await api.call("POST", f"/v1/datasets/{dataset['pk']}/download", as_=as_, json=body)


def stored(server: EmbeddedServer) -> list[str]:
    return sorted(p.name for p in (Path(server.settings.data_dir) / "datasets").iterdir())


FILES = {"dog1.png": b"\x89PNG dog one", "cat 2.jpg": os.urandom(5000), "one.txt": b"1"}


# -- records ------------------------------------------------------------------------------------


async def test_create_answers_201_with_the_real_servers_fields(api: Api) -> None:
    """Create answers 201 with every field of the real server's record, files empty, owned by the caller."""
    ds = await create(api, description="d", tags="a,b", licence=2, is_public=True)
    assert set(ds) == {"pk", "name", "version", "previous_version", "description", "project", "licence",
                       "is_public", "domain", "tags", "creator", "creation_time", "deletion_time", "files"}
    assert (ds["version"], ds["previous_version"], ds["domain"], ds["files"], ds["is_public"], ds["tags"]) \
        == (1, -1, "Image Classification", {}, True, "a,b")
    assert (ds["licence"], ds["project"], ds["deletion_time"]) == (2, 1, None)


async def test_get_lists_each_file_with_its_sha256(api: Api) -> None:
    """GET /v1/datasets/{pk} shows files as {name: sha256 of the bytes}."""
    ds = await dataset_with(api, FILES)
    got = await api.ok("GET", f"/v1/datasets/{ds['pk']}")
    assert got["files"] == {n: hashlib.sha256(b).hexdigest() for n, b in FILES.items()}


async def test_list_takes_a_filter_spec(api: Api) -> None:
    """POST /v1/datasets/list filters with the same specs as the other lists."""
    ds = await create(api)
    await create(api)
    found = await api.ok("POST", "/v1/datasets/list",
                         json={"expressions": [{"type": "exact", "field": "name", "value": ds["name"]}]})
    assert [d["pk"] for d in found] == [ds["pk"]]


async def test_the_classify_list_shows_image_classification_datasets_only(api: Api) -> None:
    """/v1/classify/datasets/list leaves out datasets of other domains."""
    ic, od = await create(api), await create(api, domain="od")
    spec = {"expressions": [{"type": "compare", "field": "pk", "operator": ">=", "value": ic["pk"]}]}
    found = [d["pk"] for d in await api.ok("POST", "/v1/classify/datasets/list", json=spec)]
    assert ic["pk"] in found and od["pk"] not in found


@pytest.mark.parametrize(("body", "field"), [
    ({"name": ""}, "name"), ({"colour": "red"}, "colour"), ({"version": 0}, "version"),
    ({"licence": "Apache 2.0"}, "licence"), ({"licence": 999}, "licence"), ({"project": 999}, "project"),
    ({"project": "default"}, "project"), ({"is_public": "yes"}, "is_public"), ({"tags": 3}, "tags"),
    ({"name": "x" * 201}, "name"), ({"name": "a\x07b"}, "name"), ({"name": "two\nlines"}, "name")])
@pytest.mark.parametrize("route", ["/v1/datasets/create", "/v1/classify/datasets/create"])
async def test_a_bad_create_is_400(api: Api, body: dict[str, Any], field: str, route: str) -> None:
    """An unknown key, a licence or project by name or a pk that names none, a blank, long or
    control-laden name, version 0: 400 naming the field (DRF field errors) with a detail."""
    reply = await api.call("POST", route, json=create_body(**body))
    assert reply.status == 400 and reply.json["detail"] and field in reply.json, reply


@pytest.mark.parametrize("field", ["name", "project", "licence", "tags"])
async def test_a_create_without_a_required_field_is_400(api: Api, field: str) -> None:
    """name, project, licence and tags are required, as on the real server."""
    body = create_body()
    del body[field]
    reply = await api.call("POST", "/v1/objdet/datasets/create", json=body)
    assert reply.status == 400 and reply.json[field] == ["This field is required."], reply


async def test_the_core_create_makes_a_domainless_dataset(api: Api) -> None:
    """POST /v1/datasets/create ignores a domain in the body: the dataset has none, and no
    domain route serves it."""
    ds = await api.ok("POST", "/v1/datasets/create", 201, json=create_body(domain="ic"))
    assert ds["domain"] is None
    for prefix in PREFIXES.values():
        assert (await api.call("GET", f"{prefix}/{ds['pk']}")).status == 404


async def test_licences_and_projects_lists(api: Api) -> None:
    """licences/list and projects/list take filter specs; the seeded ones are there."""
    spec = {"expressions": [{"type": "exact", "field": "name", "value": "Apache 2.0"}]}
    [licence] = await api.ok("POST", "/v1/licences/list", json=spec)
    assert (licence["pk"], licence["url"]) == (1, "https://www.apache.org/licenses/LICENSE-2.0"), licence
    assert set(licence) == {"pk", "name", "url", "permissions", "conditions", "limitations", "domains"}
    projects = await api.ok("POST", "/v1/projects/list", json={})
    assert projects[0]["pk"] == 1 and projects[0]["name"] == "default", projects
    assert await api.ok("GET", "/v1/projects/1") == projects[0]


async def test_the_same_name_and_version_twice_is_400(api: Api) -> None:
    """A second dataset with the same name and version is 400; another version is fine."""
    ds = await create(api)
    again = await api.call("POST", "/v1/classify/datasets/create", json=create_body(name=ds["name"]))
    assert again.status == 400
    await create(api, name=ds["name"], version=2)


async def test_a_missing_dataset_is_404_json(api: Api) -> None:
    """Every dataset route answers 404 JSON for a pk that names no dataset."""
    for method, path in (("GET", "/v1/datasets/999999"), ("POST", "/v1/datasets/999999/download"),
                         ("GET", "/v1/datasets/999999/files/a.png"),
                         ("GET", "/v1/classify/datasets/999999/categories")):
        reply = await api.call(method, path)
        assert reply.status == 404 and reply.json["detail"], (method, path, reply)


# -- files ------------------------------------------------------------------------------------------


async def test_a_file_downloads_byte_for_byte(api: Api) -> None:
    """GET .../files/{name} returns exactly the bytes that were added."""
    ds = await dataset_with(api, FILES)
    for name, data in FILES.items():
        reply = await api.call("GET", f"/v1/datasets/{ds['pk']}/files/{seg(name)}")
        assert (reply.status, reply.body) == (200, data)


async def test_small_and_large_files_come_whole_with_the_same_headers(make_server: MakeServer,
                                                                      make_api: MakeApi) -> None:
    """A file up to WHOLE_FILE_BYTES is read whole, a larger one streamed: the same bytes,
    length, type and attachment name either way; bytes gone from disk are a 404 naming them."""
    server = await make_server()
    api = make_api(server)
    files = {"small.jpg": os.urandom(1000), "large.jpg": os.urandom(WHOLE_FILE_BYTES + 1)}
    ds = await create(api)
    for name, data in files.items():
        assert (await add_file(api, ds, name, io.BytesIO(data))).status == 200
    for name, data in files.items():
        reply = await api.call("GET", f"/v1/datasets/{ds['pk']}/files/{name}")
        assert (reply.status, reply.body) == (200, data)
        assert reply.headers["Content-Length"] == str(len(data))
        assert reply.headers["Content-Type"] == "application/data"
        assert reply.headers["Content-Disposition"].startswith('attachment; filename="file-')
    for stale in stored(server):
        (Path(server.settings.data_dir) / "datasets" / stale).unlink()
    reply = await api.call("GET", f"/v1/datasets/{ds['pk']}/files/small.jpg")
    assert reply.status == 404 and "missing from the data directory" in reply.json["detail"]


async def test_adding_a_file_answers_its_name_and_hash(api: Api) -> None:
    """The add-file answer is the real server's named-file record: filename and handle."""
    ds = await create(api)
    reply = await add_file(api, ds, "a.png", b"abc")
    assert reply.json == {"filename": "a.png", "handle": hashlib.sha256(b"abc").hexdigest()}


async def test_adding_a_file_without_a_filename_header_is_400(api: Api) -> None:
    """Without a Content-Disposition filename the upload is 400, as on the real server."""
    ds = await create(api)
    assert (await add_file(api, ds, "a.png", b"x", filename=None)).status == 400
    assert (await api.ok("GET", f"/v1/datasets/{ds['pk']}"))["files"] == {}


async def test_a_second_file_of_the_same_name_is_400_and_keeps_the_first(api: Api) -> None:
    """Adding a name the dataset has already is 400; the first bytes stay."""
    ds = await dataset_with(api, {"a.png": b"one"})
    assert (await add_file(api, ds, "a.png", b"two")).status == 400
    assert (await api.call("GET", f"/v1/datasets/{ds['pk']}/files/a.png")).body == b"one"


@pytest.mark.parametrize("name", ["a/b.png", "../up.png", "a\\b.png", "nul\x00.png", "tab\t.png",
                                  "x" * 256])
async def test_a_bad_file_name_is_400_and_stores_nothing(make_server: MakeServer, make_api: MakeApi,
                                                         name: str) -> None:
    """Names with '/', '\\', NUL or control characters, or over 255 bytes: 400, no row, no file."""
    server = await make_server()
    api = make_api(server)
    ds = await create(api)
    reply = await add_file(api, ds, name, b"payload")
    assert reply.status == 400 and reply.json["detail"], reply
    assert (await api.ok("GET", f"/v1/datasets/{ds['pk']}"))["files"] == {}
    assert stored(server) == []


@pytest.mark.parametrize("name", ["..", "."])
async def test_dot_segments_never_become_file_names(make_server: MakeServer, make_api: MakeApi,
                                                    name: str) -> None:
    """'.' and '..' as a file name are resolved away as URL segments: refused, nothing stored."""
    server = await make_server()
    api = make_api(server)
    ds = await create(api)
    reply = await add_file(api, ds, name, b"payload")
    assert 400 <= reply.status < 500 and reply.json["detail"], reply
    assert (await api.ok("GET", f"/v1/datasets/{ds['pk']}"))["files"] == {}
    assert stored(server) == []


async def test_names_from_requests_never_name_stored_files(make_server: MakeServer, make_api: MakeApi,
                                                            tmp_path: Path) -> None:
    """Dataset name, file name and upload filename with ../ stay data: the bytes live under the file's pk."""
    server = await make_server()
    api = make_api(server)
    ds = await create(api, name="../../escape")
    assert (await add_file(api, ds, "..evil.png", b"x", filename="../../../evil")).status == 200
    assert stored(server) == ["1"]
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))


async def test_an_upload_over_the_limit_is_413_and_leaves_nothing(make_server: MakeServer,
                                                                   make_api: MakeApi) -> None:
    """A file above max_upload_bytes is 413: no row, no file, no temporary file."""
    server = await make_server(max_upload_bytes=1000)
    api = make_api(server)
    ds = await create(api)
    assert (await add_file(api, ds, "big.bin", b"x" * 1001)).status == 413
    assert stored(server) == []


@pytest.mark.parametrize("quirks", [False, True], ids=["strict", "real-server-quirks"])
async def test_an_empty_file_is_refused_and_leaves_nothing(make_server: MakeServer, make_api: MakeApi,
                                                            quirks: bool) -> None:
    """A 0-byte upload stores nothing: 400 saying so, or with the real server's quirks its 500
    (the real server's parser gives the view no file for an empty body)."""
    server = await make_server(real_server_quirks=quirks)
    api = make_api(server)
    ds = await create(api)
    reply = await add_file(api, ds, "empty.txt", b"")
    assert reply.status == (500 if quirks else 400), reply
    if not quirks:
        assert "empty" in reply.json["detail"], reply
    assert stored(server) == []
    assert (await api.ok("GET", f"/v1/datasets/{ds['pk']}"))["files"] == {}


async def test_deleting_a_file_removes_its_bytes(make_server: MakeServer, make_api: MakeApi) -> None:
    """DELETE .../files/{name} answers its record and removes row and bytes."""
    server = await make_server()
    api = make_api(server)
    ds = await dataset_with(api, {"a.png": b"a"})
    deleted = await api.ok("DELETE", f"/v1/datasets/{ds['pk']}/files/a.png")
    assert deleted["filename"] == "a.png"
    assert (await api.ok("GET", f"/v1/datasets/{ds['pk']}"))["files"] == {}
    assert stored(server) == []


# -- permissions ----------------------------------------------------------------------------------


async def test_another_user_reads_but_may_not_change_a_dataset(api: Api) -> None:
    """A worker reads an admin's dataset (record, file, archive) but adding a file or a category is 403."""
    ds = await create(api, as_="admin")
    assert (await add_file(api, ds, "a.png", b"a", as_="admin")).status == 200
    await api.ok("GET", f"/v1/datasets/{ds['pk']}")
    assert (await api.call("GET", f"/v1/datasets/{ds['pk']}/files/a.png")).body == b"a"
    assert (await download(api, ds)).status == 200
    assert (await add_file(api, ds, "b.png", b"b")).status == 403
    patch = {"method": "add", "images": ["a.png"], "categories": ["dog"]}
    assert (await api.call("PATCH", f"/v1/classify/datasets/{ds['pk']}/categories", json=patch)).status == 403
    assert (await api.call("DELETE", f"/v1/datasets/{ds['pk']}/files/a.png")).status == 403


@pytest.mark.parametrize("by", ["pk", "name", "name and version"])
async def test_a_node_working_on_the_dataset_may_store_categories(api: Api, by: str) -> None:
    """A node whose current job takes the dataset as input (by pk or name) may add categories."""
    ds = await create(api, as_="admin")
    assert (await add_file(api, ds, "a.png", b"a", as_="admin")).status == 200
    template = await api.template(TRAIN_TEMPLATE)
    value = {"pk": ds["pk"], "name": ds["name"], "name and version": f"{ds['name']} v1"}[by]
    type_ = IC_TYPE if by == "pk" else IC_TYPE.replace("PK<", "Name<", 1)
    job = await api.ok("POST", f"/v1/job-templates/{template}/create-job", as_="admin", json={
        "input_values": {"dataset": {"value": value, "type": type_}}, "parameter_values": {}})
    node = await api.node()
    path = f"/v1/classify/datasets/{ds['pk']}/categories"
    patch = {"method": "add", "images": ["a.png"], "categories": ["dog"]}
    assert (await api.call("PATCH", path, json=patch, node=node)).status == 403  # not working on it yet
    await api.ok("GET", f"/v1/jobs/{job['pk']}/acquire", node=node)
    await api.ok("POST", f"/v1/jobs/{job['pk']}/start", node=node, json={"send_notification": "none"})
    assert await api.ok("PATCH", path, json=patch, node=node) == {"a.png": ["dog"]}


async def test_a_job_naming_another_users_dataset_gives_its_node_no_right_to_change_it(
        make_server: MakeServer, make_api: MakeApi) -> None:
    """An ordinary user's own job naming the admin's dataset, on the user's own node: still 403."""
    api = make_api(await make_server())
    ds = await create(api, as_="admin")
    assert (await add_file(api, ds, "a.png", b"a", as_="admin")).status == 200
    template = await api.template(TRAIN_TEMPLATE)
    job = await api.ok("POST", f"/v1/job-templates/{template}/create-job", as_="worker", json={
        "input_values": {"dataset": {"value": ds["pk"], "type": IC_TYPE}}, "parameter_values": {}})
    node = await api.node()
    await api.ok("GET", f"/v1/jobs/{job['pk']}/acquire", node=node)
    await api.ok("POST", f"/v1/jobs/{job['pk']}/start", node=node, json={"send_notification": "none"})
    patch = {"method": "add", "images": ["a.png"], "categories": ["dog"]}
    path = f"/v1/classify/datasets/{ds['pk']}/categories"
    assert (await api.call("PATCH", path, json=patch, node=node)).status == 403
    assert (await add_file(api, ds, "b.png", b"b", node=node)).status == 403
    assert await api.ok("GET", path) == {}


async def test_an_anonymous_request_is_401(api: Api) -> None:
    """Reading a dataset needs a token."""
    ds = await create(api)
    assert (await api.call("GET", f"/v1/datasets/{ds['pk']}", as_=None)).status == 401


# -- the archive -----------------------------------------------------------------------------------


async def test_the_zip_holds_exactly_the_files_at_its_top_level(api: Api) -> None:
    """The default download is a zip whose members are exactly the dataset's files, byte for byte."""
    ds = await dataset_with(api, FILES)
    reply = await download(api, ds)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/data"
    assert reply.headers["Content-Disposition"] == f'attachment; filename="{ds["name"]}.v1.zip"'
    with zipfile.ZipFile(io.BytesIO(reply.body)) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == FILES


async def test_the_zip_stores_compressed_formats_and_deflates_the_rest(api: Api) -> None:
    """Images (compressed already) are stored in the zip, not deflated again; text is deflated."""
    files = {"a.jpg": os.urandom(3000), "B.PNG": os.urandom(300), "notes.txt": b"text " * 500,
             "noext": b"x" * 500}
    ds = await dataset_with(api, files)
    with zipfile.ZipFile(io.BytesIO((await download(api, ds)).body)) as archive:
        assert {i.filename: i.compress_type for i in archive.infolist()} == {
            "a.jpg": zipfile.ZIP_STORED, "B.PNG": zipfile.ZIP_STORED,
            "notes.txt": zipfile.ZIP_DEFLATED, "noext": zipfile.ZIP_DEFLATED}
        assert {n: archive.read(n) for n in archive.namelist()} == files


async def test_the_tar_gz_holds_exactly_the_files_at_its_top_level(api: Api) -> None:
    """filetype tar.gz gives a gzipped tar of exactly the files, regular files at the top level."""
    ds = await dataset_with(api, FILES)
    # annotations_args are ignored, as the real server ignores them: the raw files, at the top level.
    reply = await download(api, ds, {"filetype": "tar.gz", "params": {"annotations_args": ["to-subdir-ic"]}})
    assert reply.status == 200
    assert reply.headers["Content-Disposition"].endswith('.v1.tar.gz"')
    with tarfile.open(fileobj=io.BytesIO(reply.body), mode="r:gz") as archive:
        members = archive.getmembers()
        assert all(m.isfile() for m in members)
        got = {m.name: archive.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    assert got == FILES


async def test_an_empty_dataset_is_an_empty_zip(api: Api) -> None:
    """A dataset without files downloads as a valid zip with no members."""
    reply = await download(api, await create(api))
    assert zipfile.ZipFile(io.BytesIO(reply.body)).namelist() == []


async def test_an_unknown_filetype_is_415_json(api: Api) -> None:
    """filetype rar is 415 with a JSON detail."""
    reply = await download(api, await create(api), {"filetype": "rar"})
    assert reply.status == 415 and reply.json["detail"]


async def test_bad_download_params_are_400(api: Api) -> None:
    """params that are not a mapping of strings (or string lists) are 400."""
    reply = await download(api, await create(api), {"params": {"annotations_args": [1, 2]}})
    assert reply.status == 400 and reply.json["detail"]


@pytest.mark.parametrize("params", [{"other": "x"}, {"annotations_args": [], "split": ["a"]}])
async def test_a_download_param_other_than_annotations_args_is_422(api: Api, params: dict[str, Any]) -> None:
    """Any param but annotations_args is a 422 naming it (the real server's download)."""
    reply = await download(api, await create(api), {"params": params})
    name = next(k for k in params if k != "annotations_args")
    assert reply.status == 422 and name in reply.json["detail"], reply


async def test_get_on_the_download_is_405_json(api: Api) -> None:
    """GET of .../download is 405 JSON (Allow: POST) in strict mode."""
    reply = await api.call("GET", f"/v1/datasets/{(await create(api))['pk']}/download")
    assert reply.status == 405 and reply.json["detail"] and "POST" in reply.headers["Allow"]


async def test_get_on_the_download_is_500_html_with_quirks(make_server: MakeServer,
                                                           make_api: MakeApi) -> None:
    """With real_server_quirks a GET of .../download answers 500 HTML, as the real server does."""
    api = make_api(await make_server(real_server_quirks=True))
    reply = await api.call("GET", f"/v1/datasets/{(await create(api))['pk']}/download")
    assert reply.status == 500 and "text/html" in reply.headers["Content-Type"]


async def test_files_gone_from_the_data_directory_are_a_500_json(make_server: MakeServer,
                                                                 make_api: MakeApi) -> None:
    """A dataset whose bytes were removed behind the server's back answers 500 JSON, not a broken archive."""
    server = await make_server()
    api = make_api(server)
    ds = await dataset_with(api, {"a.png": b"a"})
    for path in (Path(server.settings.data_dir) / "datasets").iterdir():
        path.unlink()
    reply = await download(api, ds)
    assert reply.status == 500 and "missing" in reply.json["detail"]


async def _chunks(block: bytes, total: int) -> AsyncIterator[bytes]:
    for start in range(0, total, len(block)):
        yield block[:min(len(block), total - start)]


async def test_a_big_file_streams_through_the_archive(api: Api) -> None:
    """A 24 MiB file round-trips through a streamed zip (chunked, no Content-Length) with its sha256."""
    total, block = 24 << 20, os.urandom(1 << 20)
    digest = hashlib.sha256()
    async for chunk in _chunks(block, total):
        digest.update(chunk)
    ds = await create(api)
    assert (await add_file(api, ds, "big.bin", _chunks(block, total))).status == 200
    auth = {"Authorization": f"Bearer {(await api.login('worker'))['access']}"}
    raw = bytearray()
    async with api.session.post(f"{api.url}/v1/datasets/{ds['pk']}/download", headers=auth) as r:
        assert r.status == 200 and "Content-Length" not in r.headers
        async for chunk in r.content.iter_chunked(1 << 20):
            raw += chunk
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive, archive.open("big.bin") as member:
        got = hashlib.sha256()
        while block := member.read(1 << 20):
            got.update(block)
    assert got.hexdigest() == digest.hexdigest()


# -- categories -------------------------------------------------------------------------------------


async def test_categories_round_trip(api: Api) -> None:
    """PATCH add and remove change categories (each answers its changes); GET shows the result."""
    ds = await dataset_with(api, {"a.png": b"a", "b.png": b"b", "c.png": b"c"})
    path = f"/v1/classify/datasets/{ds['pk']}/categories"
    assert await api.ok("GET", path) == {}
    added = await api.ok("PATCH", path, json={"method": "add", "images": ["a.png", "b.png"],
                                              "categories": ["dog", "pet"]})
    assert added == {"a.png": ["dog", "pet"], "b.png": ["dog", "pet"]}
    again = await api.ok("PATCH", path, json={"method": "add", "images": ["a.png"], "categories": ["dog"]})
    assert again == {}
    removed = await api.ok("PATCH", path, json={"method": "remove", "images": ["b.png"],
                                                "categories": ["pet"]})
    assert removed == {"b.png": ["pet"]}
    assert await api.ok("GET", path) == {"a.png": ["dog", "pet"], "b.png": ["dog"]}


async def test_a_category_for_an_unknown_image_is_400_and_changes_nothing(api: Api) -> None:
    """Naming an image the dataset lacks is 400, and the other images of the call get nothing."""
    ds = await dataset_with(api, {"a.png": b"a"})
    path = f"/v1/classify/datasets/{ds['pk']}/categories"
    reply = await api.call("PATCH", path, json={"method": "add", "images": ["a.png", "zz.png"],
                                                "categories": ["dog"]})
    assert reply.status == 400 and "zz.png" in reply.json["detail"]
    assert await api.ok("GET", path) == {}


@pytest.mark.parametrize("body", [{"method": "add", "images": [], "categories": ["x"]},
                                  {"method": "add", "images": ["a.png"], "categories": [""]},
                                  {"method": "set", "images": ["a.png"], "categories": ["x"]},
                                  {"method": "add", "images": ["a.png", "a.png"], "categories": ["x"]},
                                  {"images": ["a.png"], "categories": ["x"], "method": "add", "more": 1}])
async def test_a_malformed_categories_call_is_400(api: Api, body: dict[str, Any]) -> None:
    """Empty or repeated lists, empty names, an unknown method or key: 400 with a detail."""
    ds = await dataset_with(api, {"a.png": b"a"})
    reply = await api.call("PATCH", f"/v1/classify/datasets/{ds['pk']}/categories", json=body)
    assert reply.status == 400 and reply.json["detail"], reply


async def test_categories_of_another_domain_are_404(api: Api) -> None:
    """An object-detection dataset has no image-classification categories: 404."""
    ds = await create(api, domain="od")
    assert (await api.call("GET", f"/v1/classify/datasets/{ds['pk']}/categories")).status == 404


async def test_deleting_a_file_drops_its_categories(api: Api) -> None:
    """A removed file's categories go with it."""
    ds = await dataset_with(api, {"a.png": b"a", "b.png": b"b"})
    path = f"/v1/classify/datasets/{ds['pk']}/categories"
    await api.ok("PATCH", path, json={"method": "add", "images": ["a.png", "b.png"], "categories": ["dog"]})
    await api.ok("DELETE", f"/v1/datasets/{ds['pk']}/files/a.png")
    assert await api.ok("GET", path) == {"b.png": ["dog"]}


async def test_datasets_survive_a_restart(make_server: MakeServer, make_api: MakeApi, tmp_path: Path) -> None:
    """Records, files and categories are still there after the server restarts on its data directory."""
    server = await make_server(tmp_path / "data")
    api = make_api(server)
    ds = await dataset_with(api, {"a.png": b"a"})
    await api.ok("PATCH", f"/v1/classify/datasets/{ds['pk']}/categories",
                 json={"method": "add", "images": ["a.png"], "categories": ["dog"]})
    await server.stop()
    api = make_api(await make_server(tmp_path / "data"))
    assert (await api.call("GET", f"/v1/datasets/{ds['pk']}/files/a.png")).body == b"a"
    assert await api.ok("GET", f"/v1/classify/datasets/{ds['pk']}/categories") == {"a.png": ["dog"]}


async def test_a_client_that_leaves_mid_download_stops_the_archive(make_server: MakeServer,
                                                                   make_api: MakeApi) -> None:
    """Dropping the connection after the first bytes ends the server's archive thread."""
    api = make_api(await make_server())
    ds = await create(api)
    block = os.urandom(1 << 20)
    for i in range(12):
        assert (await add_file(api, ds, f"f{i}.bin", _chunks(block, 4 << 20))).status == 200
    before = {t for t in threading.enumerate() if t.name == "ufdl-archive"}
    auth = {"Authorization": f"Bearer {(await api.login('worker'))['access']}"}
    async with api.session.post(f"{api.url}/v1/datasets/{ds['pk']}/download", headers=auth) as r:
        await r.content.readexactly(1000)
        [thread] = [t for t in threading.enumerate() if t.name == "ufdl-archive" and t not in before]
        r.close()
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()


async def test_post_sets_categories_and_delete_is_405(api: Api) -> None:
    """POST {file: [categories]} sets those files' categories, as the real server's set_categories;
    the old {images, categories} POST names files that do not exist (400), and DELETE is no
    route (405): neither adds nor removes anything."""
    ds = await dataset_with(api, {"a.png": b"a", "b.png": b"b"})
    path = f"/v1/classify/datasets/{ds['pk']}/categories"
    assert await api.ok("POST", path, json={"a.png": ["dog", "pet"]}) == {"a.png": ["dog", "pet"]}
    assert await api.ok("POST", path, json={"a.png": ["cat"], "b.png": []}) == {"a.png": ["cat"], "b.png": []}
    assert await api.ok("GET", path) == {"a.png": ["cat"]}
    old = {"images": ["a.png"], "categories": ["dog"]}
    reply = await api.call("POST", path, json=old)
    assert reply.status == 400 and "images" in reply.json["detail"], reply
    reply = await api.call("DELETE", path, json=old)
    assert reply.status == 405 and reply.json["detail"], reply
    assert await api.ok("GET", path) == {"a.png": ["cat"]}
    assert await api.ok("GET", f"{path}/a.png") == ["cat"]


async def test_an_archive_download_keeps_memory_flat(api: Api) -> None:
    """Downloading a 24 MiB dataset as zip never holds the archive: traced peak stays under 12 MiB."""
    total, block = 24 << 20, os.urandom(1 << 20)  # incompressible: the zip is as big as the file
    ds = await create(api)
    assert (await add_file(api, ds, "big.bin", _chunks(block, total))).status == 200
    auth = {"Authorization": f"Bearer {(await api.login('worker'))['access']}"}
    received = 0
    tracemalloc.start()
    try:
        async with api.session.post(f"{api.url}/v1/datasets/{ds['pk']}/download", headers=auth) as r:
            async for chunk in r.content.iter_chunked(1 << 20):
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received > total and peak < 12 << 20, (received, peak)


async def test_the_creator_soft_deletes_a_dataset(api: Api) -> None:
    """DELETE by its creator answers 204; the dataset leaves lists unless include_inactive asks for it."""
    ds = await create(api)
    spec: dict[str, Any] = {"expressions": [{"type": "exact", "field": "pk", "value": ds["pk"]}]}
    assert (await api.call("DELETE", f"/v1/datasets/{ds['pk']}")).status == 204
    assert await api.ok("POST", "/v1/datasets/list", json=spec) == []
    found = await api.ok("POST", "/v1/datasets/list", json={**spec, "include_inactive": True})
    assert [d["pk"] for d in found] == [ds["pk"]] and found[0]["deletion_time"] is not None


async def test_another_user_may_not_delete_a_dataset(api: Api) -> None:
    """A worker deleting the admin's dataset gets 403, and the dataset stays listed."""
    ds = await create(api, as_="admin")
    assert (await api.call("DELETE", f"/v1/datasets/{ds['pk']}")).status == 403
    spec = {"expressions": [{"type": "exact", "field": "pk", "value": ds["pk"]}]}
    assert [d["pk"] for d in await api.ok("POST", "/v1/datasets/list", json=spec)] == [ds["pk"]]


async def test_clear_removes_the_categories_and_keeps_the_files(api: Api) -> None:
    """DELETE .../clear answers the record; the files stay, every category goes."""
    ds = await dataset_with(api, {"a.png": b"a", "b.png": b"b"})
    path = f"/v1/classify/datasets/{ds['pk']}/categories"
    await api.ok("PATCH", path, json={"method": "add", "images": ["a.png", "b.png"], "categories": ["dog"]})
    cleared = await api.ok("DELETE", f"/v1/datasets/{ds['pk']}/clear")
    assert set(cleared["files"]) == {"a.png", "b.png"}
    assert await api.ok("GET", path) == {}


async def test_another_user_may_not_clear_a_dataset(api: Api) -> None:
    """Clearing the admin's dataset as a worker (no job on it) is 403, and the categories stay."""
    ds = await create(api, as_="admin")
    assert (await add_file(api, ds, "a.png", b"a", as_="admin")).status == 200
    path = f"/v1/classify/datasets/{ds['pk']}/categories"
    await api.ok("PATCH", path, as_="admin", json={"method": "add", "images": ["a.png"], "categories": ["x"]})
    assert (await api.call("DELETE", f"/v1/datasets/{ds['pk']}/clear")).status == 403
    assert await api.ok("GET", path) == {"a.png": ["x"]}
