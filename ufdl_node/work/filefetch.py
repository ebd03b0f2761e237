"""A dataset's files onto disk: the content-addressed cache filled, few requests, no half files.

Files with a hash come from (or into) ``<cache>/sha256/ab/abcdef...``: one download for all
the names of the same content, over plain GETs in threads where the server connection
offers them (:mod:`.plainget`), else (and for whatever that leaves) one by one through
:meth:`.server_access.ServerAccess.download` on the event loop, several in flight. A file
gets its digest name only after a sync of the file system, one for a batch of files
(:class:`.filesink.NamedAfterSync`). It is written where the job will read it, and the digest
name made a hard link to it (`direct`: one directory entry less a file, which on some disks is
the larger part of a fetch's kernel time), or, when the job wants copies or its directory is on
another file system, written to ``<cache>/incoming`` and renamed. Files without a hash (nothing
to address them by) are downloaded straight into the job's directory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from ..errors import JobFailed, NotFound, PermissionDenied
from .filesink import NamedAfterSync, sweep_staging
from .plainget import Wanted
from .server_access import ServerAccess

INCOMING = "incoming"  # beside <cache>/sha256: the files being fetched, before their digest names


def blob(cache: Path, digest: str) -> Path:
    """Where the cache keeps the file of sha256 `digest`."""
    return cache.joinpath("sha256", digest[:2], digest)


async def fetch_files(access: ServerAccess, pk: int, label: str, files: Mapping[str, str | None], cache: Path,
                      bare_dir: Path, parallel: int, max_bytes: int, *,
                      direct: bool = False) -> tuple[dict[str, Path], int]:
    """Each of `files` (name → sha256 or None) of dataset `pk` (`label` names it in errors) on
    disk: {name: where it lies}, sorted, and how many were downloaded. `direct`: a file the
    cache lacks is written into `bare_dir` under its name, and the cache's name becomes a
    hard link to it after the batch's sync (for a caller that would link the cached file
    there anyway: one directory entry less a file than a staging name, a rename and a link)."""
    present, same_disk = await asyncio.to_thread(_look, cache, bare_dir, files)
    fetch = _Fetch(access, pk, label, cache, bare_dir, max_bytes, direct and same_disk)
    bare = fetch.sort(files, present)
    gate = asyncio.Semaphore(max(1, parallel))
    try:
        left = await access.fetch_plain(fetch.wanted(), parallel=parallel, on_done=fetch.landed)
        await every([fetch.one(gate, name, None) for name in bare]
                    + [fetch.one(gate, fetch.names_of[item.sha256 or ""][0], item) for item in left])
        await fetch.cached.commit()
    finally:
        fetch.cached.drop()
    downloaded = len(bare) + sum(map(len, fetch.names_of.values()))
    return dict(sorted(fetch.sources.items())), downloaded


def _look(cache: Path, bare_dir: Path, files: Mapping[str, str | None]) -> tuple[set[str], bool]:
    """(In a thread.) The digests the cache has (a crash's leftovers swept first), and whether
    `bare_dir` is on the cache's file system (a hard link between them is possible)."""
    sweep_staging(cache / INCOMING)
    present = {d for d in files.values() if d is not None and blob(cache, d).is_file()}
    cache.mkdir(parents=True, exist_ok=True)
    bare_dir.mkdir(parents=True, exist_ok=True)
    return present, os.stat(cache).st_dev == os.stat(bare_dir).st_dev


class _Fetch:
    """One :func:`fetch_files`: what the cache lacks, by content, and where each name lies."""

    def __init__(self, access: ServerAccess, pk: int, label: str, cache: Path, bare_dir: Path,
                 max_bytes: int, direct: bool) -> None:
        self.access, self.pk, self.label = access, pk, label
        self.cache, self.bare_dir, self.max_bytes, self.direct = cache, bare_dir, max_bytes, direct
        self.sources: dict[str, Path] = {}
        self.names_of: dict[str, list[str]] = {}  # what the cache lacks: digest → the names of it
        self.finals: dict[str, Path] = {}
        # no fsync a file: one sync a batch, before the digest names; read-only from their making
        self.cached = NamedAfterSync(cache / INCOMING, read_only=False, link=direct)

    def sort(self, files: Mapping[str, str | None], present: set[str]) -> list[str]:
        """Cached names to their blobs, missing contents to `names_of`; the names without a hash."""
        bare: list[str] = []
        for name, digest in sorted(files.items()):
            if digest is None:
                bare.append(name)
            elif digest in present:
                self.sources[name] = blob(self.cache, digest)
            else:
                self.names_of.setdefault(digest, []).append(name)
        root = str(self.cache / "sha256")  # blob()'s names as strings: a pathlib join costs ~10 µs
        self.finals = {digest: Path(f"{root}/{digest[:2]}/{digest}") for digest in self.names_of}
        return bare

    def path(self, name: str) -> str:
        return f"/v1/datasets/{self.pk}/files/{quote(name, safe='')}"

    def wanted(self) -> list[Wanted]:
        """A download for each missing content: to a staging name of its own, or (`direct`)
        to its first name's place in `bare_dir`."""
        if self.direct:
            root = str(self.bare_dir)
            return [Wanted(self.path(names[0]), Path(f"{root}/{names[0]}"), digest, self.max_bytes)
                    for digest, names in self.names_of.items()]
        return [Wanted(self.path(names[0]), self.cached.stage(self.finals[digest]), digest, self.max_bytes)
                for digest, names in self.names_of.items()]

    async def landed(self, items: list[Wanted]) -> None:
        for item in items:
            await self.named(item)

    async def named(self, item: Wanted) -> None:
        """`item` is whole: named with its batch; its names lie at its blob."""
        assert item.sha256 is not None
        target = self.finals[item.sha256]
        await self.cached.done(item.dest, target)
        for name in self.names_of[item.sha256]:
            self.sources[name] = target
        if self.direct:  # its first name is where it was written: nothing to place there
            self.sources[self.names_of[item.sha256][0]] = item.dest

    async def one(self, gate: asyncio.Semaphore, name: str, item: Wanted | None) -> None:
        """`name` through the general path: `item`'s download, or with no hash (None) straight
        into the job's directory (nothing to keep after a crash)."""
        what = f"{self.label}: file {name!r}"
        async with gate:
            try:
                if item is None:
                    target = self.bare_dir.joinpath(*name.split("/"))
                    await self.access.download("GET", self.path(name), target, max_bytes=self.max_bytes,
                                               what=what, durable=False)
                    self.sources[name] = target
                    return
                await self.access.download("GET", item.path, item.dest, sha256=item.sha256,
                                           max_bytes=self.max_bytes, what=what, durable=False, in_place=True)
            except NotFound:
                raise JobFailed(f"{what} not found on the server") from None
            except PermissionDenied:
                raise JobFailed(f"{what}: the node's user may not read it") from None
        await self.named(item)  # outside the gate: the batch's sync holds up no download


async def every(calls: Sequence[Awaitable[None]]) -> None:
    """Run `calls` together; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    if not tasks:
        return
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
