"""Plain GETs in threads (ufdl_node.work.plainget): a dataset's files over a few kept-alive
connections, and everything that is not a plain 200 left to the general path.

Two kinds of server, both real on loopback: the work toolkit's fake UFDL server (aiohttp,
through the transport's NodeIO, as the daemon fetches), and a raw asyncio server here that
answers each file the way a test asks (HTTP/1.0, Connection: close, chunked, extra bytes, a
connection closed while idle, a stall, a head too long, TLS)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest

from tests.rawhttp import RawHTTP, Seen, serving
from ufdl_node.errors import JobFailed
from ufdl_node.work.datasets import fetch_dataset
from ufdl_node.work.plainget import Wanted, fetch_plain

from .conftest import Harness, sha

FILES = {f"img-{i:02d}.jpg": os.urandom(10_000 + 997 * i) for i in range(24)}


def _plain(ufdl: Harness, path_part: str) -> list[tuple[str, str, int, str]]:
    """The requests for paths containing `path_part` that the plain client sent (no User-Agent:
    aiohttp always sends one)."""
    return [c for c in ufdl.state.clients if path_part in c[0] and not c[1]]


def _staged(tmp_path: Path) -> list[Path]:
    """What the cache's staging folder holds (it is made only when files are staged there)."""
    incoming = tmp_path / "cache" / "incoming"
    return list(incoming.iterdir()) if incoming.exists() else []


def _no_plain_threads() -> bool:
    return not any(t.name.startswith("ufdl-plainget") for t in threading.enumerate())


async def test_dataset_files_come_over_a_few_kept_alive_connections(ufdl: Harness, tmp_path: Path) -> None:
    """Every file once, by the plain client, over at most `parallel` connections; verified and
    linked into the job's directory; the threads gone afterwards. The node's other calls say
    which node acts; the files' GETs do not (each would make the server write its last_seen)."""
    ufdl.state.add_dataset(5, "dogs", FILES)
    ds = await fetch_dataset(ufdl.access(node_id=7), 5, dest=tmp_path / "job", cache_dir=tmp_path / "cache",
                             parallel=3)
    assert ds.downloaded == len(FILES)
    assert {name: (ds.directory / name).read_bytes() for name in ds.files} == FILES
    plain = _plain(ufdl, "/files/")
    assert sorted(c[0] for c in plain) == sorted(f"/v1/datasets/5/files/{n}" for n in FILES)
    assert len({c[2] for c in plain}) <= 3 and {c[3] for c in plain} == {""}
    assert {c[3] for c in ufdl.state.clients if c[0] == "/v1/datasets/5"} == {"7"}
    assert _no_plain_threads()
    assert _staged(tmp_path) == []


async def test_names_of_the_same_content_are_fetched_once(ufdl: Harness, tmp_path: Path) -> None:
    ufdl.state.add_dataset(5, "dogs", {"a.jpg": b"same" * 1000, "b/c.jpg": b"same" * 1000, "d.jpg": b"other"})
    ds = await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job", cache_dir=tmp_path / "cache")
    assert (ds.directory / "b" / "c.jpg").read_bytes() == b"same" * 1000 and ds.downloaded == 3
    assert len(_plain(ufdl, "/files/")) == 2


async def test_a_refused_token_is_renewed_by_the_transport(ufdl: Harness, tmp_path: Path) -> None:
    """A 401 to a plain GET: the loop renews the token (the transport's refresh call), the GET
    is sent again on the same connection, and nothing goes to the general path."""
    ufdl.state.add_dataset(5, "dogs", FILES)
    ufdl.state.fail("GET", r"/files/img-03\.jpg$", times=1, status=401)
    ds = await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job", cache_dir=tmp_path / "cache",
                             parallel=2)
    assert ds.downloaded == len(FILES)
    assert ufdl.state.count("POST", "/v1/auth/refresh$") == 1
    assert len(_plain(ufdl, "/files/img-03.jpg")) == 2 and len(_plain(ufdl, "/files/")) == len(FILES) + 1


