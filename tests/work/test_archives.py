"""Safe extraction of zip and tar archives, and deterministic zips."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import IO

import pytest

from ufdl_node.daemon.job import stage_output
from ufdl_node.durable import file_digest, known_digest
from ufdl_node.errors import JobFailed
from ufdl_node.work.archives import extract, zip_directory, zip_files


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info in members:
            body = (data or {}).get(info.name)
            if body is not None:
                info.size = len(body)
            tf.addfile(info, io.BytesIO(body) if body is not None else None)
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_zip_is_extracted_with_its_folders(tmp_path: Path) -> None:
    """A zip's files and folders appear under the destination."""
    archive = _zip(tmp_path / "a.zip", {"dog/a.jpg": b"A", "cat/b.jpg": b"B", "top.txt": b"T"})
    files = extract(archive, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == \
        ["cat/b.jpg", "dog/a.jpg", "top.txt"]
    assert (tmp_path / "out" / "dog" / "a.jpg").read_bytes() == b"A"


def test_tar_gz_is_extracted(tmp_path: Path) -> None:
    """A tar.gz's regular files are extracted."""
    archive = _tar(tmp_path / "a.tar.gz", [tarfile.TarInfo("x/y.txt")], {"x/y.txt": b"hello"})
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "x" / "y.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt"])
def test_zip_member_climbing_out_is_refused_and_nothing_written(tmp_path: Path, name: str) -> None:
    """A member named with '..' fails the job before any file is written, inside or out."""
    archive = _zip(tmp_path / "a.zip", {"ok.txt": b"fine", name: b"evil"})
    with pytest.raises(JobFailed, match=r"climbs out with '\.\.'") as caught:
        extract(archive, tmp_path / "dest" / "out")
    assert "\n" not in str(caught.value)
    assert _tree(tmp_path / "dest") == ["out"]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "dest" / "evil.txt").exists()


def test_tar_member_with_absolute_name_is_refused(tmp_path: Path) -> None:
    """An absolute member name fails the job; nothing is written."""
    target = tmp_path / "abs-target.txt"
    archive = _tar(tmp_path / "a.tar.gz", [tarfile.TarInfo(str(target))], {str(target): b"x"})
    with pytest.raises(JobFailed, match="absolute name"):
        extract(archive, tmp_path / "out")
    assert not target.exists() and _tree(tmp_path / "out") == []


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_are_refused(tmp_path: Path, kind: bytes) -> None:
    """Symbolic and hard links fail the job: they could carry a later member elsewhere."""
    link = tarfile.TarInfo("escape")
    link.type = kind
    link.linkname = "/etc/passwd"
    archive = _tar(tmp_path / "a.tar.gz", [link])
    with pytest.raises(JobFailed, match="is a link"):
        extract(archive, tmp_path / "out")
    assert _tree(tmp_path / "out") == []


def test_tar_device_file_is_refused(tmp_path: Path) -> None:
    """A character device member fails the job."""
    dev = tarfile.TarInfo("null")
    dev.type = tarfile.CHRTYPE
    dev.devmajor, dev.devminor = 1, 3
    archive = _tar(tmp_path / "a.tar.gz", [dev])
    with pytest.raises(JobFailed, match="device"):
        extract(archive, tmp_path / "out")


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    """A zip member marked as a symbolic link fails the job."""
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(JobFailed, match="symbolic link"):
        extract(archive, tmp_path / "out")


def test_archive_above_the_size_limit_is_refused(tmp_path: Path) -> None:
    """More bytes unpacked than max_total_bytes fails the job before writing."""
    archive = _zip(tmp_path / "a.zip", {"a": b"0" * 600, "b": b"0" * 600})
    with pytest.raises(JobFailed, match="limit of 1000"):
        extract(archive, tmp_path / "out", max_total_bytes=1000)
    assert _tree(tmp_path / "out") == []


def test_existing_link_in_dest_is_not_followed(tmp_path: Path) -> None:
    """A member under a directory that is a symlink in dest is refused, not written through it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(outside)
    archive = _zip(tmp_path / "a.zip", {"sub/x.txt": b"x"})
    with pytest.raises(JobFailed, match="through a link"):
        extract(archive, tmp_path / "out")
    assert list(outside.iterdir()) == []


def test_a_file_that_is_no_archive_is_refused(tmp_path: Path) -> None:
    """Bytes that are neither zip nor tar fail the job with one line."""
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive at all" * 40)
    with pytest.raises(JobFailed, match="neither a zip nor a tar"):
        extract(junk, tmp_path / "out")


def test_zip_directory_is_deterministic_and_sorted(tmp_path: Path) -> None:
    """Zipping one directory twice gives the same bytes, members in sorted order."""
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "b" / "z.txt").write_text("z")
    (src / "a.txt").write_text("a")
    first = zip_directory(src, tmp_path / "one.zip").read_bytes()
    (src / "a.txt").touch()  # a new mtime must not change the zip
    second = zip_directory(src, tmp_path / "two.zip").read_bytes()
    assert first == second
    with zipfile.ZipFile(tmp_path / "one.zip") as zf:
        assert zf.namelist() == ["a.txt", "b/z.txt"]
        assert zf.read("b/z.txt") == b"z"


def test_zip_files_uses_base_names_and_refuses_duplicates(tmp_path: Path) -> None:
    """Files are stored under their base names; two of one name fail the job."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    (tmp_path / "x" / "model").write_text("0.5")
    (tmp_path / "y" / "model").write_text("0.7")
    zipped = zip_files([tmp_path / "x" / "model"], tmp_path / "model.zip")
    with zipfile.ZipFile(zipped) as zf:
        assert zf.namelist() == ["model"] and zf.read("model") == b"0.5"
    with pytest.raises(JobFailed, match="two files named 'model'"):
        zip_files([tmp_path / "x" / "model", tmp_path / "y" / "model"], tmp_path / "m2.zip")
    assert not (tmp_path / "m2.zip").exists()


