"""ServerAccess over the daemon's one HTTP path (:class:`ufdl_node.transport.NodeIO`): the
transport renews tokens and maps errors; ServerAccess adds the bounded retries and the
safe downloads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ufdl_node.errors import JobFailed
from ufdl_node.transport import Transport
from ufdl_node.work.datasets import fetch_dataset
from ufdl_node.work.server_access import ServerAccess, ServerIO

from .conftest import Harness


def _access(ufdl: Harness, retry_s: float = 5.0) -> tuple[Transport, ServerAccess]:
    transport = Transport(ufdl.url, "worker", "pw", retry_max_attempts=1)
    io: ServerIO = transport.node_io()
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
