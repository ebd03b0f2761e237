"""Flushing to the disk: what makes a write survive a power loss (STYLE.md item 16).

Shared by the daemon's state and journal and by the embedded server's stored files.
"""

from __future__ import annotations

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