async def test_a_server_error_leaves_the_file_to_the_general_path(ufdl: Harness, tmp_path: Path) -> None:
    """A 503 and a body cut short: those files come again through aiohttp (with its retries);
    the others stay plain."""
    ufdl.state.add_dataset(5, "dogs", FILES)
    ufdl.state.fail("GET", r"/files/img-07\.jpg$", times=2, status=503)
    ufdl.state.cut("GET", r"/files/img-11\.jpg$", times=1)
    ds = await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job", cache_dir=tmp_path / "cache")
    assert {name: (ds.directory / name).read_bytes() for name in ds.files} == FILES
    general = [c for c in ufdl.state.clients if "/files/" in c[0] and c[1]]
    assert sorted({c[0] for c in general}) == ["/v1/datasets/5/files/img-07.jpg",
                                                  "/v1/datasets/5/files/img-11.jpg"]
    assert _staged(tmp_path) == []


async def test_a_missing_file_fails_the_job_as_before(ufdl: Harness, tmp_path: Path) -> None:
    """The plain path decides no error: a 404 is the general path's 'not found'."""
    ufdl.state.add_dataset(5, "dogs", FILES)
    ufdl.state.fail("GET", r"/files/img-05\.jpg$", times=10, status=404)
    with pytest.raises(JobFailed, match=r"file 'img-05\.jpg' not found on the server"):
        await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job", cache_dir=tmp_path / "cache")
    assert _staged(tmp_path) == []


async def test_other_bytes_than_listed_fail_the_job_and_stay_out_of_the_cache(
        ufdl: Harness, tmp_path: Path) -> None:
    ufdl.state.add_dataset(5, "dogs", FILES)
    ufdl.state.listed_hashes[5] = {"img-02.jpg": sha(b"something else")}
    with pytest.raises(JobFailed, match="other bytes than promised"):
        await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job", cache_dir=tmp_path / "cache")
    blobs = [p.name for p in (tmp_path / "cache" / "sha256").rglob("*") if p.is_file()]
    assert sha(b"something else") not in blobs and sha(FILES["img-02.jpg"]) not in blobs


# -- a raw server: each file answered as the test asks ------------------------------------------


FileAnswer = Callable[[bytes], Awaitable[tuple[bytes, bool]]]  # a file → (the bytes to send, close after)


