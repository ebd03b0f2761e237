"""Archives a job meets: safe extraction of zip and tar(.gz), and deterministic zips.

:func:`extract` reads every member name and type before it writes a byte: a
name that is absolute or climbs out with ``..``, a symbolic or hard link, a
device, a FIFO, more than ``max_total_bytes`` in all, or (past
``RATIO_FLOOR_BYTES``) more than ``max_ratio`` times the archive's own size (a
compression bomb: 3 MiB that unpack to 3 GiB) fails the job with a one-line
:class:`~ufdl_node.errors.JobFailed`, and nothing is written outside the
destination. Both bounds are checked on the declared sizes before anything is
written and again on the bytes really written, as headers can lie.

:func:`zip_directory` and :func:`zip_files` write a zip straight to disk (a
temporary ``.part`` file renamed when complete), members in sorted order with
a fixed timestamp, so the same inputs give the same bytes. Members are stored
by default (``compression="stored"``: model weights barely compress, and
deflating a GiB costs ten times the disk's time); ``"deflate"`` compresses. The
zip's sha256 is taken while it is written (:func:`ufdl_node.durable.remember_digest`),
so staging it as an output does not read it again; each member's CRC and sizes
follow its data (a data descriptor) as the zip is written in one pass. Readers
that go by the central directory (Python's zipfile, Info-ZIP's unzip, Java's
``ZipFile``) read such zips; a streaming reader of stored members (Java's
``ZipInputStream``) cannot.

These functions block: call them through ``asyncio.to_thread`` from a handler.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TypeVar

from ..durable import remember_digest
from ..errors import JobFailed
from ..logs import one_line

DEFAULT_MAX_TOTAL_BYTES = 64 * 1024**3
DEFAULT_MAX_MEMBERS = 1_000_000
DEFAULT_MAX_RATIO = 200  # unpacked bytes per packed byte; real datasets (images) are far below
RATIO_FLOOR_BYTES = 8 * 1024**2  # below this many unpacked bytes any ratio is fine (small text)
_COPY_CHUNK = 1 << 20
_T = TypeVar("_T")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: same bytes on every run
COMPRESSIONS = {"stored": zipfile.ZIP_STORED, "deflate": zipfile.ZIP_DEFLATED}
DEFAULT_COMPRESSION = "stored"


def check_compression(compression: str, where: str) -> int:
    """The zipfile method of `compression` (``"stored"`` or ``"deflate"``); JobFailed naming
    `where` otherwise."""
    method = COMPRESSIONS.get(compression)
    if method is None:
        raise JobFailed(f"{where}: compression must be one of {', '.join(COMPRESSIONS)}, "
                        f"not {one_line(str(compression), 40)!r}")
    return method


@dataclass(frozen=True)
class _Member:
    name: str  # the safe relative path, '/'-separated
    is_dir: bool
    size: int


def relative_name(raw: str, where: str) -> str | None:
    """`raw` (a member or file name from an archive or a server) as a relative '/'-path that
    stays inside its directory; None for the directory itself. JobFailed names `where` when
    the name is absolute, climbs out with '..' or holds a NUL."""
    if "\x00" in raw:
        raise JobFailed(f"{where}: a name holds a NUL byte")
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise JobFailed(f"{where}: {one_line(raw, 80)!r} is an absolute name")
    if all(p not in ("", ".", "..") for p in name.split("/")):
        return name  # normal already (most names: a dataset's thousands of files)
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise JobFailed(f"{where}: {one_line(raw, 80)!r} climbs out with '..'")
    return "/".join(parts) or None


def _zip_members(zf: zipfile.ZipFile, archive: str) -> Iterator[tuple[_Member, zipfile.ZipInfo]]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        # Zips made elsewhere often carry permission bits only: no file type means a plain file.
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a plain file"
            raise JobFailed(f"archive {archive}: member {one_line(info.filename, 80)!r} is {kind}")
        name = relative_name(info.filename, f"archive {archive}")
        if name is not None:
            yield _Member(name, info.is_dir(), 0 if info.is_dir() else info.file_size), info


def _tar_members(tf: tarfile.TarFile, archive: str) -> Iterator[tuple[_Member, tarfile.TarInfo]]:
    for info in tf:
        if info.issym() or info.islnk():
            raise JobFailed(f"archive {archive}: member {one_line(info.name, 80)!r} is a link")
        if not (info.isfile() or info.isdir()):
            raise JobFailed(f"archive {archive}: member {one_line(info.name, 80)!r} is a device, "
                            f"FIFO or other special file")
        name = relative_name(info.name, f"archive {archive}")
        if name is not None:
            yield _Member(name, info.isdir(), info.size if info.isfile() else 0), info


def _counted(pairs: Iterator[tuple[_Member, _T]], budget: _Budget) -> list[tuple[_Member, _T]]:
    """The members, the bounds checked on the declared sizes as they are read (listing a
    compressed tar decompresses it: a bomb must stop at its first oversized header)."""
    out, total = [], 0
    for member, info in pairs:
        total += member.size
        budget.check(total)
        out.append((member, info))
    return out


def _check(members: list[_Member], archive: str, max_members: int) -> None:
    if len(members) > max_members:
        raise JobFailed(f"archive {archive}: more than {max_members} members")
    files = {m.name for m in members if not m.is_dir}
    for m in members:  # a file that another member needs as its directory
        parent = PurePosixPath(m.name).parent
        while str(parent) != ".":
            if str(parent) in files:
                raise JobFailed(f"archive {archive}: {one_line(m.name, 80)!r} lies under the file "
                                f"{one_line(str(parent), 80)!r}")
            parent = parent.parent


class _Budget:
    """Bounds the unpacked bytes, in all and per packed byte; counts the bytes really written,
    as a member may hold more than it declares."""

    def __init__(self, archive: str, limit: int, packed: int, max_ratio: int) -> None:
        self.archive, self.limit, self.used = archive, limit, 0
        self.packed, self.max_ratio = max(packed, 1), max_ratio

    def check(self, total: int) -> None:
        """JobFailed when `total` unpacked bytes break a bound."""
        if total > self.limit:
            raise JobFailed(f"archive {self.archive}: more than the limit of {self.limit} "
                            f"bytes unpacked")
        if total > RATIO_FLOOR_BYTES and total > self.max_ratio * self.packed:
            raise JobFailed(f"archive {self.archive}: unpacks to more than {self.max_ratio} times "
                            f"its {self.packed} bytes (a compression bomb?)")

    def copy(self, src: IO[bytes], dest: Path) -> None:
        with open(dest, "wb") as out:
            while chunk := src.read(_COPY_CHUNK):
                self.used += len(chunk)
                self.check(self.used)
                out.write(chunk)


def archive_kind(path: Path) -> str:
    """``"zip"`` or ``"tar"`` (plain or compressed) from the file's content; JobFailed otherwise."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError, tarfile.TarError):
        pass
    raise JobFailed(f"{path.name} is neither a zip nor a tar archive")


