"""Output helpers: zipped outputs and the metadata output, handed to the job's upload."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from ufdl_node.errors import JobFailed
from ufdl_node.work.outputs import upload_metadata, upload_zip


class Uploads:
    """Records what a job would upload, with the bytes as they were at upload time."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str, bytes]] = []

    async def __call__(self, name: str, type_: str, path: Path) -> None:
        self.made.append((name, type_, path.read_bytes()))


async def test_directory_is_uploaded_as_one_zip(tmp_path: Path) -> None:
    """A model directory goes up as a zip of its files, relative paths kept."""
    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "model" / "weights.bin").write_bytes(b"W")
    (tmp_path / "model" / "sub" / "labels.txt").write_text("dog\ncat\n")
    uploads = Uploads()
    zipped = await upload_zip(uploads, "model", "Model<X>", tmp_path / "model",
                              tmp_path / "out" / "model.zip")
    (name, type_, data), = uploads.made
    assert (name, type_) == ("model", "Model<X>") and data == zipped.read_bytes()
    with zipfile.ZipFile(zipped) as zf:
        assert zf.namelist() == ["sub/labels.txt", "weights.bin"]


async def test_files_are_uploaded_zipped_under_their_base_names(tmp_path: Path) -> None:
    """Several files go up as one zip, each under its base name."""
    for n in ("a.txt", "b.txt"):
        (tmp_path / n).write_text(n)
    uploads = Uploads()
    zipped = await upload_zip(uploads, "predictions", "BLOB<'txt'>", [tmp_path / "b.txt", tmp_path / "a.txt"],
                              tmp_path / "predictions.zip")
    with zipfile.ZipFile(zipped) as zf:
        assert zf.namelist() == ["a.txt", "b.txt"]
    assert [u[0] for u in uploads.made] == ["predictions"]


async def test_zip_compression_is_stored_unless_deflate_is_asked_for(tmp_path: Path) -> None:
    """Model weights barely compress: stored by default; "deflate" on request; another word
    fails the job before anything is zipped or uploaded."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.txt").write_text("0.5 " * 1000)
    uploads = Uploads()
    stored = await upload_zip(uploads, "model", "Blob", tmp_path / "m", tmp_path / "stored.zip")
    deflated = await upload_zip(uploads, "model", "Blob", tmp_path / "m", tmp_path / "deflated.zip",
                                compression="deflate")
    with zipfile.ZipFile(stored) as zs, zipfile.ZipFile(deflated) as zd:
        assert zs.getinfo("w.txt").compress_type == zipfile.ZIP_STORED
        assert zd.getinfo("w.txt").compress_type == zipfile.ZIP_DEFLATED
        assert zs.read("w.txt") == zd.read("w.txt")
    with pytest.raises(JobFailed, match="output 'model': compression must be one of stored, deflate"):
        await upload_zip(uploads, "model", "Blob", tmp_path / "m", tmp_path / "x.zip", compression="best")
    assert len(uploads.made) == 2 and not (tmp_path / "x.zip").exists()


async def test_no_files_to_zip_fails_the_job(tmp_path: Path) -> None:
    """An empty file list is a clear error, and nothing is uploaded."""
    uploads = Uploads()
    with pytest.raises(JobFailed, match="no files to zip"):
        await upload_zip(uploads, "model", "Model<X>", [], tmp_path / "m.zip")
    assert uploads.made == []


async def test_metadata_is_uploaded_as_json(tmp_path: Path) -> None:
    """The metadata output is the JSON of the value, named metadata, type JSON."""
    uploads = Uploads()
    await upload_metadata(uploads, {"frontend": {"k": 1}, "job": {"accuracy": 0.5}},
                          tmp_path / "metadata.json")
    (name, type_, data), = uploads.made
    assert (name, type_) == ("metadata", "JSON")
    assert json.loads(data) == {"frontend": {"k": 1}, "job": {"accuracy": 0.5}}


async def test_metadata_that_is_not_json_fails_the_job(tmp_path: Path) -> None:
    """A value JSON cannot hold fails the job; no file is left."""
    uploads = Uploads()
    with pytest.raises(JobFailed, match="not JSON"):
        await upload_metadata(uploads, {"when": object()}, tmp_path / "metadata.json")
    assert list(tmp_path.iterdir()) == [] and uploads.made == []
