"""The starts of jobs the node may die running, counted in an append-only log.

A job's start is counted before its handler runs and forgotten once its end is reported
(see :mod:`.crashes`): two writes per job, on the event loop, on every short job's path. A
whole file rewritten each time (a temporary file renamed over it) costs about a millisecond
of a journaling file system's time each, longer than the protocol's own calls for a no-op
job; a line appended costs a microsecond. So ``<state_dir>/starts.log`` holds one line per
event:

- ``+<pk>``: job `pk` began its handler here once more;
- ``-<pk>``: job `pk`'s end was reported: its count is forgotten.

Each line is one ``write`` of a file opened for appending: a crash of the process (SIGKILL,
the OOM killer, a watchdog kill) never leaves part of one, and the line is in the kernel
before the handler runs. A power loss can leave a torn last line (part of a line, or zeros
where the file system had allocated but not written): a line without its newline, or one
that does not parse, is left out when the log is read back, with one warning. Against a
power loss the caller fsyncs the log in a thread (:meth:`StartLog.sync`), so that a job's
start does not wait for the disk: the journal does so within STARTS_SYNC_DELAY_S (50 ms) of
a start, one fsync for the starts of a burst of short jobs. (A job that takes the kernel
down sooner than that after its start may go uncounted; the process dying is always counted.)

The log is read once, at the first question, and compacted then and every COMPACT_LINES
lines appended since: rewritten whole (a temporary file renamed over it) with one ``+<pk>``
line per start still counted, oldest job first; at most MAX_STARTS jobs are remembered, the
oldest dropped first (jobs that went elsewhere after a restart).

Counts an older version kept in ``state.json`` (its ``starts``) are taken over once: written
into the log, then dropped from ``state.json`` by the caller (a crash between the two writes
counts those starts twice: once, at the upgrade, in a window of two writes).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..durable import fsync_path
from ..logs import get_logger, one_line

log = get_logger("ufdl_node.state")

MAX_STARTS = 256  # counts of jobs that went elsewhere after a restart: the oldest go first
COMPACT_LINES = 1024  # lines appended before the log is rewritten whole (about 500 jobs)


def replay(text: str, counts: dict[int, int] | None = None) -> tuple[dict[int, int], int]:
    """The counts the log's `text` leaves (over `counts`, an older store's), and how many
    lines were left out (torn or not a log line)."""
    counts = dict(counts or {})
    bad = 0
    lines = text.split("\n")
    bad += lines[-1] != ""  # no newline after it: a torn last line (or none at all)
    for line in lines[:-1]:
        sign, digits = line[:1], line[1:]
        if sign not in ("+", "-") or not digits.isdigit() or not digits.isascii():
            bad += 1
            continue
        if sign == "+":
            started(counts, int(digits))
        else:
            counts.pop(int(digits), None)
    return counts, bad


def started(counts: dict[int, int], pk: int) -> int:
    """One more start of job `pk` in `counts`; its count. Last in: the cap of MAX_STARTS
    drops the oldest job first."""
    count = counts.pop(pk, 0) + 1
    counts[pk] = count
    while len(counts) > MAX_STARTS:
        del counts[next(iter(counts))]
    return count


def compacted(counts: dict[int, int]) -> str:
    """The log's text that replays to `counts`: one ``+<pk>`` line per start, oldest job first."""
    return "".join(f"+{pk}\n" * count for pk, count in counts.items())


class StartLog:
    """The append-only log of job starts at `path` (see the module's docstring); not
    thread-safe by itself (:class:`.state.NodeState` holds a lock around it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._counts: dict[int, int] | None = None  # None: not read yet
        self._fd: int | None = None  # the log, open for appending
        self._lines = 0  # appended since the last compaction
        self._renamed = False  # compacted since the last sync: the directory needs one too
        self._newline = False  # the log ends in a torn line it could not be rid of: end it first

    @property
    def loaded(self) -> bool:
        return self._counts is not None

    def load(self, legacy: dict[int, int]) -> None:
        """Read the log and compact it (`legacy`: an older store's counts, taken over).

        Never fails: a log that cannot be read counts from nothing, one that cannot be
        rewritten (a full disk) is appended to as it is, and each says so in a warning; the
        appends themselves raise OSError to the caller (who counts the job as uncounted)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.warning("cannot read the start log; counting from nothing", path=str(self.path),
                        error=one_line(e))
            text = ""
        counts, bad = replay(text, legacy)
        if bad > (text == ""):
            log.warning("start log has lines that are not whole; leaving them out",
                        path=str(self.path), lines=bad)
        self._counts = counts
        try:
            self._compact()
        except OSError as e:
            log.warning("cannot rewrite the start log; appending to it as it is", path=str(self.path),
                        error=one_line(e))
            self._newline = text != "" and not text.endswith("\n")  # a torn last line: end it first

    def of(self, pk: int) -> int:
        """How many times job `pk` began here without being reported since."""
        assert self._counts is not None, "load() first"
        return self._counts.get(pk, 0)

    def count(self, pk: int) -> int:
        """One more start of job `pk`: a line appended; the count so far."""
        assert self._counts is not None, "load() first"
        count = started(self._counts, pk)
        self._append(f"+{pk}")
        return count

    def forget(self, pk: int) -> None:
        """Job `pk`'s end was reported: a line appended, if it was counted at all."""
        assert self._counts is not None, "load() first"
        if self._counts.pop(pk, None) is not None:
            self._append(f"-{pk}")

    def _append(self, line: str) -> None:
        if self._lines >= COMPACT_LINES:
            try:
                self._compact()  # the line's change is in the counts already
                return
            except OSError as e:  # a full disk: the line is appended instead, and again later
                log.warning("cannot rewrite the start log", path=str(self.path), error=one_line(e))
                self._lines = 0
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        data = line.encode("ascii") + b"\n"
        if self._newline:  # "~" spoils the torn line for good: it is left out, not completed
            data = b"~\n" + data
        os.write(self._fd, data)  # a few bytes: one write, whole
        self._newline = False
        self._lines += 1

    def _compact(self) -> None:
        """Rewrite the log whole from the counts (not fsynced: see :meth:`sync`)."""
        assert self._counts is not None
        self._close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(compacted(self._counts), encoding="ascii")
        os.replace(tmp, self.path)
        self._lines = 0
        self._renamed = True

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def sync_handle(self) -> tuple[int | None, bool]:
        """What :meth:`sync` flushes: a duplicate of the log's descriptor (the caller's to
        close) and whether the directory needs a flush too (a compaction renamed the log)."""
        renamed, self._renamed = self._renamed, False
        return (None if self._fd is None else os.dup(self._fd)), renamed

    def sync(self, handle: tuple[int | None, bool]) -> None:
        """Flush the log (blocking: call it in a thread, without the caller's lock)."""
        fd, renamed = handle
        if fd is not None:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        if renamed:
            with contextlib.suppress(FileNotFoundError):
                fsync_path(self.path)
            fsync_path(self.path.parent)

    def close(self) -> None:
        self._close()

