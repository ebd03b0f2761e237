"""A dataset's files as a zip or tar.gz archive, streamed: never built whole in memory or on disk.

A worker thread writes the archive with the standard library (``zipfile``
and ``tarfile`` both write to a stream that cannot seek) into a
:class:`ChunkPipe`, which hands it to the event loop in chunks of about
``CHUNK_BYTES``. At most ``DEPTH`` chunks wait at once, so a download of any
size holds a few MiB, and a slow client slows the thread down rather than
filling memory.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import shutil
import tarfile
import threading
import time
import zipfile
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

CHUNK_BYTES = 1 << 20
DEPTH = 4
WAKE_S = 0.2  # how often a writer waiting for room checks whether its reader went away
FILETYPES = ("zip", "tar.gz")
ZIP_EPOCH_S = 315532800 + 86400  # zip dates start in 1980 (a day's margin for time zones)


class ArchiveCancelled(Exception):
    """The reader went away; the writing thread stops at its next write."""


@dataclass(frozen=True)
class Member:
    """One file of the archive: its name in it (``a/b.png`` for one in a folder), where its
    bytes are, and how many; or, for a file made for the download (a labels file), its `data`."""

    name: str
    path: Path | None
    size: int
    data: bytes | None = None

    @classmethod
    def made(cls, name: str, data: bytes) -> Member:
        return cls(name, None, len(data), data)

    def mtime(self) -> float:
        """The upload's time (the stored file's mtime); now for a file made for the download."""
        return time.time() if self.path is None else self.path.stat().st_mtime

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data or b"") if self.path is None else self.path.open("rb")


class ChunkPipe(io.RawIOBase):
    """A write-only, unseekable file for one writer thread, read by the event loop in chunks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._slots = threading.Semaphore(DEPTH)
        self._buffer = bytearray()
        self._cancelled = False
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._cancelled:
            raise ArchiveCancelled()
        view = memoryview(data)
        self._buffer += view
        if len(self._buffer) >= CHUNK_BYTES:
            self._push(bytes(self._buffer))
            self._buffer.clear()
        return view.nbytes

    def _push(self, chunk: bytes) -> None:
        # Waits while DEPTH chunks wait for the reader; looks up now and then, so that a
        # reader that went away (cancel) never leaves this thread waiting for good.
        while not self._slots.acquire(timeout=WAKE_S):
            if self._cancelled:
                raise ArchiveCancelled()
        if self._cancelled:
            raise ArchiveCancelled()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)

    def finish(self, error: BaseException | None = None) -> None:
        """Called by the writer, once: flush what is left and mark the end (or the failure)."""
        self.error = error
        try:
            if error is None and self._buffer:
                self._push(bytes(self._buffer))
        except ArchiveCancelled:
            return
        finally:
            self._buffer.clear()
        # The end marker takes no slot: the reader must always be able to see it.
        if not self._cancelled:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    def cancel(self) -> None:
        """Called by the reader when it stops early: wake the writer so that it gives up."""
        self._cancelled = True
        self._slots.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                return
            self._slots.release()
            yield chunk


def write_archive(pipe: ChunkPipe, filetype: str, members: Sequence[Member]) -> None:
    """Write `members` to `pipe` as a `filetype` archive (run in a thread); reports to pipe.finish."""
    try:
        if filetype == "zip":
            _write_zip(pipe, members)
        else:
            _write_tar(pipe, members)
    except ArchiveCancelled:
        return  # nobody is reading any more
    except Exception as e:  # a file gone from the data directory, a full disk: the reader reports it
        pipe.finish(e)
    else:
        pipe.finish()


# Files whose formats are compressed already: stored in a zip, where deflate would cost the
# server's CPU (about 20 s a GiB) for a percent or two.
COMPRESSED_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".png", ".gif", ".webp", ".jp2", ".heic", ".avif", ".zip", ".gz", ".tgz",
    ".bz2", ".xz", ".zst", ".7z", ".rar", ".mp3", ".mp4", ".m4a", ".ogg", ".opus", ".flac",
    ".webm", ".mkv", ".avi", ".mov"})


def zip_method(name: str) -> int:
    """How a member called `name` goes into a zip: stored when its format is compressed
    already (by its suffix), else deflated."""
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    return zipfile.ZIP_STORED if suffix in COMPRESSED_SUFFIXES else zipfile.ZIP_DEFLATED


def _write_zip(pipe: ChunkPipe, members: Sequence[Member]) -> None:
    # Deflate at level 1 (speed wins), and only what is not compressed already (zip_method).
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for member in members:
            # Dated by the upload (the stored file's mtime), not 1980.
            when = time.localtime(max(member.mtime(), ZIP_EPOCH_S))[:6]
            info = zipfile.ZipInfo(member.name, date_time=when)
            info.compress_type = zip_method(member.name)
            info.file_size = member.size
            info.external_attr = 0o644 << 16
            with member.open() as source, \
                    archive.open(info, "w", force_zip64=member.size >= zipfile.ZIP64_LIMIT) as target:
                shutil.copyfileobj(source, target, CHUNK_BYTES)


def _write_tar(pipe: ChunkPipe, members: Sequence[Member]) -> None:
    # gzip at level 1, as for zip (tarfile's own "w|gz" stream is fixed at level 9: several
    # times slower, for images that hardly shrink).
    with gzip.GzipFile(fileobj=pipe, mode="wb", compresslevel=1, mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.size = member.size
            info.mode = 0o644
            info.mtime = int(member.mtime())
            with member.open() as source:
                archive.addfile(info, source)


async def stream_archive(filetype: str, members: Sequence[Member]) -> AsyncGenerator[bytes, None]:
    """The archive's bytes as they are made. Raises the writer's error if it failed part-way."""
    pipe = ChunkPipe(asyncio.get_running_loop())
    # A thread of its own rather than the default executor: a slow download must not take
    # a slot that short jobs (password checks, file writes) are waiting for.
    thread = threading.Thread(target=write_archive, args=(pipe, filetype, members),
                              name="ufdl-archive", daemon=True)
    thread.start()
    try:
        async for chunk in pipe.chunks():
            yield chunk
    finally:
        pipe.cancel()
    if pipe.error is not None:
        raise pipe.error
