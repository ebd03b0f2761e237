"""Flushing to the disk: what makes a write survive a power loss (STYLE.md item 16), and
what a file holds (its size and sha256), by which a kept file is recognised.

Shared by the daemon's state and journal and by the embedded server's stored files.
"""

from __future__ import annotations

import hashlib
import os
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
