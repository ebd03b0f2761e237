"""What a node remembers across restarts, in one small JSON file in its state directory.

- ``attempts``: how many times each job was handed back for a retry, so that a job
  that keeps asking for one ends ERRORED after ``max_attempts``, even across restarts.
- ``handbacks``: jobs this node is handing back to the pool (finish with error, then
  reset, then release). A job is written here before the finish and removed after
  the release, so a crash in between is finished by the next start.
- the starts: how many times each job began its handler here without being reported
  since: a job the node died running (a handler that kills the process, the OOM killer,
  a watchdog kill of a blocked event loop) keeps its count across restarts, and the
  recovery ends it ERRORED once the count passes ``max_crash_restarts`` (see
  :mod:`.crashes`). Counted before the handler runs, forgotten once the job's end is
  reported: twice per job, so not in this file but in an append-only log beside it,
  ``starts.log`` (see :mod:`.startlog`; fsynced in a thread). An older version's
  ``starts`` here are taken over into the log at the first start.

Writes are durable and whole (a temporary file, fsynced, renamed over the old one, then the
directory fsynced): a crash or a power loss never leaves half a file. A file that is
corrupt anyway (a disk error, a hand edit) is moved aside with one warning, and the node
starts from a fresh state rather than not at all.

:class:`StateDirLock` keeps a second daemon off a state directory that one is using.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from pathlib import Path
from typing import IO, Any

from ..durable import fsync_path
from ..errors import ConfigError
from ..logs import get_logger, one_line
from .startlog import StartLog

log = get_logger("ufdl_node.state")
LOCK_FILE = "ufdl-node.lock"


def write_durably(path: Path, text: str) -> None:
    """Replace `path` with `text`, whole or not at all, and make it survive a power loss.

    A temporary file in the same directory, flushed and fsynced, renamed over `path`,
    then the directory fsynced so that the rename itself is on disk (STYLE.md item 16).
    """
    write_whole(path, text, durable=True)


def write_whole(path: Path, text: str, *, durable: bool) -> None:
    """Replace `path` with `text`, whole or not at all (a temporary file renamed over it).

    Without `durable` nothing is fsynced: the new text survives a crash of the process
    (it is in the kernel's page cache), not always a power loss; :func:`sync_file` later
    makes it durable too.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        f = tmp.open("w", encoding="utf-8")
    except FileNotFoundError:  # the directory is gone (or was never made): make it once
        path.parent.mkdir(parents=True, exist_ok=True)
        f = tmp.open("w", encoding="utf-8")
    with f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_path(path.parent)


def sync_file(path: Path) -> None:
    """Fsync a file written by :func:`write_whole` and its directory (blocking: call it in a
    thread). A file removed meanwhile needs nothing."""
    try:
        fsync_path(path)
    except FileNotFoundError:
        return
    fsync_path(path.parent)


START_LOG = "starts.log"  # beside state.json (see .startlog)


def fresh_state() -> dict[str, Any]:
    return {"attempts": {}, "handbacks": []}


class StateDirLock:
    """An exclusive flock on ``<state_dir>/ufdl-node.lock``, held while the daemon runs.

    The kernel drops the lock when the process dies, however it dies: there is never a
    stale lock to clean up. The holder's pid is written into the file, after locking,
    so that the refusal can name it.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock; ConfigError "another ufdl-node (pid N) is using DIR" if it is held."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # "a" creates without truncating: the holder's pid must stay readable to the refused one.
        f = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ConfigError(f"another ufdl-node (pid {holder}) is using {self.state_dir}") from None
        except OSError as e:
            f.close()
            raise ConfigError(f"cannot lock {self.path}: {e.strerror}") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._file is not None

    def release(self) -> None:
        """Drop the lock (closing the file drops the flock); the pid is left behind, harmlessly."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class NodeState:
    """The node's small persistent state (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # slots share one file; keep read-modify-write whole
        # What the file holds, read once: the state directory's lock makes this process its
        # only writer (a job's end reads it, and must not cost a read of the file each time).
        self._data: dict[str, Any] | None = None
        self.starts = StartLog(path.with_name(START_LOG))

    def _read(self) -> dict[str, Any]:
        if self._data is None:
            self._data = self._load()
        return self._data

    def _load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return fresh_state()
        except (OSError, ValueError) as e:  # ValueError: not UTF-8
            return self._corrupt(f"cannot read it: {one_line(e)}")
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            attempts, handbacks = data.get("attempts", {}), data.get("handbacks", [])
            starts = data.get("starts", {})
            if not isinstance(attempts, dict) or not isinstance(handbacks, list) \
                    or not isinstance(starts, dict):
                raise ValueError("attempts, handbacks or starts of the wrong type")
            state = {"attempts": {str(k): int(v) for k, v in attempts.items()},
                     "handbacks": [int(pk) for pk in handbacks]}
            if starts:  # an older version's: the start log takes them over (see _starts)
                state["starts"] = {int(k): int(v) for k, v in starts.items()}
            return state
        except (ValueError, TypeError) as e:
            return self._corrupt("empty" if not text.strip() else one_line(e, 200))

    def _corrupt(self, why: str) -> dict[str, Any]:
        """One warning, the bad file kept aside for a post-mortem, and a fresh state."""
        aside = self.path.with_name(self.path.name + ".corrupt")
        with contextlib.suppress(OSError):
            os.replace(self.path, aside)
        log.warning("state file is corrupt; starting from a fresh state", path=str(self.path),
                    reason=why, kept_as=str(aside))
        return fresh_state()

    def _write(self, data: dict[str, Any], *, durable: bool = True) -> None:
        write_whole(self.path, json.dumps(data), durable=durable)

    # -- retries -----------------------------------------------------------------------

    def bump_attempts(self, pk: int) -> int:
        """Count one more hand-back of job `pk` for a retry; the count so far."""
        with self._lock:
            data = self._read()
            data["attempts"][str(pk)] = data["attempts"].get(str(pk), 0) + 1
            self._write(data)
            return int(data["attempts"][str(pk)])

    def clear_attempts(self, pk: int) -> None:
        with self._lock:
            data = self._read()
            if data["attempts"].pop(str(pk), None) is not None:
                self._write(data)

    # -- starts of jobs the node may have died running (see crashes.py) ---------------------

    def _starts(self) -> StartLog:
        """The start log, read at the first call (an older version's counts taken over)."""
        if not self.starts.loaded:
            data = self._read()
            legacy = data.pop("starts", None)
            self.starts.load(legacy or {})
            if legacy:
                self._write(data)  # in the log now (a crash just before counts them twice, once)
        return self.starts

    def count_start(self, pk: int) -> int:
        """Count one more start of job `pk`'s handler; the count so far. One line appended
        to the start log (a crash of the process loses nothing), not fsynced: the caller
        syncs it in a thread (:meth:`sync_starts`), so that a job's start does not wait for
        the disk."""
        with self._lock:
            return self._starts().count(pk)

    def starts_of(self, pk: int) -> int:
        """How many times job `pk` began here without being reported since."""
        with self._lock:
            return self._starts().of(pk)

    def forget_starts(self, pk: int) -> None:
        """Job `pk`'s end was reported: the node did not die running it (not fsynced: a lost
        forget only leaves a count the cap drops in time)."""
        with self._lock:
            self._starts().forget(pk)

    def sync_starts(self) -> None:
        """Make the start log survive a power loss (blocking: call it in a thread)."""
        with self._lock:
            handle = self.starts.sync_handle()
        self.starts.sync(handle)

    # -- hand-backs in progress ------------------------------------------------------------

    def begin_handback(self, pk: int) -> None:
        with self._lock:
            data = self._read()
            if pk not in data["handbacks"]:
                data["handbacks"].append(pk)
                self._write(data)

    def end_handback(self, pk: int) -> None:
        with self._lock:
            data = self._read()
            if pk in data["handbacks"]:
                data["handbacks"].remove(pk)
                self._write(data)

    def pending_handbacks(self) -> list[int]:
        with self._lock:
            return list(self._read()["handbacks"])
