"""An upload its client cuts off: one log line, no traceback, and nothing left behind."""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.parse
from pathlib import Path

from ufdl_node.logs import configure_logging

from .conftest import MakeApi, MakeServer
from .test_datasets import create


async def _send_half(url: str, path: str, token: str, node: int | None = None) -> None:
    """POST `path` declaring 1 MiB, send a quarter of it, and close the connection."""
    where = urllib.parse.urlsplit(url)
    _reader, writer = await asyncio.open_connection(where.hostname, where.port)
    head = (f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/data\r\nContent-Disposition: attachment; filename=x\r\n"
            f"Content-Length: {2**20}\r\n")
    if node is not None:
        head += f"Node-Id: {node}\r\n"
    writer.write((head + "\r\n").encode() + b"\0" * 2**18)
    await writer.drain()
    await asyncio.sleep(0.2)  # the server is reading the body now
    writer.close()
    await writer.wait_closed()


async def _log_line(stream: io.StringIO, event: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in stream.getvalue().splitlines():
            record = json.loads(line)
            if record.get("event") == event:
                return record  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {event!r} in the log: {stream.getvalue()[-2000:]}")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _assert_quiet(stream: io.StringIO) -> None:
    text = stream.getvalue()
    assert "Traceback" not in text and "unhandled" not in text, text[-3000:]
    assert all(json.loads(line).get("level") != "error" for line in text.splitlines()), text[-3000:]


async def test_an_output_upload_cut_short_leaves_one_line_and_nothing_else(
        make_server: MakeServer, make_api: MakeApi, tmp_path: Path) -> None:
    """A worker that goes away mid-output: an info line, no traceback, no output row, no bytes."""
    server = await make_server(tmp_path / "outputs")
    api = make_api(server)
    node = await api.node()
    job = await api.started(node)
    before = _leftovers(tmp_path / "outputs" / "outputs")
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    token = (await api.login("worker"))["access"]
    await _send_half(server.url, f"/v1/jobs/{job['pk']}/outputs/model/bin", token, node["pk"])
    record = await _log_line(stream, "upload cut short by the client")
    assert record["path"] == f"/v1/jobs/{job['pk']}/outputs/model/bin"
    _assert_quiet(stream)
    assert (await api.get_job(job))["outputs"] == []
    assert _leftovers(tmp_path / "outputs" / "outputs") == before
    reply = await api.upload(job, node, "model", "bin", b"whole")  # the name is still free
    assert reply.status == 200, reply


async def test_a_dataset_file_upload_cut_short_leaves_one_line_and_nothing_else(
        make_server: MakeServer, make_api: MakeApi, tmp_path: Path) -> None:
    """A client that goes away mid-file: an info line, no traceback, no file row, no bytes."""
    server = await make_server(tmp_path / "files")
    api = make_api(server)
    dataset = await create(api)
    before = _leftovers(tmp_path / "files" / "datasets")
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    token = (await api.login("worker"))["access"]
    await _send_half(server.url, f"/v1/datasets/{dataset['pk']}/files/a.png", token)
    await _log_line(stream, "upload cut short by the client")
    _assert_quiet(stream)
    assert _leftovers(tmp_path / "files" / "datasets") == before
    got = await api.ok("GET", f"/v1/datasets/{dataset['pk']}", as_="worker")
    assert got["files"] == {}, got


async def test_a_json_body_cut_short_leaves_one_line(make_server: MakeServer, make_api: MakeApi,
                                                      tmp_path: Path) -> None:
    """A worker killed while sending a JSON body (progress, here): an info line, no traceback
    (the chaos soak met it as an unhandled 500 when SIGKILLing daemons)."""
    server = await make_server(tmp_path / "json")
    api = make_api(server)
    node = await api.node()
    job = await api.started(node)
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    token = (await api.login("worker"))["access"]
    await _send_half(server.url, f"/v1/jobs/{job['pk']}/progress/0.5", token, node["pk"])
    record = await _log_line(stream, "client went away mid-request")
    assert record["path"] == f"/v1/jobs/{job['pk']}/progress/0.5"
    _assert_quiet(stream)
