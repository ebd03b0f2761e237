"""Output upload and download: streamed, size-limited, stored under the output's pk only."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ufdl_node.server import EmbeddedServer

from .conftest import Api, MakeApi, MakeServer, seg

LIMIT = 256 * 1024


def stored_files(server: EmbeddedServer) -> list[str]:
    return sorted(p.name for p in (Path(server.settings.data_dir) / "outputs").iterdir())


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A chunked body of `total` bytes (no Content-Length)."""
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


async def test_upload_over_the_limit_is_413_and_leaves_nothing(
        make_server: MakeServer, make_api: MakeApi) -> None:
    """An upload above max_upload_bytes (with Content-Length) is 413: no row, no file, no temp file."""
    server = await make_server(max_upload_bytes=LIMIT)
    api: Api = make_api(server)
    node = await api.node()
    job = await api.started(node)
    reply = await api.upload(job, node, "big", "bin", b"x" * (LIMIT + 1))
    assert reply.status == 413 and "detail" in reply.json
    assert (await api.get_job(job))["outputs"] == []
    assert (await api.call("GET", f"/v1/jobs/{job['pk']}/outputs/big/bin/info")).status == 400
    assert stored_files(server) == []


async def test_chunked_upload_over_the_limit_is_413_and_leaves_nothing(
        make_server: MakeServer, make_api: MakeApi) -> None:
    """A chunked upload (no Content-Length) that grows past the limit is cut off with 413, leaving nothing."""
    server = await make_server(max_upload_bytes=LIMIT)
    api: Api = make_api(server)
    node = await api.node()
    job = await api.started(node)
    reply = await api.upload(job, node, "big", "bin", chunks(LIMIT + 100 * 1024))
    assert reply.status == 413
    assert (await api.get_job(job))["outputs"] == []
    assert stored_files(server) == []


async def test_upload_at_the_limit_is_accepted(make_server: MakeServer, make_api: MakeApi) -> None:
    """An upload of exactly max_upload_bytes, chunked, is stored whole."""
    server = await make_server(max_upload_bytes=LIMIT)
    api: Api = make_api(server)
    node = await api.node()
    job = await api.started(node)
    out = (await api.upload(job, node, "big", "bin", chunks(LIMIT))).json
    assert stored_files(server) == [str(out["pk"])]
    assert os.path.getsize(Path(server.settings.data_dir) / "outputs" / str(out["pk"])) == LIMIT


async def test_upload_without_filename_is_400(api: Api) -> None:
    """No Content-Disposition filename: 400, and no output."""
    node = await api.node()
    job = await api.started(node)
    assert (await api.upload(job, node, "log", "json", filename=None)).status == 400
    assert (await api.get_job(job))["outputs"] == []


async def test_names_from_the_request_never_name_files(make_server: MakeServer, make_api: MakeApi) -> None:
    """NAME, TYPE and filename with ../ are stored as data; the file is named by the output pk."""
    server = await make_server()
    api: Api = make_api(server)
    node = await api.node()
    job = await api.started(node)
    name, type_ = "../../etc/passwd", "../x"
    out = (await api.upload(job, node, name, type_, b"payload", filename="../../evil")).json
    assert (out["name"], out["type"]) == (name, type_)
    assert stored_files(server) == [str(out["pk"])]
    body = (await api.call("GET", f"/v1/jobs/{job['pk']}/outputs/{seg(name)}/{seg(type_)}")).body
    assert body == b"payload"
    assert not (Path(server.settings.data_dir).parent / "evil").exists()


async def test_download_streams_the_exact_bytes(api: Api) -> None:
    """A 3 MiB random upload sent in chunks downloads with the same sha256."""
    node = await api.node()
    job = await api.started(node)
    data = os.urandom(3 * 2**20)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]

    assert (await api.upload(job, node, "blob", "bin", body())).status == 200
    auth = {"Authorization": f"Bearer {(await api.login('worker'))['access']}"}
    async with api.session.get(f"{api.url}/v1/jobs/{job['pk']}/outputs/blob/bin", headers=auth) as r:
        assert r.status == 200
        digest = hashlib.sha256()
        async for chunk in r.content.iter_chunked(65536):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_duplicate_upload_is_400_and_keeps_the_first(api: Api) -> None:
    """A second upload of the same NAME/TYPE is 400 and the first bytes stay."""
    node = await api.node()
    job = await api.started(node)
    assert (await api.upload(job, node, "log", "json", b"one")).status == 200
    assert (await api.upload(job, node, "log", "json", b"two")).status == 400
    assert (await api.call("GET", f"/v1/jobs/{job['pk']}/outputs/log/json")).body == b"one"


async def test_reset_removes_outputs_and_files(make_server, make_api) -> None:
    """With outputs_at_reset="remove" reset removes the outputs for good (row and file), so a
    retry can upload again (the jobs API document's rule; strict conformance runs with it)."""
    server = await make_server(outputs_at_reset="remove")
    api = make_api(server)
    node = await api.node()
    job = await api.started(node)
    out = (await api.upload(job, node, "log", "json", b"first")).json
    await api.finish(job, node, error="retry")
    await api.ok("DELETE", f"/v1/jobs/{job['pk']}/reset", node=node)
    assert (await api.get_job(job))["outputs"] == []
    assert not (Path(server.settings.data_dir) / "outputs" / str(out["pk"])).exists()
    await api.ok("POST", f"/v1/jobs/{job['pk']}/start", node=node, json={"send_notification": "none"})
    assert (await api.upload(job, node, "log", "json", b"second")).status == 200


async def test_reset_keeps_outputs_by_default(api: Api, shared_server: EmbeddedServer) -> None:
    """By default reset keeps the outputs as the real server does: still listed with deletion_time,
    their bytes downloadable, and the same NAME/TYPE refused (400 "already has an output")."""
    node = await api.node()
    job = await api.started(node)
    out = (await api.upload(job, node, "log", "json", b"first")).json
    await api.finish(job, node, error="retry")
    await api.ok("DELETE", f"/v1/jobs/{job['pk']}/reset", node=node)
    listed = (await api.get_job(job))["outputs"]
    assert [o["pk"] for o in listed] == [out["pk"]], listed
    info = await api.ok("GET", f"/v1/jobs/{job['pk']}/outputs/log/json/info")
    assert info["deletion_time"] is not None, info
    assert (Path(shared_server.settings.data_dir) / "outputs" / str(out["pk"])).exists()
    await api.ok("POST", f"/v1/jobs/{job['pk']}/start", node=node, json={"send_notification": "none"})
    refused = await api.upload(job, node, "log", "json", b"second")
    assert refused.status == 400 and "already" in refused.json["detail"], refused
    assert (await api.call("GET", f"/v1/jobs/{job['pk']}/outputs/log/json")).body == b"first"


async def test_admin_output_delete_removes_it(api: Api) -> None:
    """An admin delete answers the output with deletion_time set; it is gone from the job after."""
    node = await api.node()
    job = await api.started(node)
    await api.upload(job, node, "tmp", "json", b"1")
    deleted = await api.ok("DELETE", f"/v1/jobs/{job['pk']}/outputs/tmp/json", as_="admin")
    assert deleted["deletion_time"] is not None
    assert (await api.get_job(job))["outputs"] == []
