"""An image's width and height from its header: PNG, JPEG, GIF and BMP, with the standard library.

Object-detection datasets give each image its file type (``{"format", "dimensions"}``);
reading a few header bytes is enough for that, so no imaging library is needed.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

# JPEG start-of-frame markers (0xC0-0xCF, less DHT, JPG and DAC): they hold the size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".gif": "gif", ".bmp": "bmp"}


class NotAnImage(ValueError):
    """The file's header is not one of a PNG, JPEG, GIF or BMP image."""


def image_format(path: Path) -> str | None:
    """The format an image's extension names (``jpeg`` → ``jpg``), None for another file."""
    return FORMATS.get(path.suffix.lower())


def _jpeg(f: BinaryIO) -> tuple[int, int]:
    """The size in a JPEG's frame header; `f` is just past the start-of-image marker."""
    while True:
        byte = f.read(1)
        if byte != b"\xff":
            raise NotAnImage("a JPEG with a broken segment" if byte else "a JPEG without a frame header")
        while byte == b"\xff":  # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            raise NotAnImage("a JPEG cut short")
        marker = byte[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        head = f.read(2)
        if len(head) != 2:
            raise NotAnImage("a JPEG cut short")
        (length,) = struct.unpack(">H", head)
        if marker in _SOF:
            frame = f.read(5)
            if len(frame) != 5:
                raise NotAnImage("a JPEG cut short")
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        f.seek(length - 2, 1)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image at `path`; NotAnImage when its header is none we read."""
    with path.open("rb") as f:
        head = f.read(26)
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
            width, height = struct.unpack(">II", head[16:24])
        elif head.startswith((b"GIF87a", b"GIF89a")) and len(head) >= 10:
            width, height = struct.unpack("<HH", head[6:10])
        elif head.startswith(b"BM") and len(head) >= 26:
            width, raw_height = struct.unpack("<ii", head[18:26])
            height = abs(raw_height)  # negative: stored top-down
        elif head.startswith(b"\xff\xd8"):
            f.seek(2)
            width, height = _jpeg(f)
        else:
            raise NotAnImage("not a PNG, JPEG, GIF or BMP image")
    if width <= 0 or height <= 0:
        raise NotAnImage(f"an image of {width}x{height} pixels")
    return width, height
