"""Handler calls to any resource of the job server, with bounded retries.

:class:`ServerAccess` is what a handler's ``ctx.server`` is: JSON calls and
streamed downloads over a narrow :class:`ServerIO` (one exchange, no retries).
A connection fault, a timeout or a 5xx is retried with exponential backoff and
jitter for ``retry_s`` seconds from the first fault (a download that got further
than ever before starts that budget anew); then the call fails the job with a
one-line :class:`~ufdl_node.errors.JobFailed`. A refusal (4xx) is raised at
once as the typed exception of :mod:`ufdl_node.errors` (``NotFound``,
``PermissionDenied``, ...) so that the caller can say what was missing
("dataset 42 not found").

A download is written to a temporary ``<dest>.<random>.part`` beside `dest`
and renamed over `dest` only once it is complete (its ``Content-Length`` met,
its sha256 matching when one is known), so a partial file is never used; a
download cut off mid-way is retried from the start.

:class:`ServerIO` has one implementation, :class:`ufdl_node.transport.NodeIO`: the
node's one HTTP path (token renewal, ``Node-Id``, error mapping), one exchange at a time.
Retries wait as everywhere: the server's ``Retry-After``, else the one backoff
(:func:`ufdl_node.backoff.retry_delay`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from ..backoff import Backoff, retry_delay
from ..errors import DETAIL_LIMIT, JobFailed, TransientError
from ..logs import get_logger, one_line
from .filesink import BATCH_BYTES, FileSink, Mismatch
from .plainget import PlainSource, Wanted, fetch_plain

log = get_logger("ufdl_node.work")

CHUNK_BYTES = 1 << 20
_MAX_CORRUPT_ATTEMPTS = 3  # a server that keeps sending other bytes than it promised is not a blip


class ChunkSource(Protocol):
    """The body of a streamed reply (aiohttp's ``StreamReader`` is one)."""

    def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        """The body in chunks of at most `n` bytes."""
        ...


class Reply(Protocol):
    """A 2xx reply whose body is still to be read (aiohttp's ``ClientResponse`` is one)."""

    @property
    def status(self) -> int:
        """The HTTP status."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The reply's headers."""
        ...

    @property
    def content(self) -> ChunkSource:
        """The body."""
        ...


class ServerIO(Protocol):
    """One exchange with the job server, authenticated, with no retries.

    Both calls raise :class:`~ufdl_node.errors.TransientError` for a fault worth
    retrying (connection, timeout, 5xx, 429, a body cut off while it is read) and a
    :class:`~ufdl_node.errors.RefusedError` subclass for a 4xx. `json` is the request
    body (None: no body); `params` the query.
    """

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, str] | None = None) -> Any:
        """The decoded JSON body of a 2xx reply (None when the body is empty)."""
        ...

    def stream(self, method: str, path: str, *, json: Any = None,
               params: Mapping[str, str] | None = None) -> AbstractAsyncContextManager[Reply]:
        """A 2xx reply whose body the caller streams."""
        ...


_SINK_THREADS = 8  # threads that write downloads (a dataset's files: `parallel` of them at once)
_sink_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _sink_pool
    if _sink_pool is None:
        _sink_pool = concurrent.futures.ThreadPoolExecutor(_SINK_THREADS, thread_name_prefix="ufdl-sink")
    return _sink_pool


