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
_known: dict[tuple[str, int, int, int, int], str] = {}
_known_lock = threading.Lock()


def _identity(path: Path) -> tuple[str, int, int, int, int]:
    # The same path, inode, size and modification time: the same bytes, unless someone
    # rewrote the file in place within one tick of the file system's clock.
    st = os.stat(path)
    return os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def remember_digest(path: Path, size: int, sha256: str) -> None:
    """Record that the file at `path`, just written, holds `size` bytes with `sha256` (taken
    while it was written); :func:`known_digest` gives it back while the file is unchanged."""
    key = _identity(path)
    if key[3] != size:
        return
    with _known_lock:
        _known[key] = sha256
        while len(_known) > _KNOWN_MAX:
            del _known[next(iter(_known))]


def known_digest(path: Path) -> tuple[int, str] | None:
    """The size and sha256 :func:`remember_digest` recorded for this very file (the same
    path, inode, size and modification time), taken out of the record; None if there is none."""
    key = _identity(path)
    with _known_lock:
        sha256 = _known.pop(key, None)
    return None if sha256 is None else (key[3], sha256)
