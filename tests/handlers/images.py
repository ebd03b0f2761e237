"""Tiny real PNG images for dataset tests, made with zlib alone."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def png(red: int, green: int, blue: int, size: int = 2) -> bytes:
    """A `size` x `size` PNG of one colour (8-bit RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((red, green, blue)) * size  # filter byte 0, then the pixels
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * size))
            + chunk(b"IEND", b""))


def image_folder(root: Path, per_label: dict[str, int]) -> Path:
    """`root` holding a sub-folder per label with that many distinct PNGs (``<label><i>.png``)."""
    for n, (label, count) in enumerate(sorted(per_label.items())):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / label / f"{label}{i}.png").write_bytes(png(40 * n % 256, i % 256, 200))
    return root
