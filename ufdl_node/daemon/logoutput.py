"""The job log as the stock UFDL job launcher uploads it: output ``log``, ``Compressed<JSON, 8>``.

The launcher's base executor (``AbstractJobExecutor``, ``waikato-ufdl/ufdl-job-launcher``)
declares ``log = ExtraOutput(Compressed(JSON(), compression))`` with its configured zip
compression (``compression = 8``, ZIP_DEFLATED, in its example configurations), and
uploads it at the end of every job: a zip with one member ``data`` holding a JSON list of
``{"<time>": entry}`` objects, an entry being ``{"msg": [line, ...]}`` for its messages
(``log_msg``). This node's job log is text lines (the handler's log and its subprocesses'
output); it goes up as one such entry, stamped with the time it was packed, so that what
reads a launcher's log reads this one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path

LOG_NAME = "log"
LOG_TYPE = "Compressed<JSON, 8>"  # str(Compressed(JSON(), 8)) in ufdl-job-types
LOG_MEMBER = "data"
LOG_COMPRESSION = zipfile.ZIP_DEFLATED  # 8


def pack_log(text_path: Path, zip_path: Path, *, when: datetime | None = None) -> Path:
    """Write the text log `text_path` as the launcher's log output to `zip_path` (whole or
    not at all); blocking: run it in a thread."""
    lines = text_path.read_text(encoding="utf-8", errors="replace").splitlines()
    stamp = str(when or datetime.now())  # the launcher's key: str(datetime.now())
    data = json.dumps([{stamp: {"msg": lines}}], indent=2)
    fd, tmp = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".part", dir=zip_path.parent)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", compression=LOG_COMPRESSION) as zf:
            zf.writestr(LOG_MEMBER, data)
        os.replace(tmp, zip_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return zip_path


def log_lines(content: bytes) -> list[str]:
    """The lines of a log output (what :func:`pack_log` writes, or a launcher's messages);
    ValueError when it is not one."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as zf:
            entries = json.loads(zf.read(LOG_MEMBER))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"not a {LOG_TYPE} log: {e}") from None
    lines: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        for value in entry.values() if isinstance(entry, dict) else []:
            if isinstance(value, dict) and isinstance(value.get("msg"), list):
                lines.extend(str(line) for line in value["msg"])
    return lines
