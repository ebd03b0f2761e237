"""One daemon per node identity on this host: a host-wide flock per (server, ip, GPU index).

The server knows a node by its ip and GPU index: two daemons with different state
directories (their :class:`~.state.StateDirLock` apart) but the same server, ip and index
register the same node record, and each ends the other's running job as one a dead process
left. So before it registers, the daemon takes an exclusive flock on
``<runtime dir>/node-<hash>.lock`` for each of its slots, the hash of server URL, ip and
index; a second daemon for the same node exits 2 with one line naming the holder (its pid
and state directory, written in the file) and the lock's path. The kernel drops a flock
when its process dies, however it dies: there is never a stale lock to clean up.

The runtime directory is ``/run/ufdl-node`` where that can be used (the systemd unit's
``RuntimeDirectory=ufdl-node`` makes it; a root daemon makes it too), else the system's
temporary directory. A lock file another user's daemon made there is opened read-only:
an flock needs no write access. Lock files are made readable to all (mode 0644, whatever
the umask) so that a daemon of another user finds the lock rather than a refusal to read.
Daemons that cannot share a directory (one in a private /tmp, one in /run) do not see each
other's locks: run every daemon of a host where ``/run/ufdl-node`` is usable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import IO

from ..errors import ConfigError

RUNTIME_DIR = Path("/run/ufdl-node")
LOCK_MODE = 0o644


def identity_key(server_url: str, ip: str, index: int) -> str:
    """What names one node record: the server (scheme and host case-folded, no trailing
    slash), the node's ip and its GPU index."""
    parts = urllib.parse.urlsplit(server_url.strip())
    url = urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"),
                                   parts.query, ""))
    return f"{url} {ip} {index}"


def lock_name(key: str) -> str:
    """The lock file's name for an identity (a hash: no part of the URL becomes a path)."""
    return f"node-{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"


def runtime_dirs() -> list[Path]:
    """Where node locks may live, the preferred first."""
    return [RUNTIME_DIR, Path(tempfile.gettempdir())]


def _open_in(directory: Path, name: str) -> tuple[IO[str], bool] | None:
    """The lock file `name` in `directory`, opened (and whether for writing); None when the
    directory cannot hold it (missing and not makeable, or not writable and no such file)."""
    path = directory / name
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        directory.mkdir(mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, LOCK_MODE)
        with contextlib.suppress(OSError):
            os.fchmod(fd, LOCK_MODE)  # the umask (0077 in the unit) must not hide it from others
        return os.fdopen(fd, "r+", encoding="utf-8"), True
    except PermissionError:
        pass
    except OSError:
        return None
    try:  # another user's daemon made it: locking needs no write access
        return os.fdopen(os.open(path, os.O_RDONLY | flags), "r", encoding="utf-8"), False
    except OSError:
        return None


class NodeLock:
    """Exclusive flocks on the node identities of one daemon's slots (see the module)."""

    def __init__(self, server_url: str, ip: str, indices: list[int], state_dir: Path,
                 directories: list[Path] | None = None) -> None:
        self.identities = [(index, identity_key(server_url, ip, index)) for index in indices]
        self.server_url, self.ip, self.state_dir = server_url, ip, state_dir
        self.directories = directories if directories is not None else runtime_dirs()
        self._files: list[IO[str]] = []
        self.paths: list[Path] = []

    @property
    def held(self) -> bool:
        """Whether this process holds the locks."""
        return bool(self._files)

    def path_of(self, index: int) -> Path | None:
        """Where the lock of slot `index` is (or would be) kept; None when nowhere can hold it."""
        key = dict(self.identities)[index]
        for directory in self.directories:
            opened = _open_in(directory, lock_name(key))
            if opened is not None:
                opened[0].close()
                return directory / lock_name(key)
        return None

    def acquire(self) -> None:
        """Lock every slot's identity; ConfigError naming the other daemon when one is held."""
        try:
            for index, key in self.identities:
                self._lock_one(index, key)
        except BaseException:
            self.release()
            raise

    def _lock_one(self, index: int, key: str) -> None:
        for directory in self.directories:
            opened = _open_in(directory, lock_name(key))
            if opened is not None:
                break
        else:
            raise ConfigError(f"cannot make a node lock in {' or '.join(map(str, self.directories))}")
        f, writable = opened
        path = directory / lock_name(key)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(f)
            f.close()
            raise ConfigError(f"another ufdl-node ({holder}) runs node {self.ip}/{index} of "
                              f"{self.server_url}; lock {path}") from None
        except OSError as e:
            f.close()
            raise ConfigError(f"cannot lock {path}: {e.strerror}") from None
        if writable:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n{self.state_dir}\n")
            f.flush()
        self._files.append(f)
        self.paths.append(path)

    def release(self) -> None:
        """Drop the locks (closing a file drops its flock); the files stay, harmlessly."""
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        self._files.clear()
        self.paths.clear()


def _holder(f: IO[str]) -> str:
    """"pid N, state directory D" from a held lock file, as far as it says."""
    f.seek(0)
    lines = f.read().splitlines()
    pid = lines[0].strip() if lines else ""
    if not pid.isdigit():
        return "pid unknown"
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:  # written by an earlier holder: the current one could not write
        return "pid unknown"
    except PermissionError:  # alive, another user's
        pass
    where = f", state directory {lines[1].strip()}" if len(lines) > 1 and lines[1].strip() else ""
    return f"pid {pid}{where}"
