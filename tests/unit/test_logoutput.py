"""The job log packed as the stock launcher uploads its own: a zip whose member ``data`` is JSON."""

from __future__ import annotations

import json
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from ufdl_node.daemon.logoutput import LOG_TYPE, log_lines, pack_log


def test_the_log_is_a_deflated_zip_of_the_launchers_json(tmp_path: Path) -> None:
    """One member 'data', ZIP_DEFLATED (the launcher's compression 8), holding
    [{"<str(datetime)>": {"msg": [lines]}}]; the type names that compression."""
    text = tmp_path / "job.log"
    text.write_text("INFO started\nepoch 1/2\n\u00e9t\u00e9 done\n", encoding="utf-8")
    packed = pack_log(text, tmp_path / "job.log.zip", when=datetime(2026, 1, 2, 3, 4, 5, 6))
    with zipfile.ZipFile(packed) as zf:
        assert [(i.filename, i.compress_type) for i in zf.infolist()] == [("data", zipfile.ZIP_DEFLATED)]
        assert json.loads(zf.read("data")) == [
            {"2026-01-02 03:04:05.000006": {"msg": ["INFO started", "epoch 1/2", "\u00e9t\u00e9 done"]}}]
    assert LOG_TYPE == "Compressed<JSON, 8>"
    assert log_lines(packed.read_bytes()) == ["INFO started", "epoch 1/2", "\u00e9t\u00e9 done"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_a_text_that_is_no_packed_log_is_refused() -> None:
    """log_lines of plain text: ValueError naming the type."""
    with pytest.raises(ValueError, match=r"not a Compressed<JSON, 8> log"):
        log_lines(b"INFO plain text")
