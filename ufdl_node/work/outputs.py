"""Output helpers of the stock contracts: a zipped model or predictions, and ``metadata``.

A stock Train job's ``model`` output is a zip (of a directory, or of several
files under their base names), and stock templates add a ``metadata`` output
of type ``JSON``. These helpers write the file into the job's own directory
and hand it to `upload` (the job context's ``upload(name, type, path)``), so
the bytes that reach the server are the ones on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import JobFailed
from ..logs import one_line
from .archives import DEFAULT_COMPRESSION, check_compression, zip_directory, zip_files

Upload = Callable[[str, str, Path], Awaitable[None]]
METADATA_NAME = "metadata"
METADATA_TYPE = "JSON"


async def upload_zip(upload: Upload, name: str, type_: str, source: Path | str | Iterable[Path | str],
                     zip_path: Path | str, *, compression: str = DEFAULT_COMPRESSION) -> Path:
    """Zip `source` (a directory, or files stored under their base names) into `zip_path`
    and upload it as output NAME/TYPE; return the zip. Members are stored as they are by
    default; ``compression="deflate"`` compresses them (worth it for text, not weights).
    The zip is written in a thread and hashed as it is written (staging reads it no more)."""
    check_compression(compression, f"output {name!r}")
    what: Path | str | list[Path | str] = source if isinstance(source, (str, Path)) else list(source)
    target = await asyncio.to_thread(_zip_source, name, what, Path(zip_path), compression)
    await upload(name, type_, target)
    return target


def _zip_source(name: str, source: Path | str | list[Path | str], target: Path, compression: str) -> Path:
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return zip_directory(source, target, compression=compression)
    files = [source] if isinstance(source, (str, Path)) else source
    if not files:
        raise JobFailed(f"output {name!r}: no files to zip")
    return zip_files(files, target, compression=compression)


def write_json(value: Any, path: Path | str) -> Path:
    """`value` as a JSON file at `path`, written whole or not at all; JobFailed if it is not JSON."""
    target = Path(path)
    try:
        data = json.dumps(value).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise JobFailed(f"{target.name}: the value is not JSON ({one_line(e, 80)})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


async def upload_metadata(upload: Upload, metadata: Any, path: Path | str, *,
                          name: str = METADATA_NAME, type_: str = METADATA_TYPE) -> Path:
    """Write `metadata` as JSON to `path` (in a thread) and upload it as the ``metadata`` output."""
    target = await asyncio.to_thread(write_json, metadata, path)
    await upload(name, type_, target)
    return target
