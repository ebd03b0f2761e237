"""Uploads: streamed, correctly labelled, resumable by checking info; downloads: atomic."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
from aiohttp import web

from tests.client.conftest import World
from ufdl_node.client import UfdlClient
from ufdl_node.errors import OutputRefused, ServerUnavailable

TYPE = "PK<Dataset<Domain<'Image Classification'>>>"
OUTPUTS = r"^/v1/jobs/\d+/outputs/[^/]+/[^/]+$"


async def test_upload_sends_the_headers_the_real_server_needs(world: World, tmp_path: Path) -> None:
    """Content-Disposition with the filename, octet-stream, NAME and TYPE percent-encoded."""
    job = await world.started()
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights")
    await world.worker.upload_output(job["pk"], world.node_pk, "my model", TYPE, source)
    sent = world.proxy.seen[-1]
    assert sent.headers["Content-Disposition"] == 'attachment; filename="my model"'
    assert sent.headers["Content-Type"] == "application/octet-stream"
    assert sent.headers["Content-Length"] == "7"
    assert sent.raw_path.endswith("/outputs/my%20model/PK%3CDataset%3CDomain%3C%27Image%20Classification"
                                  "%27%3E%3E%3E")
    info = await world.worker.output_info(job["pk"], "my model", TYPE)
    assert info is not None and info["type"] == TYPE


async def test_upload_round_trips_bytes(world: World, tmp_path: Path) -> None:
    """What was uploaded from a file downloads byte for byte, and the metrics count it."""
    job = await world.started()
    data = os.urandom(3 * 2**20 + 17)
    (tmp_path / "src").write_bytes(data)
    await world.worker.upload_output(job["pk"], world.node_pk, "model", "Compressed<JSON>", tmp_path / "src")
    got = await world.worker.download_output(job["pk"], "model", "Compressed<JSON>", tmp_path / "d" / "out")
    assert got.read_bytes() == data
    assert world.sample("ufdl_node_upload_bytes_total") == len(data)


async def test_upload_of_big_bytes_streams_without_warnings(world: World) -> None:
    """A 3 MiB bytes source uploads without aiohttp's large-body warning (an error here)."""
    job = await world.started()
    await world.worker.upload_output(job["pk"], world.node_pk, "model", "JSON", b"x" * (3 * 2**20))
    assert world.proxy.seen[-1].body_size == 3 * 2**20


async def test_upload_with_lost_reply_after_landing_succeeds_once(world: World) -> None:
    """The upload landed but the reply was lost: info shows it is ours; it is not sent again."""
    job = await world.started()
    fault = world.proxy.drop("POST", OUTPUTS, after_forward=True, times=1)
    out = await world.worker.upload_output(job["pk"], world.node_pk, "model", "JSON", b"{}")
    assert out["name"] == "model" and out["deletion_time"] is None
    assert world.proxy.count("POST", OUTPUTS) == 1
    assert fault.hits >= 1


async def test_upload_503_before_landing_is_sent_again(world: World) -> None:
    """A 503 that never reached the server: info shows nothing, so the upload is repeated."""
    job = await world.started()
    fault = world.proxy.fail("POST", OUTPUTS, status=503, times=1)
    await world.worker.upload_output(job["pk"], world.node_pk, "model", "JSON", b"{}")
    assert world.proxy.count("POST", OUTPUTS) == 2
    assert fault.hits >= 1


async def test_upload_500_after_landing_is_recognised_as_done(world: World) -> None:
    """A 500 after the output was stored, then a 400 'already has' on retry: still success."""
    job = await world.started()
    fault = world.proxy.fail("POST", OUTPUTS, status=500, after_forward=True, times=1)
    out = await world.worker.upload_output(job["pk"], world.node_pk, "model", "JSON", b"{}")
    assert out["name"] == "model"
    assert fault.hits >= 1


async def test_upload_after_reset_on_the_real_server_is_output_refused(
        quirks_world: World) -> None:
    """The real server keeps a soft-deleted output after reset: re-uploading it is OutputRefused."""
    world, node = quirks_world, quirks_world.node_pk
    job = await world.started()
    await world.direct.upload_output(job["pk"], node, "model", "JSON", b"{}")
    await world.direct.finish(job["pk"], node, error="try again")
    await world.direct.reset(job["pk"], node)
    await world.direct.start(job["pk"], node)
    with pytest.raises(OutputRefused, match="kept by the server after a reset"):
        await world.worker.upload_output(job["pk"], node, "model", "JSON", b"{}")