def extract(archive: Path | str, dest: Path | str, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
            max_members: int = DEFAULT_MAX_MEMBERS, max_ratio: int = DEFAULT_MAX_RATIO) -> list[Path]:
    """Unpack a zip or tar(.gz/.bz2/.xz) `archive` into `dest` (created); the files written.

    Every member is checked before anything is written; a bad archive leaves no file
    behind in `dest` and none anywhere else. Modes, owners and times are not restored.
    """
    src, root = Path(archive), Path(dest)
    label = src.name
    kind = archive_kind(src)
    root.mkdir(parents=True, exist_ok=True)
    budget = _Budget(label, max_total_bytes, src.stat().st_size, max_ratio)
    written: list[Path] = []
    try:
        if kind == "zip":
            with zipfile.ZipFile(src) as zf:
                zpairs = _counted(_zip_members(zf, label), budget)
                _check([m for m, _ in zpairs], label, max_members)
                for member, zinfo in zpairs:
                    if _place(root, member, written):
                        with zf.open(zinfo) as f:
                            budget.copy(f, written[-1])
        else:
            with tarfile.open(src, "r:*") as tf:
                tpairs = _counted(_tar_members(tf, label), budget)
                _check([m for m, _ in tpairs], label, max_members)
                for member, tinfo in tpairs:
                    if _place(root, member, written):
                        data = tf.extractfile(tinfo)
                        if data is None:
                            raise JobFailed(f"archive {label}: cannot read {member.name!r}")
                        with data:
                            budget.copy(data, written[-1])
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, RuntimeError) as e:
        _remove(written)
        raise JobFailed(f"archive {label} is damaged: {one_line(e, 120)}") from None
    except BaseException:
        _remove(written)
        raise
    return [p for p in written if p.is_file()]


