"""Image sizes from headers (ufdl_node.work.imagesize): PNG, JPEG, GIF, BMP, and what is none of them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.handlers.images import png
from ufdl_node.work.imagesize import NotAnImage, image_format, image_size


def jpeg(width: int, height: int, *, exif: int = 0) -> bytes:
    """A JPEG's markers up to its frame header: SOI, an APP1 of `exif` bytes, DQT, SOF0."""
    app1 = b"\xff\xe1" + struct.pack(">H", exif + 2) + b"\x00" * exif
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" * 65
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x00" * 9
    return b"\xff\xd8" + app1 + dqt + b"\xff\xff" + sof + b"\xff\xd9"


@pytest.mark.parametrize(("name", "data", "size"), [
    ("a.png", png(1, 2, 3, 7), (7, 7)),
    ("a.jpg", jpeg(640, 480), (640, 480)),
    ("big-exif.jpeg", jpeg(3, 5, exif=5000), (3, 5)),
    ("a.gif", b"GIF89a" + struct.pack("<HH", 12, 34) + b"\x00" * 20, (12, 34)),
    ("top-down.bmp", b"BM" + b"\x00" * 16 + struct.pack("<ii", 9, -8) + b"\x00" * 10, (9, 8)),
])
def test_the_size_comes_from_the_header(tmp_path: Path, name: str, data: bytes,
                                        size: tuple[int, int]) -> None:
    (tmp_path / name).write_bytes(data)
    assert image_size(tmp_path / name) == size


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0\x00", b"\xff\xd8junk",
                                  png(1, 2, 3)[:20], b"GIF89a" + b"\x00" * 20])
def test_what_is_no_image_we_read_is_not_an_image(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "x.png").write_bytes(data)
    with pytest.raises(NotAnImage):
        image_size(tmp_path / "x.png")


def test_the_format_comes_from_the_extension() -> None:
    formats = [image_format(Path(n)) for n in ("a.PNG", "b.jpeg", "c.jpg", "d.txt")]
    assert formats == ["png", "jpg", "jpg", None]
