"""Bugs the chaos soak found, each pinned by a focused test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import StartServer
from ufdl_node.client import UfdlClient
from ufdl_node.errors import ServerError
from ufdl_node.registry import Registry

from ..daemon.conftest import ADMIN_PW, WORKER_PW, import_template, server_settings

HANDLERS = Path(__file__).parent / "handlers"


async def test_upload_cut_between_row_and_bytes_leaves_no_output(embedded_servers: StartServer, tmp_path,
                                                                 monkeypatch):
    """The server dies as an output's bytes take their name: no output without bytes; a retry stores it."""
    server = await embedded_servers(server_settings(tmp_path / "data"))
    async with UfdlClient(server.url, "admin", ADMIN_PW, retry_max_attempts=1) as admin, \
            UfdlClient(server.url, "worker", WORKER_PW, retry_max_attempts=1) as worker:
        template = await import_template(admin, Registry.load([HANDLERS], entry_points=False), "soak_job")
        job = await admin.create_job(template, {}, {}, description="cut upload")
        node = await worker.create_node({"ip": "127.0.0.9", "index": 0, "cpu_mem": 2**30})
        await worker.acquire(job["pk"], node["pk"])
        await worker.start(job["pk"], node["pk"])

        real_replace = os.replace

        def dies_here(src, dst) -> None:  # what a SIGKILL at this point leaves: the rename never happens
            raise RuntimeError("the server process died here")

        monkeypatch.setattr(os, "replace", dies_here)
        with pytest.raises(ServerError):
            await worker.upload_output(job["pk"], node["pk"], "model", "bin", b"weights")
        monkeypatch.setattr(os, "replace", real_replace)
        assert (await admin.get_job(job["pk"]))["outputs"] == []
        await worker.upload_output(job["pk"], node["pk"], "model", "bin", b"weights")
        got = await admin.download_output(job["pk"], "model", "bin", tmp_path / "model")
        assert got.read_bytes() == b"weights"
