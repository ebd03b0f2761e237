"""FileSink (a download's bytes written, hashed and renamed in a thread) and NamedAfterSync
(files named a batch at a time, after one sync): a final name only ever holds whole bytes."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ufdl_node.work.filesink import (
    BATCH_BYTES,
    FSYNC_EACH_MAX,
    FileSink,
    Mismatch,
    NamedAfterSync,
    sweep_staging,
    sync_filesystem,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_whole_file_is_written_hashed_and_renamed(tmp_path: Path) -> None:
    """write + finish: the target holds the bytes; no temporary file stays."""
    sink = FileSink(tmp_path / "f", durable=False)
    sink.write([b"ab", b"cd"])
    assert not (tmp_path / "f").exists()  # not named before it is complete
    assert sink.finish([b"ef"], 6, _sha(b"abcdef")) == tmp_path / "f"
    assert (tmp_path / "f").read_bytes() == b"abcdef"
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize(("expected", "digest", "message"), [
    (7, None, "cut off: 6 of 7 bytes"), (None, _sha(b"other"), "sha256 .* is not the promised")])
def test_wrong_bytes_never_take_the_name(tmp_path: Path, expected: int | None, digest: str | None,
                                         message: str) -> None:
    """A short body or another sha256: Mismatch, the target untouched, the temporary file gone."""
    (tmp_path / "f").write_bytes(b"old")
    sink = FileSink(tmp_path / "f")
    with pytest.raises(Mismatch, match=message):
        sink.finish([b"abcdef"], expected, digest)
    sink.discard()
    assert (tmp_path / "f").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_an_empty_body_makes_an_empty_file(tmp_path: Path) -> None:
    FileSink(tmp_path / "e").finish([], 0, _sha(b""))
    assert (tmp_path / "e").read_bytes() == b""


class _Held(list[bytes]):
    """Chunks whose reading waits for `release`: a thread caught in the middle of a write."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(chunks)
        self.started, self.release = threading.Event(), threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        self.started.set()
        assert self.release.wait(10)
        return super().__iter__()


def test_discard_during_a_write_leaves_the_cleanup_to_the_writer(tmp_path: Path) -> None:
    """discard() while a thread writes does not wait and does not close the file under it:
    the writer removes the temporary file when it is done."""
    sink = FileSink(tmp_path / "f")
    held = _Held([b"x" * 1000])
    writer = threading.Thread(target=sink.write, args=(held,))
    writer.start()
    assert held.started.wait(10)
    sink.discard()  # returns at once although the writer holds the file
    assert len(os.listdir(tmp_path)) == 1  # its temporary file is still there, open
    held.release.set()
    writer.join(10)
    assert os.listdir(tmp_path) == []
    with pytest.raises(Mismatch, match="abandoned"):
        sink.write([b"more"])


def test_in_place_writes_the_staging_name_itself(tmp_path: Path) -> None:
    """in_place: the target is made new and read-only and written directly (no temporary
    file, no rename); a failure removes it."""
    sink = FileSink(tmp_path / "s" / "f.unsynced", durable=False, in_place=True)
    sink.write([b"ab"])
    assert os.listdir(tmp_path / "s") == ["f.unsynced"]  # no temporary file beside it
    assert sink.finish([b"cd"], 4, _sha(b"abcd")) == tmp_path / "s" / "f.unsynced"
    assert (tmp_path / "s" / "f.unsynced").read_bytes() == b"abcd"
    assert (tmp_path / "s" / "f.unsynced").stat().st_mode & 0o222 == 0
    sink.discard()  # after a finish: nothing to remove
    assert (tmp_path / "s" / "f.unsynced").exists()
    bad = FileSink(tmp_path / "g", durable=False, in_place=True)
    with pytest.raises(Mismatch, match="cut off"):
        bad.finish([b"xy"], 3, None)
    bad.discard()
    assert not (tmp_path / "g").exists()
    # a crash's leftover under the same staging name is replaced, as the rename did before
    again = FileSink(tmp_path / "s" / "f.unsynced", in_place=True)
    again.finish([b"other"], 5, None)
    assert (tmp_path / "s" / "f.unsynced").read_bytes() == b"other"
    assert BATCH_BYTES >= 1 << 20