async def _settled(call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)` in a thread; when cancelled, the cancel waits for the thread to end
    first, so that a failed fetch leaves no thread still writing into the cache (and the
    cleanup after it finds the file as the thread left it). A call not started yet when
    the cancel comes never runs. (One future and one wake-up of the loop: a dataset makes
    one such call a file.)"""
    work = _pool().submit(call, *args)
    try:
        return await asyncio.wrap_future(work)
    except asyncio.CancelledError:
        if not work.done():  # running: cancelling it failed
            with contextlib.suppress(BaseException):
                await asyncio.wait([asyncio.wrap_future(work)])
        raise


class _Corrupt(TransientError):
    """The bytes that came are not the ones promised (length or sha256)."""


class ServerAccess:
    """Calls to any server resource for a handler: JSON, or streamed to a file.

    `io` makes one exchange; this class retries transient faults for `retry_s` seconds
    from a call's first fault (backoff from `initial_delay_s`, capped at `max_delay_s`,
    with jitter), then raises JobFailed. Refusals are raised as the typed errors of
    :mod:`ufdl_node.errors`.
    """

    def __init__(self, io: ServerIO, *, retry_s: float, initial_delay_s: float = 0.5,
                 max_delay_s: float = 15.0, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.io = io
        self.retry_s = retry_s
        self.initial_delay_s = initial_delay_s
        self.max_delay_s = max_delay_s
        self.chunk_bytes = chunk_bytes

    async def json(self, method: str, path: str, *, json: Any = None,
                   params: Mapping[str, str] | None = None, what: str | None = None,
                   retry: bool = True) -> Any:
        """The JSON reply of `method` `path` (None for an empty body).

        `what` names the call in a failure ("dataset 42"); `retry=False` for a call that
        must not be repeated blindly (one that is not idempotent).
        """
        async def once() -> Any:
            return await self.io.request(method, path, json=json, params=params)

        return await self._retrying(once, what or f"{method} {path}", retry)

    async def get(self, path: str, *, params: Mapping[str, str] | None = None,
                  what: str | None = None) -> Any:
        """``GET path`` as JSON."""
        return await self.json("GET", path, params=params, what=what)

    async def post(self, path: str, json: Any = None, *, what: str | None = None) -> Any:
        """``POST path`` with a JSON body, as JSON (retried: use :meth:`json` with
        ``retry=False`` for a call that is not idempotent)."""
        return await self.json("POST", path, json=json, what=what)

    async def list_records(self, path: str, spec: Mapping[str, Any], *, what: str | None = None) -> list[Any]:
        """``POST path`` with a filter spec (a ``.../list`` call): the list it answers."""
        reply = await self.json("POST", path, json=dict(spec), what=what)
        if not isinstance(reply, list):
            raise JobFailed(f"{what or path}: the server answered {one_line(repr(reply), 80)}, not a list")
        return reply

    async def download(self, method: str, path: str, dest: Path | str, *, json: Any = None,
                       params: Mapping[str, str] | None = None, sha256: str | None = None,
                       max_bytes: int | None = None, what: str | None = None,
                       durable: bool = True, in_place: bool = False) -> Path:
        """Stream the reply of `method` `path` to `dest` (its directory is created).

        The bytes go to a temporary ``.part`` file beside `dest`, renamed over `dest`
        only when complete and, given `sha256`, verified (see :mod:`.filesink`: written
        and hashed in a thread, a small file in one thread call). A cut-off transfer is
        retried within the retry budget; more than `max_bytes` bytes fails the job.
        `durable=False` skips the fsync before the rename: the caller syncs a batch
        itself (:func:`.filesink.sync_filesystem`) before it relies on the file.
        `in_place=True` writes `dest` itself, created new and read-only, for a staging name
        that nothing reads before the caller renames it (:class:`.filesink.NamedAfterSync`);
        removed when the download fails.
        """
        target = dest if isinstance(dest, Path) else Path(dest)  # its folder: made by the writing thread
        label = what or f"{method} {path}"
        corrupt = 0
        received = [0]  # bytes of the attempt under way
        best = 0  # the most bytes one attempt got

        async def once() -> Path:
            nonlocal corrupt
            received[0] = 0
            try:
                return await self._download_once(method, path, target, json, params, sha256, max_bytes,
                                                 label, received, durable, in_place)
            except _Corrupt:
                corrupt += 1
                if corrupt >= _MAX_CORRUPT_ATTEMPTS:
                    raise JobFailed(f"{label}: the server sent other bytes than promised "
                                    f"{corrupt} times") from None
                raise

        def progressed() -> bool:
            nonlocal best
            further, best = received[0] > best, max(best, received[0])
            return further

        return await self._retrying(once, label, True, progressed)

    async def fetch_plain(self, items: list[Wanted], *, parallel: int,
                          on_done: Callable[[list[Wanted]], Awaitable[None]]) -> list[Wanted]:
        """Many files at once over plain GETs in threads (:mod:`.plainget`), when the server
        connection offers them; `on_done` takes each batch of finished files. Returns what
        is left for :meth:`download` (every item when there are no plain GETs): nothing
        here fails a job or retries."""
        if not items or not isinstance(self.io, PlainSource):
            return list(items)
        return await fetch_plain(self.io, items, parallel=parallel, on_done=on_done)

    async def _download_once(self, method: str, path: str, target: Path, json: Any,
                             params: Mapping[str, str] | None, sha256: str | None,
                             max_bytes: int | None, label: str, received: list[int],
                             durable: bool = True, in_place: bool = False) -> Path:
        sink = FileSink(target, durable=durable, in_place=in_place)
        try:
            async with self.io.stream(method, path, json=json, params=params) as reply:
                expected = _expected(reply.headers, max_bytes, label)
                pending: list[bytes] = []  # written with the checks, in one thread call, at the end
                size = 0
                async for chunk in reply.content.iter_chunked(self.chunk_bytes):
                    pending.append(chunk)
                    size += len(chunk)
                    received[0] += len(chunk)
                    if max_bytes is not None and received[0] > max_bytes:
                        raise JobFailed(f"{label}: more than the limit of {max_bytes} bytes")
                    if size >= BATCH_BYTES:  # a large file: written a batch at a time
                        await _settled(sink.write, pending)
                        pending, size = [], 0
            try:
                return await _settled(sink.finish, pending, expected, sha256)
            except asyncio.CancelledError:  # named, but nobody takes it: no file left behind
                target.unlink(missing_ok=True)
                raise
        except Mismatch as e:
            raise _Corrupt(label, str(e)) from None
        finally:
            sink.discard()

    async def _retrying(self, call: Callable[[], Awaitable[Any]], label: str, retry: bool,
                        progressed: Callable[[], bool] = lambda: False) -> Any:
        """`call` until it succeeds, retrying transient faults for retry_s seconds from the
        first fault; a download that got further than ever before starts the budget anew
        (a long transfer cut late is worth another try; one cut ever earlier is not)."""
        deadline: float | None = None
        attempt = 0
        backoff = Backoff(self.initial_delay_s, self.max_delay_s)
        while True:
            attempt += 1
            try:
                return await call()
            except TransientError as e:
                now = time.monotonic()
                if deadline is None or progressed():
                    deadline = now + self.retry_s
                left = deadline - now
                if not retry:
                    raise JobFailed(f"{label}: {one_line(e, DETAIL_LIMIT)}") from None
                if left <= 0:
                    raise JobFailed(f"{label}: the server did not answer properly for {self.retry_s:g} s "
                                    f"({attempt} tries): {one_line(e, DETAIL_LIMIT)}") from None
                delay = retry_delay(e, backoff) or 0.0  # no deadline of its own: never None
                log.warning("work_retry", call=label, attempt=attempt, delay_s=round(delay, 3),
                            error=one_line(e, DETAIL_LIMIT))
                await asyncio.sleep(min(delay, left))


def _expected(headers: Mapping[str, str], max_bytes: int | None, label: str) -> int | None:
    """The body's length from the reply's headers (None when unknown or encoded); JobFailed
    when it is more than `max_bytes`."""
    expected = _content_length(headers)
    if expected is not None and headers.get("Content-Encoding", "identity").lower() != "identity":
        expected = None  # the length is of the encoded body; the sha256 still holds
    if max_bytes is not None and expected is not None and expected > max_bytes:
        raise JobFailed(f"{label}: {expected} bytes is more than the limit of {max_bytes}")
    return expected


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)
