"""Flushing to the disk: what makes a write survive a power loss (STYLE.md item 16), and
what a file holds (its size and sha256), by which a kept file is recognised, and the
digests of files hashed while they were written (:func:`remember_digest`), so that a
zip made for an output is not read again to be staged.

Shared by the daemon's state and journal and by the embedded server's stored files.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries (a rename, a removal), to the disk
    (blocking: in a thread for a large file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


HASH_CHUNK = 1 << 20


def file_digest(path: Path) -> tuple[int, str]:
    """The size and sha256 of the file at `path` (blocking: call it in a thread)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


_KNOWN_MAX = 32  # a handler stages what it has just written: a few are plenty
_known: dict[tuple[int, int, int, int], str] = {}
_known_lock = threading.Lock()


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    # The same inode (a hard link shares it), size and modification time: the same bytes,
    # unless someone rewrote the file in place within one tick of the clock.
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def remember_digest(path: Path, size: int, sha256: str) -> None:
    """Record that the file at `path`, just written, holds `size` bytes with `sha256` (taken
    while it was written); :func:`known_digest` gives it back while the file is unchanged."""
    st = os.stat(path)
    if st.st_size != size:
        return
    with _known_lock:
        _known[_identity(st)] = sha256
        while len(_known) > _KNOWN_MAX:
            del _known[next(iter(_known))]


def known_digest(path: Path) -> tuple[int, str] | None:
    """The size and sha256 :func:`remember_digest` recorded for this very file (the same
    inode, size and modification time), taken out of the record; None if there is none."""
    st = os.stat(path)
    with _known_lock:
        sha256 = _known.pop(_identity(st), None)
    return None if sha256 is None else (st.st_size, sha256)
