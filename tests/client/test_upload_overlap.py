"""Uploads go by sendfile, or read ahead while they send: the bytes are the file's, whatever its size."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.client.conftest import World
from ufdl_node import uploadfile
from ufdl_node.uploadfile import UPLOAD_CHUNK_BYTES, UploadFile

C = UPLOAD_CHUNK_BYTES


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "read-ahead"])
@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 2 * C, 2 * C + 1])
async def test_upload_bytes_are_identical_around_chunk_boundaries(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, sendfile: bool) -> None:
    """A file of `size` bytes uploads and downloads byte for byte, by either path."""
    monkeypatch.setattr(uploadfile, "UPLOAD_SENDFILE", sendfile)
    job = await world.started()
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    await world.worker.upload_output(job["pk"], world.node_pk, "model", "bin", tmp_path / "src")
    got = await world.worker.download_output(job["pk"], "model", "bin", tmp_path / "d" / "out")
    assert got.read_bytes() == data


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    """A small server on loopback that answers with the length headers and a hash of the body."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"content_length": request.headers.get("Content-Length"),
                                  "chunked": "Transfer-Encoding" in request.headers, "size": len(body)})

    app = web.Application(client_max_size=8 * C)
    app.router.add_post("/", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    await runner.cleanup()


async def test_upload_file_sends_a_content_length_not_chunks(echo_url: str, tmp_path: Path) -> None:
    """The body goes with a Content-Length (a WSGI server may refuse a chunked upload)."""
    (tmp_path / "src").write_bytes(b"y" * (C + 5))
    upload = UploadFile(tmp_path / "src")
    async with aiohttp.ClientSession() as session, session.post(echo_url, data=upload) as r:
        reply = await r.json()
    assert reply == {"content_length": str(C + 5), "chunked": False, "size": C + 5}
    assert upload.file.closed


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "read-ahead"])
async def test_upload_of_a_file_that_shrank_fails_clearly(
        echo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sendfile: bool) -> None:
    """A file cut short after it was opened fails the send, the cause naming the file."""
    monkeypatch.setattr(uploadfile, "UPLOAD_SENDFILE", sendfile)
    (tmp_path / "src").write_bytes(b"z" * (2 * C))
    upload = UploadFile(tmp_path / "src")
    os.truncate(tmp_path / "src", C // 2)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientOSError) as caught:
            async with session.post(echo_url, data=upload):
                pass
    assert "src: the file shrank while it was being uploaded" in str(caught.value.__cause__)
    assert upload.file.closed


async def test_chunked_upload_file_keeps_the_chunk_framing(echo_url: str, tmp_path: Path) -> None:
    """Asked for a chunked body, the file passes through the writer's framing (not sendfile) intact."""
    data = os.urandom(C + 3)
    (tmp_path / "src").write_bytes(data)
    async with aiohttp.ClientSession() as session, \
            session.post(echo_url, data=UploadFile(tmp_path / "src"), chunked=True) as r:
        reply = await r.json()
    assert reply == {"content_length": None, "chunked": True, "size": C + 3}