def plain_reply(body: bytes, *, version: str = "HTTP/1.1", extra: bytes = b"",
                headers: Mapping[str, str] | None = None) -> bytes:
    head = [f"{version} 200 OK", f"Content-Length: {len(body)}", "Content-Type: image/jpeg",
            *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body + extra


class RawServer(RawHTTP):
    """Files by name; `answers` (per name) or `default` says how each is sent."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(self.by_name)
        self.files = files
        self.answers: dict[str, FileAnswer] = {}
        self.default: FileAnswer = self.plain

    async def plain(self, body: bytes) -> tuple[bytes, bool]:
        return plain_reply(body), False

    async def by_name(self, seen: Seen) -> tuple[list[bytes], bool]:
        name = seen.path.rsplit("/", 1)[-1]
        data, close = await self.answers.get(name, self.default)(self.files[name])
        return [data], close


class RawSource:
    """The PlainSource a test gives fetch_plain: the raw server, a fixed token."""

    def __init__(self, port: int, scheme: str = "http", host: str = "127.0.0.1",
                 timeout_s: float = 5) -> None:
        self.port, self.scheme, self.host, self.timeout_s = port, scheme, host, timeout_s
        self.counted: dict[int, int] = {}

    def address(self) -> tuple[str, str, int, str]:
        return self.scheme, self.host, self.port, "/api"

    async def plain_headers(self, stale: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": "Bearer raw-token", "Node-Id": "3"}

    def count_plain(self, status: int, calls: int) -> None:
        self.counted[status] = self.counted.get(status, 0) + calls


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    async with serving(RawServer({f"f{i}.jpg": os.urandom(5_000 + 1_301 * i) for i in range(8)})) as state:
        yield state


def _wanted(state: RawServer, where: Path, max_bytes: int | None = None) -> list[Wanted]:
    where.mkdir(exist_ok=True)
    return [Wanted(f"/files/{name}", where / f"{name}.staged", hashlib.sha256(data).hexdigest(), max_bytes)
            for name, data in sorted(state.files.items())]


async def _fetch(source: RawSource, items: list[Wanted],
                 parallel: int = 2) -> tuple[list[Wanted], list[Wanted]]:
    done: list[Wanted] = []

    async def on_done(batch: list[Wanted]) -> None:
        done.extend(batch)
    left = await fetch_plain(source, items, parallel=parallel, on_done=on_done)
    return done, left


def _landed(state: RawServer, items: list[Wanted]) -> bool:
    return all(item.dest.read_bytes() == state.files[item.path.rsplit("/", 1)[-1]] for item in items)


async def test_requests_carry_the_prefix_the_token_and_the_node(raw: RawServer, tmp_path: Path) -> None:
    source = RawSource(raw.port)
    items = _wanted(raw, tmp_path)
    done, left = await _fetch(source, items)
    assert left == [] and sorted(done, key=lambda w: w.path) == items and _landed(raw, items)
    assert {seen.path for seen in raw.requests} == {f"/api{item.path}" for item in items}
    assert all(h["authorization"] == "Bearer raw-token" and h["node-id"] == "3"
               and h["host"] == f"127.0.0.1:{raw.port}" and h["accept-encoding"] == "identity"
               for h in (seen.headers for seen in raw.requests))
    assert raw.connections == 2 and source.counted == {200: len(items)}
    assert all(os.stat(item.dest).st_mode & 0o222 == 0 for item in items)  # read-only from the start


@pytest.mark.parametrize("how", ["http/1.0", "connection: close", "closed while idle", "extra bytes"])
async def test_a_connection_that_cannot_carry_another_request_is_opened_anew(
        raw: RawServer, tmp_path: Path, how: str) -> None:
    """HTTP/1.0, Connection: close, a server that closes a kept-alive connection without
    saying so, and a reply longer than its Content-Length: every file still lands, plain."""
    async def answer(body: bytes) -> tuple[bytes, bool]:
        if how == "http/1.0":
            return plain_reply(body, version="HTTP/1.0"), True
        if how == "connection: close":
            return plain_reply(body, headers={"Connection": "close"}), True
        if how == "extra bytes":
            return plain_reply(body, extra=b"HTTP/1.1 200 OK\r\n"), False
        return plain_reply(body), True
    raw.default = answer
    items = _wanted(raw, tmp_path)
    done, left = await _fetch(RawSource(raw.port), items, parallel=1)
    assert left == [] and len(done) == len(items) and _landed(raw, items)
    assert raw.connections == len(items)
    assert len(raw.requests) == len(items)  # never sent twice: a closed connection is seen before


async def test_a_stale_connection_is_opened_again_once(raw: RawServer, tmp_path: Path) -> None:
    """The server closes the kept-alive connection while the client is idle (its keep-alive
    timeout): the next GET finds the connection closed and is sent once more on a new one."""
    async def close_after(body: bytes) -> tuple[bytes, bool]:
        return plain_reply(body), True  # says nothing of it: the client learns at the next GET
    raw.answers["f2.jpg"] = close_after
    items = _wanted(raw, tmp_path)
    _done, left = await _fetch(RawSource(raw.port), items, parallel=1)
    assert left == [] and _landed(raw, items) and raw.connections == 2


@pytest.mark.parametrize("how", ["chunked", "gzip", "status 206", "garbage", "head too long", "too big"])
async def test_what_is_not_plain_is_left_to_the_general_path(raw: RawServer, tmp_path: Path,
                                                             how: str) -> None:
    """One file answered in a way the plain client does not take: it is returned (no file
    written for it), the others land, and its connection is not used again."""
    async def odd(body: bytes) -> tuple[bytes, bool]:
        if how == "chunked":
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"), False
        if how == "gzip":
            return plain_reply(body, headers={"Content-Encoding": "gzip"}), False
        if how == "status 206":
            return plain_reply(body).replace(b"200 OK", b"206 Partial Content", 1), False
        if how == "garbage":
            return b"SSH-2.0-OpenSSH\r\n\r\n", False
        if how == "head too long":
            return b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", False
        return plain_reply(body), False
    raw.answers["f5.jpg"] = odd
    items = _wanted(raw, tmp_path, max_bytes=len(raw.files["f5.jpg"]) - 1 if how == "too big" else None)
    odd_item = next(i for i in items if i.path.endswith("/f5.jpg"))
    if how == "too big":  # only f5 is over the limit: the others' limits are their own sizes
        items = [i if i is odd_item else Wanted(i.path, i.dest, i.sha256, None) for i in items]
    done, left = await _fetch(RawSource(raw.port), items, parallel=1)
    assert left == [odd_item] and not odd_item.dest.exists()
    assert len(done) == len(items) - 1 and _landed(raw, [i for i in items if i is not odd_item])


async def test_a_stalled_server_costs_the_timeout_then_the_rest_goes_general(
        raw: RawServer, tmp_path: Path) -> None:
    """A thread waiting on a stalled reply gives the file up after timeout_s; three in a row
    and it stops taking files (the general path has the budget and the backoff)."""
    async def stall(body: bytes) -> tuple[bytes, bool]:
        await asyncio.sleep(30)
        return b"", True
    raw.default = stall
    items = _wanted(raw, tmp_path)
    began = time.monotonic()
    done, left = await _fetch(RawSource(raw.port, timeout_s=0.3), items, parallel=1)
    assert done == [] and sorted(left, key=lambda w: w.path) == items
    assert len(raw.requests) == 3 and time.monotonic() - began < 5
    assert not any(item.dest.exists() for item in items)


async def test_cancelling_stops_the_threads_at_once_and_leaves_no_file(raw: RawServer,
                                                                       tmp_path: Path) -> None:
    reached = asyncio.Event()

    async def slow(body: bytes) -> tuple[bytes, bool]:  # the head and half the body, then a wait
        reached.set()
        reply = plain_reply(body)
        return reply[: len(reply) // 2], False
    raw.answers["f4.jpg"] = slow
    items = _wanted(raw, tmp_path)
    task = asyncio.ensure_future(_fetch(RawSource(raw.port, timeout_s=60), items, parallel=2))
    await reached.wait()
    await asyncio.sleep(0.1)  # the thread now waits in the middle of the body
    began = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - began < 2
    assert not next(i for i in items if i.path.endswith("f4.jpg")).dest.exists()
    assert _no_plain_threads()


async def test_tls(raw: RawServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An https server: the connection is TLS, the certificate checked against the trusted
    ones (here a self-signed one made trusted through SSL_CERT_FILE)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await raw.start(context)
    port = raw.port
    try:
        items = _wanted(raw, tmp_path / "untrusted")
        _done, left = await _fetch(RawSource(port, "https", "localhost"), items)
        assert sorted(left, key=lambda w: w.path) == items  # not trusted: all left to the general path
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        items = _wanted(raw, tmp_path / "trusted")
        done, left = await _fetch(RawSource(port, "https", "localhost"), items)
        assert left == [] and len(done) == len(items) and _landed(raw, items)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_file_is_written_where_the_job_reads_it_and_the_cache_links_it(
        ufdl: Harness, tmp_path: Path) -> None:
    """On one file system a fetched file is made once, in the job's directory, and the
    cache's name is a hard link to it (no staging name, no rename); with copy=True the job
    gets copies and the cache's own files stay apart from them."""
    ufdl.state.add_dataset(5, "dogs", {"a.jpg": b"A" * 5000, "sub/b.jpg": b"B" * 7000})
    ds = await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job", cache_dir=tmp_path / "cache")
    for name, data in (("a.jpg", b"A" * 5000), ("sub/b.jpg", b"B" * 7000)):
        job_file, cached = ds.directory / name, tmp_path / "cache" / "sha256" / sha(data)[:2] / sha(data)
        assert os.path.samefile(job_file, cached) and os.stat(cached).st_mode & 0o222 == 0
    assert _staged(tmp_path) == []
    copied = await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "copies", cache_dir=tmp_path / "c2",
                                 copy=True)
    cached = tmp_path / "c2" / "sha256" / sha(b"A" * 5000)[:2] / sha(b"A" * 5000)
    assert cached.read_bytes() == b"A" * 5000 and not os.path.samefile(copied.directory / "a.jpg", cached)


async def test_a_job_directory_on_another_file_system_gets_the_cache_staged_and_copied(
        ufdl: Harness, tmp_path: Path) -> None:
    """No hard link across file systems: the cache stages and renames its files on its own,
    and the job's directory gets copies."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) here")
    ufdl.state.add_dataset(5, "dogs", FILES)
    cache = Path(tempfile.mkdtemp(dir=shm, prefix="ufdl-test-cache-"))
    try:
        ds = await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job", cache_dir=cache)
        assert {name: (ds.directory / name).read_bytes() for name in ds.files} == FILES
        blobs = sorted(p.name for p in (cache / "sha256").rglob("*") if p.is_file())
        assert blobs == sorted(sha(data) for data in FILES.values())
        assert list((cache / "incoming").iterdir()) == []
    finally:
        shutil.rmtree(cache, ignore_errors=True)