async def test_files_take_their_names_only_at_a_commit(tmp_path: Path) -> None:
    """Staged files get their final names (read-only) once a batch is full or at commit();
    drop() removes the ones never named."""
    named = NamedAfterSync(tmp_path, batch_files=2)
    finals = [tmp_path / f"f{i}" for i in range(3)]
    staged = [named.stage(f) for f in finals]
    assert len(set(staged)) == 3
    assert all(s.parent == tmp_path and s.name.endswith(".unsynced") for s in staged)
    for s in staged:
        s.write_bytes(b"data")
    await named.done(staged[0], finals[0])
    assert not finals[0].exists()
    await named.done(staged[1], finals[1])  # the batch is full: both named
    assert finals[0].read_bytes() == finals[1].read_bytes() == b"data"
    assert finals[0].stat().st_mode & 0o222 == 0
    await named.done(staged[2], finals[2])
    named.drop()  # a failure before the last commit: the staged file goes, unnamed
    assert sorted(os.listdir(tmp_path)) == ["f0", "f1"]


async def test_commit_names_what_is_left(tmp_path: Path) -> None:
    named = NamedAfterSync(tmp_path, read_only=False)
    staged = named.stage(tmp_path / "big")
    staged.write_bytes(b"0123456789")
    await named.done(staged, tmp_path / "big")
    assert not (tmp_path / "big").exists()
    await named.commit()
    assert (tmp_path / "big").read_bytes() == b"0123456789"
    assert (tmp_path / "big").stat().st_mode & 0o200
    await named.commit()  # nothing left: nothing happens
    sync_filesystem(tmp_path)


def test_the_temporary_file_makes_its_folder(tmp_path: Path) -> None:
    FileSink(tmp_path / "a" / "b" / "f", durable=False).finish([b"x"], 1, None)
    assert (tmp_path / "a" / "b" / "f").read_bytes() == b"x"


async def test_a_failed_commit_leaves_its_files_to_drop(tmp_path: Path) -> None:
    """A staged file that cannot be renamed (its folder is gone) fails the commit; drop()
    clears what is left without naming anything."""
    named = NamedAfterSync(tmp_path)
    (tmp_path / "sub").mkdir()
    staged = named.stage(tmp_path / "sub" / "x")
    await named.done(staged, tmp_path / "sub" / "x")  # never written: the rename fails
    with pytest.raises(OSError):
        await named.commit()
    named.drop()
    assert os.listdir(tmp_path / "sub") == []


async def test_a_larger_batch_is_named_after_one_sync_of_the_file_system(tmp_path: Path) -> None:
    """More files than FSYNC_EACH_MAX in a batch: one syncfs, then every name."""
    count = FSYNC_EACH_MAX + 2
    named = NamedAfterSync(tmp_path, batch_files=count)
    for i in range(count):
        staged = named.stage(tmp_path / f"f{i}")
        staged.write_bytes(bytes([i]))
        await named.done(staged, tmp_path / f"f{i}")
    assert sorted(os.listdir(tmp_path)) == sorted(f"f{i}" for i in range(count))
    assert [(tmp_path / f"f{i}").read_bytes() for i in range(count)] == [bytes([i]) for i in range(count)]


async def test_files_staged_in_one_folder_are_named_into_new_folders(tmp_path: Path) -> None:
    """The staging folder holds the files until their batch is named; the final names'
    folders are made then."""
    named = NamedAfterSync(tmp_path / "incoming")
    (tmp_path / "incoming").mkdir()
    final = tmp_path / "sha256" / "ab" / "abcd"
    staged = named.stage(final)
    assert staged.parent == tmp_path / "incoming"
    staged.write_bytes(b"data")
    await named.done(staged, final)
    await named.commit()
    assert final.read_bytes() == b"data" and os.listdir(tmp_path / "incoming") == []


def test_sweep_removes_only_stale_staged_and_temporary_files(tmp_path: Path) -> None:
    """A crash's leftovers (staged or .part files older than the limit) go; fresh ones (a
    download under way) and anything else stay."""
    names = ["old.1-2-3.unsynced", "old.x.part", "new.1-2-4.unsynced", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    stale = time.time() - 2 * 86400
    for name in names[:2] + names[3:]:
        os.utime(tmp_path / name, (stale, stale))
    assert sweep_staging(tmp_path) == 2
    assert sorted(os.listdir(tmp_path)) == ["new.1-2-4.unsynced", "notes.txt"]
    assert sweep_staging(tmp_path / "missing") == 0


def test_a_batch_of_many_small_chunks_is_written_whole(tmp_path: Path) -> None:
    """More chunks than one writev takes: joined, not refused."""
    chunks = [bytes([i % 256]) * 3 for i in range(5000)]
    data = b"".join(chunks)
    FileSink(tmp_path / "f").finish(chunks, len(data), _sha(data))
    assert (tmp_path / "f").read_bytes() == data
