"""Object masks for ``to-tf-od``: a polygon filled into a width × height mask, PNG-encoded,
as wai.annotations' tf plugin stores ``image/object/mask`` for instance segmentation (the
stock Mask R-CNN template). A pixel (x, y) is inside when the point at its integer
coordinates is inside or on the outline (even-odd rule along each row); the PNG is 8-bit
greyscale with 0 outside and 1 inside, compressed and checksummed with the standard
library's zlib.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

Point = tuple[int, int]
_EPSILON = 1e-6


def _crossings(polygon: Sequence[Point], y: float) -> list[float]:
    """Where the horizontal line at `y` crosses the polygon's edges (half-open in y), sorted."""
    found = []
    for (x0, y0), (x1, y1) in zip(polygon, [*polygon[1:], polygon[0]], strict=True):
        if (y0 <= y < y1) or (y1 <= y < y0):
            found.append(x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    return sorted(found)


def mask_rows(polygon: Sequence[Point], width: int, height: int) -> list[bytes]:
    """The mask of `polygon` in a width × height image, one row of bytes (0 or 1) per y.

    Each row is filled between pairs of crossings at y, just above and just below it, so
    that pixels on the outline (a box's bottom row, a vertex) are inside too."""
    rows = []
    for y in range(height):
        row = bytearray(width)
        for at in (y - _EPSILON, y, y + _EPSILON):
            crossings = _crossings(polygon, at)
            for left, right in zip(crossings[::2], crossings[1::2], strict=False):
                start, end = max(0, math.ceil(left - _EPSILON)), min(width - 1, math.floor(right + _EPSILON))
                if start <= end:
                    row[start:end + 1] = b"\x01" * (end - start + 1)
        rows.append(bytes(row))
    return rows


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_mask(polygon: Sequence[Point], width: int, height: int) -> bytes:
    """The mask of `polygon` as an 8-bit greyscale PNG (0 outside, 1 inside)."""
    raw = b"".join(b"\x00" + row for row in mask_rows(polygon, width, height))  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + \
        _chunk(b"IEND", b"")