def _model(tmp_path: Path) -> Path:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "config.py").write_text("lr = 0.01\n" * 2000)
    return src


@pytest.mark.parametrize("compression, method", [("stored", zipfile.ZIP_STORED),
                                                 ("deflate", zipfile.ZIP_DEFLATED)])
def test_zip_members_are_stored_by_default_or_deflated_on_request(tmp_path: Path, compression: str,
                                                                  method: int) -> None:
    """Stored unless "deflate" is asked for; either way deterministic, and readable by Info-ZIP's
    unzip (the members' sizes follow their data: the zip is written in one pass)."""
    src = _model(tmp_path)
    default = zip_directory(src, tmp_path / "default.zip")
    zipped = zip_directory(src, tmp_path / "one.zip", compression=compression)
    again = zip_directory(src, tmp_path / "two.zip", compression=compression)
    assert zipped.read_bytes() == again.read_bytes()
    with zipfile.ZipFile(zipped) as zf, zipfile.ZipFile(default) as zd:
        assert {i.compress_type for i in zf.infolist()} == {method}
        assert {i.compress_type for i in zd.infolist()} == {zipfile.ZIP_STORED}
        assert zf.read("weights.bin") == (src / "weights.bin").read_bytes()
    if method == zipfile.ZIP_DEFLATED:  # the text shrinks; the random weights cannot
        assert zipped.stat().st_size < default.stat().st_size
    if shutil.which("unzip"):
        checked = subprocess.run(["unzip", "-t", str(zipped)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_unknown_compression_fails_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    src = _model(tmp_path)
    with pytest.raises(JobFailed, match="compression must be one of stored, deflate, not 'lzma'"):
        zip_directory(src, tmp_path / "out" / "m.zip", compression="lzma")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_zip_is_hashed_as_it_is_written_and_staged_without_a_second_read(tmp_path: Path) -> None:
    """The zip's sha256, taken while it was written, is the file's; staging the zip (a hard
    link to it) takes that digest instead of reading the file (shown by bytes changed behind
    its back with its time put back), once; a file whose time changed is read and hashed."""
    weights = _model(tmp_path) / "weights.bin"
    zipped = zip_files([weights], tmp_path / "m.zip")
    size, sha256 = file_digest(zipped)
    _, staged_size, staged_sha, _ = stage_output(zipped, tmp_path / "outputs", 0)
    assert (staged_size, staged_sha) == (size, sha256)
    assert known_digest(zipped) is None  # taken by the staging: used once

    zip_files([weights], tmp_path / "m.zip")
    before = zipped.stat()
    with zipped.open("r+b") as f:  # the same size, other bytes
        f.seek(100)
        f.write(b"\xff" * 8)
    os.utime(zipped, ns=(before.st_atime_ns, before.st_mtime_ns))
    _, _, unread, _ = stage_output(zipped, tmp_path / "outputs", 1)
    assert unread == sha256 != file_digest(zipped)[1]  # not read: the digest of the zip as written

    zip_files([weights], tmp_path / "m.zip")
    with zipped.open("r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 8)
    os.utime(zipped, ns=(1, 1))
    _, _, rehashed, _ = stage_output(zipped, tmp_path / "outputs", 2)
    assert rehashed == file_digest(zipped)[1] != sha256


def _zeros(out: IO[bytes], size: int) -> None:
    chunk = bytes(1 << 20)
    for _ in range(size // len(chunk)):
        out.write(chunk)


def test_a_zip_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    """40 MiB of zeros deflated to ~40 KiB (1000:1) fails the job in one line; nothing is left."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("small.txt", b"fine")
        with zf.open("zeros.bin", "w") as f:
            _zeros(f, 40 * 1024**2)
    assert archive.stat().st_size < 1024**2
    with pytest.raises(JobFailed, match="compression bomb") as e:
        extract(archive, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_a_tar_gz_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    """A tar.gz of 40 MiB of zeros is refused at its header, before it is decompressed to disk."""
    archive = tmp_path / "bomb.tar.gz"
    raw = tmp_path / "zeros.bin"
    with open(raw, "wb") as f:
        _zeros(f, 40 * 1024**2)
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(raw, arcname="zeros.bin")
    raw.unlink()
    with pytest.raises(JobFailed, match="compression bomb"):
        extract(archive, tmp_path / "out")
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_a_header_that_understates_its_size_does_not_slip_past(tmp_path: Path) -> None:
    """A member that declares 1 KiB but holds 20 MiB of zeros is not unpacked past what it
    declares: the job fails in one line and no file is left."""
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros.bin", "w") as f:
            _zeros(f, 20 * 1024**2)
    data = bytearray(archive.read_bytes())
    # the central directory's uncompressed size (offset 24 of its entry) claims 1 KiB
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (1024).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(JobFailed, match="damaged") as e:
        extract(archive, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_a_well_compressed_small_archive_is_still_unpacked(tmp_path: Path) -> None:
    """Below the floor a high ratio is fine: 1 MiB of zeros is a plausible small file."""
    archive = _zip(tmp_path / "a.zip", {"z": bytes(1024**2)})
    assert len(extract(archive, tmp_path / "out")) == 1
