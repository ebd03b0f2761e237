"""The streamed archive: bounded memory however slow the reader, a writer that stops, errors that surface."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ufdl_node.server.archive import CHUNK_BYTES, DEPTH, ChunkPipe, Member, stream_archive, write_archive


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for `condition` (polled), failing after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def writer(pipe: ChunkPipe, chunks: int, written: list[int]) -> threading.Thread:
    def run() -> None:
        try:
            for _ in range(chunks):
                pipe.write(b"x" * CHUNK_BYTES)
                written.append(1)
            pipe.finish()
        except Exception as e:
            pipe.finish(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_a_writer_ahead_of_its_reader_holds_at_most_depth_chunks() -> None:
    """A writer of 64 chunks that nobody reads stops with DEPTH chunks queued; each read lets one more in."""
    pipe = ChunkPipe(asyncio.get_running_loop())
    written: list[int] = []
    thread = writer(pipe, 64, written)
    queue = pipe._queue
    await until(lambda: queue.qsize() == DEPTH)
    assert len(written) <= DEPTH + 1 and thread.is_alive()
    chunks = pipe.chunks()
    await chunks.__anext__()
    await until(lambda: queue.qsize() == DEPTH)
    assert len(written) <= DEPTH + 2
    total = CHUNK_BYTES + sum([len(c) async for c in chunks])
    assert total == 64 * CHUNK_BYTES
    thread.join(10)


@pytest.mark.parametrize("filetype", ["zip", "tar.gz"])
async def test_cancel_stops_an_archive_writer_waiting_for_room(tmp_path: Path, filetype: str) -> None:
    """An archive writer blocked on a full pipe ends when its reader cancels, whatever it was writing."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * CHUNK_BYTES))  # incompressible: the pipe fills up
    pipe = ChunkPipe(asyncio.get_running_loop())
    members = [Member(f"f{i}", big, 3 * CHUNK_BYTES) for i in range(10)]
    thread = threading.Thread(target=write_archive, args=(pipe, filetype, members), daemon=True)
    thread.start()
    # full queue and a full buffer: the writer is waiting in _push for room
    await until(lambda: pipe._queue.qsize() == DEPTH and len(pipe._buffer) >= CHUNK_BYTES)
    pipe.cancel()
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()


@pytest.mark.parametrize("filetype", ["zip", "tar.gz"])
async def test_an_abandoned_download_ends_its_thread(tmp_path: Path, filetype: str) -> None:
    """Closing the archive stream after one chunk ends the archive thread."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * CHUNK_BYTES))  # incompressible: the thread must block
    before = {t for t in threading.enumerate() if t.name == "ufdl-archive"}
    stream = stream_archive(filetype, [Member(f"f{i}", big, 3 * CHUNK_BYTES) for i in range(40)])
    await stream.__anext__()
    [thread] = [t for t in threading.enumerate() if t.name == "ufdl-archive" and t not in before]
    await stream.aclose()
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()


@pytest.mark.parametrize("filetype", ["zip", "tar.gz"])
async def test_a_file_that_cannot_be_read_fails_the_stream(tmp_path: Path, filetype: str) -> None:
    """A member whose bytes are gone raises its error to the reader after what was made so far."""
    with pytest.raises(FileNotFoundError):
        async for _ in stream_archive(filetype, [Member("gone", tmp_path / "gone", 1)]):
            pass


def test_write_archive_reports_success_once() -> None:
    """write_archive of no members ends the pipe with no error (an empty archive)."""
    loop = asyncio.new_event_loop()
    try:
        pipe = ChunkPipe(loop)
        write_archive(pipe, "zip", [])
        loop.run_until_complete(asyncio.sleep(0))  # run the queued puts

        async def drain() -> bytes:
            return b"".join([c async for c in pipe.chunks()])

        data = loop.run_until_complete(drain())
    finally:
        loop.close()
    assert pipe.error is None and data.startswith(b"PK\x05\x06")
