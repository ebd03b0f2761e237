"""The daemon's Transport can carry ServerAccess: an adapter of a few lines over its one exchange.

``TransportIO`` below is what the job context will use (until Transport offers
``request``/``stream`` itself): the transport renews tokens and maps errors; ServerAccess
adds the bounded retries and the safe downloads.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.errors import JobFailed
from ufdl_node.transport import NO_BODY, Transport
from ufdl_node.work.datasets import fetch_dataset
from ufdl_node.work.server_access import Reply, ServerAccess, ServerIO

from .conftest import Harness


class TransportIO:
    """ServerIO over a Transport's single exchange (no transport-level retries)."""

    def __init__(self, transport: Transport, node_id: int | None = None) -> None:
        self.transport = transport
        self.node_id = node_id

    @staticmethod
    def _path(path: str, params: Mapping[str, str] | None) -> str:
        return path + ("?" + urllib.parse.urlencode(params) if params else "")

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, str] | None = None) -> Any:
        return await self.transport._request("handler", method, self._path(path, params),
                                             json_body=NO_BODY if json is None else json,
                                             node_id=self.node_id)

    def stream(self, method: str, path: str, *, json: Any = None,
               params: Mapping[str, str] | None = None) -> AbstractAsyncContextManager[Reply]:
        return self.transport._response("handler", method, self._path(path, params),
                                        json_body=NO_BODY if json is None else json,
                                        timeout=self.transport._transfer_timeout, node_id=self.node_id)


def _access(ufdl: Harness, retry_s: float = 5.0) -> tuple[Transport, ServerAccess]:
    transport = Transport(ufdl.url, "worker", "pw", retry_max_attempts=1)
    io: ServerIO = TransportIO(transport)
    return transport, ServerAccess(io, retry_s=retry_s, initial_delay_s=0.01, max_delay_s=0.05)


async def test_dataset_through_the_transport_with_an_expired_token(ufdl: Harness, tmp_path: Path) -> None:
    """A 401 mid-way is renewed by the transport; the dataset arrives whole."""
    ufdl.state.add_dataset(5, "dogs", {"a.jpg": b"A" * 10_000, "b.jpg": b"B"},
                           categories={"a.jpg": ["dog"]})
    transport, access = _access(ufdl)
    async with transport:
        await access.get("/v1/datasets/5")
        ufdl.state.expired_tokens = 1
        ds = await fetch_dataset(access, 5, dest=tmp_path / "d", cache_dir=tmp_path / "c")
    assert (ds.directory / "a.jpg").read_bytes() == b"A" * 10_000
    assert ufdl.state.count("POST", "/v1/auth/refresh") == 1


async def test_cut_download_through_the_transport_is_retried(ufdl: Harness, tmp_path: Path) -> None:
    """The transport reports a cut body as transient, so ServerAccess fetches it again."""
    ufdl.state.add_dataset(5, "dogs", {"a.jpg": b"A" * 100_000})
    ufdl.state.cut("GET", r"/files/a\.jpg$", times=1)
    transport, access = _access(ufdl)
    async with transport:
        await access.download("GET", "/v1/datasets/5/files/a.jpg", tmp_path / "a.jpg")
    assert (tmp_path / "a.jpg").read_bytes() == b"A" * 100_000
    assert ufdl.state.count("GET", r"/files/a\.jpg$") == 2


async def test_5xx_through_the_transport_ends_in_job_failed(ufdl: Harness) -> None:
    """A server stuck on 500 fails the call as JobFailed after retry_s, never an endless loop."""
    ufdl.state.add_dataset(5, "dogs", {"a.jpg": b"A"})
    ufdl.state.fail("POST", r"/download$", times=10**6)
    transport, access = _access(ufdl, retry_s=0.2)
    async with transport:
        with pytest.raises(JobFailed, match=r"did not answer properly for 0\.2 s"):
            await access.json("POST", "/v1/datasets/5/download", json={"filetype": "zip"})
