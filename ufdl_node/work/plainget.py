"""Many files by GET at curl's cost: a few kept-alive connections, each in a thread of its own.

A dataset of thousands of small files costs, through aiohttp, about 0.2 ms of the event
loop's CPU per request: for 5,000 files, more than curl's whole fetch. Here each of
`parallel` threads keeps one connection (a blocking socket; TLS when the server's URL is
``https``) and, for each file, sends the GET, reads the reply's head and reads the body into
a buffer it reuses, which the same thread hashes and writes (:class:`.filesink.FileSink`:
hashlib and the writes release the GIL). The event loop does nothing per file but take the
finished ones in batches.

Only the plain case is handled here: a ``200`` with a ``Content-Length`` and neither a
``Content-Encoding`` nor a ``Transfer-Encoding``, of the length and the sha256 promised.
Anything else (another status, a chunked or encoded body, a connection fault, a timeout, a
body cut short or of other bytes, a file over its size limit) leaves the file to the
caller's general path (:meth:`.server_access.ServerAccess.download`: aiohttp, the retries
within the job's budget, every error mapped as for every other call). This module decides
no error and retries nothing, with two exceptions that cost nothing to get right: a
kept-alive connection the server closed while idle is opened again once for the same GET,
and a ``401`` asks the loop to renew the token (the transport's own renewal) and sends the
GET once more.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..leanhttp import HEAD_MAX, Headers, parse_head
from .filesink import FileSink, Mismatch

BUFFER_BYTES = 1 << 20  # a thread's receive buffer: a dataset file of a few hundred KiB in one read
FAULTS_IN_A_ROW = 3  # a thread that fails this many files in a row stops (the rest: the general path)
REPORT_EVERY = 32  # finished files a thread hands the loop at once (and at its end)


@dataclass(frozen=True)
class Wanted:
    """One file to get: `path` (percent-encoded, under the server's URL: ``/v1/...``) into
    `dest` (a new file, created read-only: a staging name nothing else
    reads), checked against `sha256` (None: not checked) and at most `max_bytes` long."""

    path: str
    dest: Path
    sha256: str | None
    max_bytes: int | None = None


@runtime_checkable
class PlainSource(Protocol):
    """What a :class:`~.server_access.ServerIO` offers for plain GETs in threads (the
    transport's :class:`~ufdl_node.transport.NodeIO` does)."""

    timeout_s: float

    def address(self) -> tuple[str, str, int, str]:
        """The server's scheme, host, port and path (``""``, or the prefix its API is under:
        a request's target is that followed by the item's path)."""
        ...

    async def plain_headers(self, stale: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers a request carries (its token among them); given the `stale` ones a
        401 answered, the token renewed first (unless another call did already)."""
        ...

    def count_plain(self, status: int, calls: int) -> None:
        """`calls` requests answered `status` (the transport's call metrics)."""
        ...


class _NotPlain(Exception):
    """This file is the general path's: the reply was not a plain 200, or the connection failed."""


class _Stale(Exception):
    """The server had closed the kept-alive connection before this request: nothing received."""


class _Unauthorized(Exception):
    """The server answered 401 (the body read: the connection can be used again)."""


async def fetch_plain(source: PlainSource, items: list[Wanted], *, parallel: int,
                      on_done: Callable[[list[Wanted]], Awaitable[None]]) -> list[Wanted]:
    """Get `items` with `parallel` threads; `on_done` takes each batch of finished files (on
    the loop). Returns the files left to the general path (none when all went well). On
    cancellation the threads stop at once (their sockets shut) and remove their files."""
    if not items:
        return []
    loop = asyncio.get_running_loop()
    run = _Run(source, items, await source.plain_headers(), loop)
    threads = max(1, min(parallel, len(items)))
    finished: asyncio.Queue[list[Wanted]] = asyncio.Queue()
    run.report = lambda batch: loop.call_soon_threadsafe(finished.put_nowait, batch)
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="ufdl-plainget")
    workers = [loop.run_in_executor(pool, run.work) for _ in range(threads)]
    all_done = asyncio.gather(*workers)
    getter: asyncio.Future[list[Wanted]] | None = None
    try:
        while True:
            getter = asyncio.ensure_future(finished.get())
            either: list[asyncio.Future[Any]] = [getter, all_done]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            await on_done(getter.result())
        await all_done
        while not finished.empty():
            await on_done(finished.get_nowait())
    except BaseException:
        run.stop()
        if getter is not None:
            getter.cancel()
        await asyncio.gather(all_done, return_exceptions=True)
        while not finished.empty():  # finished, but nobody takes them now: no file left behind
            for item in finished.get_nowait():
                item.dest.unlink(missing_ok=True)
        raise
    finally:
        await asyncio.to_thread(pool.shutdown)  # the threads are done: this joins them, off the loop
    for status, calls in run.statuses.items():
        source.count_plain(status, calls)
    return run.left()


class _Run:
    """One :func:`fetch_plain`: the files still to get, shared by its threads."""

    def __init__(self, source: PlainSource, items: list[Wanted], headers: dict[str, str],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.source = source
        self.todo = collections.deque(items)
        self.given_up: list[Wanted] = []
        self.headers = headers
        self.loop = loop
        self.statuses: collections.Counter[int] = collections.Counter()
        self.report: Callable[[list[Wanted]], object] = lambda batch: None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        scheme, self.host, self.port, self.prefix = source.address()
        self.tls = ssl.create_default_context() if scheme == "https" else None
        self.host_header = _host_header(self.host, self.port, self.tls)

    def left(self) -> list[Wanted]:
        return self.given_up + list(self.todo)

    def stop(self) -> None:
        """Stop every thread now: no new file, and a read under way ends at once."""
        self._stopped.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def work(self) -> None:
        """A thread's loop: files from the shared queue over one connection."""
        conn: _Connection | None = None
        faults = 0
        finished: list[Wanted] = []
        statuses: collections.Counter[int] = collections.Counter()
        try:
            while not self._stopped.is_set() and faults < FAULTS_IN_A_ROW:
                try:
                    item = self.todo.popleft()
                except IndexError:
                    break
                try:
                    conn = self._get(conn, item, statuses)
                except _NotPlain:  # its connection closed
                    conn = None
                    self.given_up.append(item)  # list.append is atomic: no lock needed
                    faults += 1
                    continue
                faults = 0
                finished.append(item)
                if len(finished) >= REPORT_EVERY:
                    self.report(finished)
                    finished = []
        finally:
            self._drop(conn)
            with self._lock:
                self.statuses.update(statuses)
            if finished:
                self.report(finished)

    def _get(self, conn: _Connection | None, item: Wanted,
             statuses: collections.Counter[int]) -> _Connection | None:
        """`item` on `conn` (opened when None; opened again once when the server had closed
        it while idle); the connection to use next (None: open a new one). On _NotPlain the
        connection is closed."""
        fresh = conn is None
        try:
            while True:
                if conn is None:
                    conn = self._open()
                try:
                    reusable = self._exchange(conn, item, statuses)
                except _Stale:
                    if fresh:
                        raise _NotPlain from None
                    self._drop(conn)
                    conn, fresh = None, True
                    continue
                except _Unauthorized:
                    self.headers = self._renewed(self.headers)
                    try:
                        reusable = self._exchange(conn, item, statuses)
                    except (_Stale, _Unauthorized):
                        raise _NotPlain from None
                if not reusable:
                    self._drop(conn)
                    return None
                return conn
        except _NotPlain:
            self._drop(conn)
            raise

    def _renewed(self, stale: dict[str, str]) -> dict[str, str]:
        """The headers with a renewed token, from the loop (where the transport renews it)."""
        future = asyncio.run_coroutine_threadsafe(self.source.plain_headers(stale), self.loop)
        try:
            return future.result(self.source.timeout_s)
        except Exception:
            future.cancel()
            raise _NotPlain from None

    def _open(self) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.source.timeout_s)
        except OSError:
            raise _NotPlain from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except OSError:
            sock.close()
            raise _NotPlain from None
        conn = _Connection(sock)
        with self._lock:
            self._sockets.add(sock)
        if self._stopped.is_set():  # stopped while connecting: stop() did not see this socket
            self._drop(conn)
            raise _NotPlain
        return conn

    def _drop(self, conn: _Connection | None) -> None:
        if conn is not None:
            with self._lock:
                self._sockets.discard(conn.sock)
            conn.sock.close()

    def _exchange(self, conn: _Connection, item: Wanted, statuses: collections.Counter[int]) -> bool:
        """One GET of `item` on `conn`, its body written to `item.dest` and checked; whether
        the connection can carry the next request."""
        lines = [f"GET {self.prefix}{item.path} HTTP/1.1", f"Host: {self.host_header}",
                 "Accept-Encoding: identity", *(f"{k}: {v}" for k, v in self.headers.items())]
        try:
            conn.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            status, headers = conn.read_head()
        except _Stale:
            raise
        except OSError:  # reset or refused before a byte of the reply: a kept-alive one gone stale
            if conn.replies and conn.held == 0:
                raise _Stale from None
            raise _NotPlain from None
        except (ValueError, UnicodeError):
            raise _NotPlain from None
        statuses[status] += 1
        length = _plain_length(headers)
        closing = (headers.get("connection") or "").lower() == "close"  # HTTP/1.0 says so too
        if status == 401 and length is not None and length <= BUFFER_BYTES and not closing:
            conn.skip(length)  # the connection stays usable for the repeat
            raise _Unauthorized
        if status != 200 or length is None or (item.max_bytes is not None and length > item.max_bytes):
            raise _NotPlain
        conn.body_into(item, length, self._stopped)
        conn.replies += 1
        return not closing and conn.held == 0  # bytes past the body: a server not to trust further


class _Connection:
    """One socket and what was received of it but not used yet (``buffer[start:end]``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray(HEAD_MAX + 4 + BUFFER_BYTES)  # a head and a buffer's worth of body
        self.view = memoryview(self.buffer)
        self.start = self.end = 0
        self.replies = 0  # plain replies read whole: a fault before the next one's first byte is staleness

    @property
    def held(self) -> int:
        """Bytes received past what was used."""
        return self.end - self.start

    def _room(self, want: int) -> None:
        """Make buffer[start:start + want] fit in the buffer (the held bytes moved to its front)."""
        if self.start == self.end:
            self.start = self.end = 0
        elif self.start + want > len(self.buffer):
            held = bytes(self.view[self.start:self.end])
            self.buffer[:len(held)] = held
            self.start, self.end = 0, len(held)

    def read_head(self) -> tuple[int, Headers]:
        """The status and headers (names lowercased) of the next reply; _Stale when the
        server closed the connection before sending any of it."""
        self._room(HEAD_MAX + 4)
        while True:
            end = self.buffer.find(b"\r\n\r\n", self.start, self.end)
            if end >= 0:
                break
            if self.held >= HEAD_MAX:
                raise ValueError("reply head too long")
            got = self.sock.recv_into(self.view[self.end:self.start + HEAD_MAX + 4])
            if not got:
                if self.held == 0:
                    raise _Stale
                raise ValueError("connection closed in the reply's head")
            self.end += got
        head = self.buffer[self.start:end].decode("latin-1")
        self.start = end + 4
        status, _reason, headers = parse_head(head)
        return status, headers

    def _fill(self, want: int, stopped: threading.Event | None = None) -> memoryview:
        """The next `want` bytes (at most BUFFER_BYTES), received as needed, taken from what
        is held (_NotPlain when the server closes first)."""
        self._room(want)
        while self.end - self.start < want:
            if stopped is not None and stopped.is_set():
                raise _NotPlain
            got = self.sock.recv_into(self.view[self.end:self.start + want])
            if not got:
                raise _NotPlain
            self.end += got
        taken = self.view[self.start:self.start + want]
        self.start += want
        return taken

    def skip(self, length: int) -> None:
        """Read and drop a body of `length` bytes (a refusal's)."""
        try:
            self._fill(length)
        except OSError:
            raise _NotPlain from None

    def body_into(self, item: Wanted, length: int, stopped: threading.Event) -> None:
        """The body (`length` bytes) written to `item.dest` through a FileSink, a buffer at a
        time: hashed, checked for its length and sha256; the file removed on any failure."""
        sink = FileSink(item.dest, durable=False, in_place=True)
        try:
            left = length
            while left > 0:
                want = min(left, BUFFER_BYTES)
                sink.write([self._fill(want, stopped)])
                left -= want
            sink.finish([], length, item.sha256)
        except (OSError, Mismatch):
            raise _NotPlain from None
        finally:
            sink.discard()


def _plain_length(headers: Headers) -> int | None:
    """The body's length when the reply is plain (one Content-Length, no transfer or content
    coding); None otherwise."""
    coding = (headers.get("content-encoding") or "identity").lower()
    if "transfer-encoding" in headers or coding != "identity":
        return None
    value = headers.get("content-length") or ""
    return int(value) if value.isdigit() else None


def _host_header(host: str, port: int, tls: ssl.SSLContext | None) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == (443 if tls is not None else 80) else f"{name}:{port}"