def _place(root: Path, member: _Member, written: list[Path]) -> bool:
    """Make `member`'s directory (or itself, for a directory); True when a file is to be written."""
    parts = member.name.split("/")
    target = root.joinpath(*parts)
    for depth in range(1, len(parts)):  # a link already in `dest` must not carry a member elsewhere
        if root.joinpath(*parts[:depth]).is_symlink():
            raise JobFailed(f"{member.name!r} would be written through a link in {root.name}")
    if member.is_dir:
        target.mkdir(parents=True, exist_ok=True)
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_dir():
        raise JobFailed(f"{member.name!r} is already a link or a directory in {root.name}")
    written.append(target)
    return True


def _remove(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def zip_directory(directory: Path | str, dest: Path | str, *,
                  compression: str = DEFAULT_COMPRESSION) -> Path:
    """Zip every file under `directory` (paths relative to it) into `dest`; return `dest`.

    Links are not followed (a link in a job's directory could point anywhere).
    """
    root = Path(directory)
    if not root.is_dir():
        raise JobFailed(f"{root} is not a directory")
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            entries.append((path.relative_to(root).as_posix(), path))
    return zip_entries(entries, Path(dest), compression=compression)


def zip_files(files: Iterable[Path | str], dest: Path | str, *,
              compression: str = DEFAULT_COMPRESSION) -> Path:
    """Zip `files` into `dest` under their base names (as the stock executors do); return `dest`.

    Two files with one base name fail the job rather than overwrite each other.
    """
    entries: dict[str, Path] = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise JobFailed(f"{path} does not exist or is not a file")
        if path.name in entries:
            raise JobFailed(f"two files named {path.name!r} for one zip: {entries[path.name]} and {path}")
        entries[path.name] = path
    return zip_entries(list(entries.items()), Path(dest), compression=compression)


class _HashingWriter:
    """A file written front to back whose size and sha256 are taken as the bytes go by.

    It cannot seek, so zipfile writes each member's CRC and sizes after its data (a data
    descriptor) instead of going back to its header: the bytes are hashed in their order
    in the file, and nothing is read back.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        self.digest.update(data)
        self.size += len(data)
        return written

    def tell(self) -> int:
        return self.size

    def seek(self, *_args: object) -> int:
        raise io.UnsupportedOperation("written in one pass")

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        self._file.flush()


def zip_entries(entries: list[tuple[str, Path]], dest: Path, *,
                compression: str = DEFAULT_COMPRESSION) -> Path:
    """Zip `entries` (member name, file) into `dest` in member-name order, deterministically;
    return `dest`. Its size and sha256 are remembered for staging (durable.known_digest)."""
    method = check_compression(compression, f"zip {dest.name}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            out = _HashingWriter(raw)
            with zipfile.ZipFile(out, "w", compression=method) as zf:  # type: ignore[call-overload]
                for arcname, path in sorted(entries):
                    info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
                    info.compress_type = method
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                    with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as member:
                        shutil.copyfileobj(src, member, _COPY_CHUNK)
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    remember_digest(dest, out.size, out.digest.hexdigest())
    return dest
