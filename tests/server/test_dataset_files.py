"""A dataset file is never a row without its bytes: crashes and failures while its bytes are stored."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from .conftest import Api, MakeApi, MakeServer
from .test_datasets import add_file, create, dataset_with

ROOT = Path(__file__).parents[2]


@dataclass
class _Settings:
    data_dir: Path


@dataclass
class _Process:
    """What `Api` reads of a server: its URL and its data directory."""

    url: str
    settings: _Settings


def stored(data_dir: Path) -> list[str]:
    """The names in the data directory's datasets folder: bytes (by file pk) and temporary files."""
    return sorted(p.name for p in (data_dir / "datasets").iterdir())


async def _url_of(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async for line in proc.stdout:
        if line.startswith(b"URL "):
            return line[4:].decode().strip()
    raise AssertionError("the crash server ended before it listened")


async def upload_until_killed(data_dir: Path, when: str, log: Path) -> int:
    """In a server process that dies by SIGKILL as a file's bytes take their name (`when`: before
    or after that rename), create dataset 1 and upload a.png to it; the dataset's pk."""
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.server.crash_server", str(data_dir), when, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=err)
        try:
            url = await asyncio.wait_for(_url_of(proc), 60)
            async with aiohttp.ClientSession() as session:
                api = Api(session, _Process(url, _Settings(data_dir)))  # type: ignore[arg-type]
                dataset = await create(api)
                with pytest.raises(aiohttp.ClientError):
                    await add_file(api, dataset, "a.png", b"the bytes")
        except BaseException:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            raise
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == -signal.SIGKILL, f"the server ended with {code}, not by its SIGKILL: {log.read_text()}"
    return int(dataset["pk"])


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_crash_as_the_bytes_take_their_name_leaves_no_file_without_bytes(
        make_server: MakeServer, make_api: MakeApi, tmp_path: Path, when: str) -> None:
    """SIGKILL just before (or after) the rename: after a restart, no row, no stray bytes, no temp file."""
    data_dir = (tmp_path / "data").resolve()
    pk = await upload_until_killed(data_dir, when, tmp_path / "server.log")
    server = await make_server(data_dir)
    api = make_api(server)
    assert (await api.ok("GET", f"/v1/datasets/{pk}"))["files"] == {}
    assert stored(data_dir) == []


async def test_an_upload_after_a_crash_stores_the_file(make_server: MakeServer, make_api: MakeApi,
                                                       tmp_path: Path) -> None:
    """The upload a crash cut short succeeds when sent again after the restart, byte for byte."""
    data_dir = (tmp_path / "data").resolve()
    pk = await upload_until_killed(data_dir, "before", tmp_path / "server.log")
    api = make_api(await make_server(data_dir))
    assert (await add_file(api, {"pk": pk}, "a.png", b"the bytes")).status == 200
    assert (await api.ok("GET", f"/v1/datasets/{pk}"))["files"] \
        == {"a.png": hashlib.sha256(b"the bytes").hexdigest()}
    assert (await api.call("GET", f"/v1/datasets/{pk}/files/a.png")).body == b"the bytes"


async def test_a_failed_rename_is_a_500_that_leaves_no_row_and_no_temp_file(
        make_server: MakeServer, make_api: MakeApi) -> None:
    """A directory where the bytes' final name should go: 500 with a one-line detail, nothing kept."""
    server = await make_server()
    api = make_api(server)
    data_dir = Path(server.settings.data_dir)
    ds = await create(api)
    (data_dir / "datasets" / "1" / "in-the-way").mkdir(parents=True)  # file pk 1's name is taken
    reply = await add_file(api, ds, "a.png", b"the bytes")
    assert reply.status == 500 and "\n" not in reply.json["detail"], reply
    assert "could not be stored" in reply.json["detail"]
    assert (await api.ok("GET", f"/v1/datasets/{ds['pk']}"))["files"] == {}
    assert stored(data_dir) == ["1"]  # the obstacle only: no temporary file


async def test_a_missing_datasets_directory_is_a_500_that_keeps_the_server_up(
        make_server: MakeServer, make_api: MakeApi) -> None:
    """The datasets directory replaced by a file: the upload is a one-line 500, no row; others work on."""
    server = await make_server()
    api = make_api(server)
    directory = Path(server.settings.data_dir) / "datasets"
    ds = await create(api)
    directory.rmdir()
    directory.write_bytes(b"not a directory")
    reply = await add_file(api, ds, "a.png", b"the bytes")
    assert reply.status == 500 and "\n" not in reply.json["detail"], reply
    assert (await api.ok("GET", f"/v1/datasets/{ds['pk']}"))["files"] == {}
    directory.unlink()
    directory.mkdir()
    assert (await add_file(api, ds, "a.png", b"the bytes")).status == 200


async def test_a_refused_replacement_keeps_the_old_bytes(make_server: MakeServer, make_api: MakeApi) -> None:
    """A second upload under a name the dataset has is 400: the first bytes and hash stay, no temp file."""
    server = await make_server()
    api = make_api(server)
    ds = await dataset_with(api, {"a.png": b"old"})
    assert (await add_file(api, ds, "a.png", b"new")).status == 400
    assert (await api.call("GET", f"/v1/datasets/{ds['pk']}/files/a.png")).body == b"old"
    assert (await api.ok("GET", f"/v1/datasets/{ds['pk']}"))["files"]["a.png"] \
        == hashlib.sha256(b"old").hexdigest()
    assert stored(Path(server.settings.data_dir)) == ["1"]


async def test_bytes_without_a_row_go_at_the_next_start(make_server: MakeServer, make_api: MakeApi) -> None:
    """At start, pk-named bytes no row names and temporary files go; a file's bytes and other names stay."""
    server = await make_server()
    api = make_api(server)
    data_dir = Path(server.settings.data_dir)
    await dataset_with(api, {"a.png": b"kept"})
    await server.stop()
    directory = data_dir / "datasets"
    for name in ("7", ".upload-x.part"):
        (directory / name).write_bytes(b"stray")
    (directory / "notes.txt").write_bytes(b"not ours")
    await make_server(data_dir)
    assert stored(data_dir) == ["1", "notes.txt"]
    assert (directory / "1").read_bytes() == b"kept"