async def test_upload_after_reset_removing_outputs_works(make_world) -> None:
    """A server that removes outputs on reset (the embedded server's outputs_at_reset="remove",
    the jobs API document's rule) lets a retried job upload them again."""
    world = await make_world(outputs_at_reset="remove")
    job = await world.started()
    await world.direct.upload_output(job["pk"], world.node_pk, "model", "JSON", b"{}")
    await world.direct.finish(job["pk"], world.node_pk, error="try again")
    await world.direct.reset(job["pk"], world.node_pk)
    await world.direct.start(job["pk"], world.node_pk)
    assert (await world.worker.upload_output(job["pk"], world.node_pk, "model", "JSON", b"{}"))["pk"]


async def test_upload_after_reset_keeping_outputs_is_output_refused(world: World) -> None:
    """The embedded server's default keeps outputs after a reset, as the real server does."""
    job = await world.started()
    await world.direct.upload_output(job["pk"], world.node_pk, "model", "JSON", b"{}")
    await world.direct.finish(job["pk"], world.node_pk, error="try again")
    await world.direct.reset(job["pk"], world.node_pk)
    await world.direct.start(job["pk"], world.node_pk)
    with pytest.raises(OutputRefused, match="kept by the server after a reset"):
        await world.worker.upload_output(job["pk"], world.node_pk, "model", "JSON", b"{}")


async def test_upload_of_a_name_taken_earlier_is_output_refused(world: World) -> None:
    """An output created before this upload began is not mistaken for ours."""
    job = await world.started()
    await world.direct.upload_output(job["pk"], world.node_pk, "model", "JSON", b"{}")
    async with world.client(clock_skew_s=0) as client:
        with pytest.raises(OutputRefused, match="already exists"):
            await client.upload_output(job["pk"], world.node_pk, "model", "JSON", b"{}")


async def test_output_info_of_a_missing_output_is_none(world: World) -> None:
    """output_info answers None when the server has no such output."""
    job = await world.started()
    assert await world.worker.output_info(job["pk"], "nothing", "JSON") is None


async def test_failed_download_leaves_no_file_behind(world: World, tmp_path: Path) -> None:
    """A download that keeps failing leaves neither the destination nor a temp file."""
    job = await world.started()
    await world.direct.upload_output(job["pk"], world.node_pk, "model", "JSON", b"{}")
    fault = world.proxy.drop("GET", OUTPUTS)
    with pytest.raises(ServerUnavailable):
        await world.worker.download_output(job["pk"], "model", "JSON", tmp_path / "dl" / "out")
    assert list((tmp_path / "dl").iterdir()) == []
    assert fault.hits >= 1


async def test_download_is_retried_after_a_drop(world: World, tmp_path: Path) -> None:
    """A dropped download is retried and the file written whole."""
    job = await world.started()
    await world.direct.upload_output(job["pk"], world.node_pk, "model", "JSON", b'{"a": 1}')
    fault = world.proxy.drop("GET", OUTPUTS, times=1)
    got = await world.worker.download(f"/v1/jobs/{job['pk']}/outputs/model/JSON", tmp_path / "out")
    assert got.read_bytes() == b'{"a": 1}'
    assert fault.hits >= 1


async def test_upload_streams_the_file_instead_of_reading_it_whole(
        tmp_path: Path, aiohttp_server: object) -> None:
    """A 24 MiB upload from disk never holds the file in memory (peak far below its size)."""
    size = 24 * 2**20
    source = tmp_path / "big"
    with source.open("wb") as f:
        f.truncate(size)
    received = {"bytes": 0, "length": None}

    async def obtain(request: web.Request) -> web.Response:
        return web.json_response({"access": "access-token-x", "refresh": "refresh-token-x"})

    async def sink(request: web.Request) -> web.Response:
        received["length"] = request.content_length
        async for chunk in request.content.iter_any():
            received["bytes"] += len(chunk)  # type: ignore[operator]
        return web.json_response({"pk": 1, "name": "big", "type": "Blob", "deletion_time": None})

    app = web.Application()
    app.router.add_post("/v1/auth/obtain", obtain)
    app.router.add_post("/v1/jobs/1/outputs/big/Blob", sink)
    server = await aiohttp_server(app)  # type: ignore[operator]
    async with UfdlClient(str(server.make_url("")), "worker", "pw-for-sink") as client:
        await client.login()
        tracemalloc.start()
        try:
            await client.upload_output(1, 1, "big", "Blob", source)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert received == {"bytes": size, "length": size}
    assert peak < size // 4
