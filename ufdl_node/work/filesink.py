"""A download's bytes onto disk in few thread calls: written, hashed, checked, renamed.

:class:`FileSink` is what :meth:`ServerAccess.download <.server_access.ServerAccess.download>`
writes a reply into. The event loop only gathers the body's chunks; a thread writes them
and feeds the sha256 (which releases the GIL) in batches of up to :data:`BATCH_BYTES`,
so a file of a dataset (a few hundred KiB) costs one thread call in all: the temporary
file made, the bytes written and hashed, the length and hash checked, the file synced
(when durable) and renamed over its destination.

Crash-safety: the destination's name is only ever given to complete bytes (a checked
temporary file, renamed). With ``durable=True`` the bytes are fsynced before the rename,
so that after a power loss the name holds them whole. ``durable=False`` leaves that to the
caller, who must sync the file system (:func:`sync_filesystem`) before it gives the file
a name that promises its content (what the dataset cache does for a batch of files at
once: one sync instead of one fsync a file, which costs ~5 ms each on a plain disk).
With ``in_place=True`` the destination is a staging name of the caller's own, which
nothing reads until the caller renames it (:class:`NamedAfterSync`): it is written
directly (created anew, read-only), with no temporary file and no rename of its own, and
removed when the download fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

BATCH_BYTES = 4 << 20  # bytes a thread call writes at most (a small file: all of it)
_IOV_MAX = 1024  # the fewest buffers one writev takes (POSIX's minimum for IOV_MAX)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)  # a file in place: new


class Mismatch(Exception):
    """The bytes written are not the ones promised (their length or their sha256)."""


class FileSink:
    """A temporary file beside `target` that becomes `target` once complete.

    :meth:`write` and :meth:`finish` block (call them in a thread, one at a time);
    :meth:`discard` never waits: safe on the event loop, also when the task awaiting a
    thread's write is cancelled (the thread then removes the file once it is done, so
    that its descriptor is never closed under it). `in_place`: write `target` itself (see
    the module's docstring).
    """

    def __init__(self, target: Path, *, durable: bool = True, in_place: bool = False) -> None:
        self.target = target
        self.durable = durable
        self.in_place = in_place
        self.size = 0
        self._digest = hashlib.sha256()
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._busy = threading.Lock()  # held by the thread at work on the file
        self._abandoned = False

    def write(self, chunks: Sequence[bytes | memoryview]) -> None:
        """Append `chunks` (in a thread), hashing them on the way."""
        self._enter()
        try:
            self._write(chunks)
        finally:
            self._leave()

    def _enter(self) -> None:
        self._busy.acquire()
        if self._abandoned:
            self._busy.release()
            raise Mismatch("the download was abandoned")

    def _leave(self) -> None:
        self._busy.release()
        if self._abandoned:  # discarded while this thread worked: the cleanup is this thread's
            self.discard()

    def _write(self, chunks: Sequence[bytes | memoryview]) -> None:
        if self._fd is None:
            self._fd, self._tmp = self._open()
        for chunk in chunks:
            self._digest.update(chunk)
        total = sum(map(len, chunks))
        if len(chunks) > _IOV_MAX:
            chunks = [b"".join(chunks)]
        written = os.writev(self._fd, chunks) if chunks else 0  # one system call for the batch
        if written < total:  # a short write (a full disk says so on the next one): the rest
            view = memoryview(b"".join(chunks))[written:]
            while view:
                view = view[os.write(self._fd, view):]
        self.size += total

    def _open(self) -> tuple[int, Path]:
        """A new temporary file beside the target, or the target itself when in place (its
        directory made when missing)."""
        for attempt in (1, 2):
            try:
                if self.in_place:
                    return self._create(), self.target
                fd, name = tempfile.mkstemp(prefix=f"{self.target.name}.", suffix=".part",
                                            dir=self.target.parent)
                return fd, Path(name)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                self.target.parent.mkdir(parents=True, exist_ok=True)
        raise AssertionError("unreachable")

    def _create(self) -> int:
        """The target made anew; a file already there is a crashed run's leftover under the
        same staging name (the name is the caller's own): replaced, as a rename would."""
        try:
            return os.open(self.target, _CREATE, 0o444)
        except FileExistsError:
            self.target.unlink(missing_ok=True)
            return os.open(self.target, _CREATE, 0o444)

    def finish(self, chunks: Sequence[bytes | memoryview], expected: int | None, sha256: str | None) -> Path:
        """Write the last `chunks`, check the length against `expected` and the hash
        against `sha256` (Mismatch), sync when durable, and rename over the target."""
        self._enter()
        try:
            return self._finish(chunks, expected, sha256)
        finally:
            self._leave()

    def _finish(self, chunks: Sequence[bytes | memoryview], expected: int | None, sha256: str | None) -> Path:
        self._write(chunks)
        assert self._fd is not None and self._tmp is not None
        if expected is not None and self.size != expected:
            raise Mismatch(f"download cut off: {self.size} of {expected} bytes")
        got = self._digest.hexdigest()
        if sha256 is not None and got != sha256.lower():
            raise Mismatch(f"sha256 {got[:12]}... is not the promised {sha256[:12]}...")
        if self.durable:
            os.fsync(self._fd)  # the cache must survive a crash whole
        os.close(self._fd)
        self._fd = None
        if not self.in_place:
            os.replace(self._tmp, self.target)
        self._tmp = None
        return self.target

    @property
    def sha256(self) -> str:
        """The hex sha256 of the bytes written so far."""
        return self._digest.hexdigest()

    def discard(self) -> None:
        """Close and remove the temporary file (nothing when there is none), now, or by
        the thread at work on it once it is done."""
        self._abandoned = True
        if not self._busy.acquire(blocking=False):
            return  # a thread is writing: it sees the flag when it is done
        try:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
                self._tmp = None
        finally:
            self._busy.release()


def _syncfs() -> object | None:
    """libc's syncfs, from the symbols already loaded (``ctypes.util.find_library`` would run
    ``ldconfig -p``, a process, at every import of this module)."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:
        return None


_SYNCFS = _syncfs()


FSYNC_EACH_MAX = 4  # a batch of up to this many files is fsynced file by file


def fsync_file(path: Path) -> None:
    """fsync the file at `path` (blocks: call it in a thread)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush every written byte of the file system that holds `path` to the disk (blocks:
    call it in a thread): Linux's ``syncfs``, else ``sync``. One call makes a whole batch
    of files durable, where an ``fsync`` each costs a disk flush each."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:  # type: ignore[operator]
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}")
    finally:
        os.close(fd)


class NamedAfterSync:
    """Files written without an fsync each (``durable=False``), given their final names a
    batch at a time after one :func:`sync_filesystem` (an fsync each for a batch of at most
    :data:`FSYNC_EACH_MAX`, where a sync of every dirty page on the disk could cost more):
    a final name never holds bytes that a power loss could cut short.

    :meth:`stage` gives the name to download a file to, in the one folder `staging` (on
    the file system of the final names: ext4 spreads files made in many folders over the
    disk, which cost 5x the kernel's CPU of the same files made in one); :meth:`done`
    records it complete (and commits the batch when it has `batch_files` files);
    :meth:`commit` names what is left (at the end), making the final names' folders;
    :meth:`drop` removes the staged files that were never named (after a failure). A
    crash leaves staged files (never a final name), which nothing reads and
    :func:`sweep_staging` removes later. Made read-only before their rename when `read_only`.

    With `link`, a file keeps the name it was written under (one the caller gave to
    :meth:`done`, say in a job's own directory) and the final name becomes a hard link to
    it: one directory entry less a file than a staging name and a rename, and the same
    promise (the final name only after the sync). :meth:`drop` then leaves the files alone.
    """

    def __init__(self, staging: Path, *, batch_files: int = 256, read_only: bool = True,
                 link: bool = False) -> None:
        self.staging = staging
        self.batch_files = batch_files
        self.read_only = read_only
        self.link = link
        self._pending: list[tuple[Path, Path]] = []
        self._count = 0
        self._prefix = os.path.join(staging, "")
        self._tag = f"{os.getpid()}-{id(self):x}"

    def stage(self, final: Path) -> Path:
        """The name in the staging folder to write `final` to first (unique to this batch)."""
        self._count += 1
        return Path(f"{self._prefix}{final.name}.{self._tag}-{self._count}{STAGED_SUFFIX}")  # no joinpath:
        # pathlib's join costs ~10 µs, a dataset has thousands of files

    async def done(self, staged: Path, final: Path) -> None:
        """`staged` is complete; named `final` with the batch it falls into."""
        self._pending.append((staged, final))
        if len(self._pending) >= self.batch_files:
            await self.commit()

    async def commit(self) -> None:
        """Sync, then name every pending file."""
        batch, self._pending = self._pending, []
        if batch:
            try:
                await asyncio.to_thread(self._name, batch)
            except BaseException:
                self._pending.extend(batch)  # left for drop()
                raise

    def _name(self, batch: list[tuple[Path, Path]]) -> None:
        if len(batch) <= FSYNC_EACH_MAX:  # a few files: their own flushes, not every dirty page's
            for staged, _final in batch:
                fsync_file(staged)
        else:
            sync_filesystem(batch[0][0])  # the staged files' file system (the final names')
        name = _link if self.link else os.replace
        for staged, final in batch:
            if self.read_only:
                staged.chmod(0o444)
            try:
                name(staged, final)
            except FileNotFoundError:  # the final name's folder is new (or the staged file gone)
                final.parent.mkdir(parents=True, exist_ok=True)
                name(staged, final)

    def drop(self) -> None:
        """Remove the staged files not named yet (with `link`, they are the caller's: kept)."""
        if not self.link:
            for staged, _final in self._pending:
                staged.unlink(missing_ok=True)
        self._pending = []


def _link(source: Path, name: Path) -> None:
    """`name` made a hard link to `source`; a file already there (the same content, named by
    another job) is left as it is."""
    try:
        os.link(source, name)
    except FileExistsError:
        pass


STAGED_SUFFIX = ".unsynced"
STALE_AFTER_S = 86400.0  # a staged file this old is a crash's leftover, not a download under way


def sweep_staging(staging: Path, older_than_s: float = STALE_AFTER_S) -> int:
    """Remove what crashes left in `staging` (staged and temporary files older than
    `older_than_s`; blocks: call it in a thread); how many went. Nothing else is touched."""
    removed = 0
    limit = time.time() - older_than_s
    try:
        entries = list(os.scandir(staging))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.endswith((STAGED_SUFFIX, ".part")) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
    return removed
