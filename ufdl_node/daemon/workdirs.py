"""The layout of a job's directory, and a slot's job directories made ahead and removed behind.

The layout is spelled here only (:func:`job_root`, :func:`work_dir`, :func:`job_log`,
:func:`stage_dir`): each job runs in ``<work_dir>/job-<pk>/work``, its log ``job.log`` and
its staged outputs ``outputs/`` beside it in ``job-<pk>``, a fresh
directory per run. Making two directories and removing a tree are each a few tenths of a
millisecond on a journaling file system, as long as the protocol's own calls for a short
job: so a slot keeps one empty directory ready (``.spare-<slot>-<pid>``, made in a thread after
each job), and a new job's directory is that one renamed (one call). A finished job's tree
is renamed aside (``.removing-...``, one call: the path is free at once) and removed in a
thread. What a stopped process left half done is swept once, at the first job.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

REMOVING = ".removing-"  # a job directory renamed aside, being removed in a thread
SPARE = ".spare-"  # an empty job directory made ahead for a slot's next job
_WORK = "work"  # in a job's directory: the handler's work directory
_LOG = "job.log"  # in a job's directory: the job log (uploaded as the output log)
_STAGE = "outputs"  # in a job's directory: outputs staged until the handler has succeeded


def job_root(work_root: Path, pk: int) -> Path:
    """The directory of job `pk` under the node's work root: its log, work and staged outputs."""
    return work_root / f"job-{int(pk)}"


def is_job_root(path: Path, pk: int) -> bool:
    """Whether `path` is named as job `pk`'s directory (a journal record edited by hand must
    not aim a removal anywhere else)."""
    return path.name == f"job-{int(pk)}"


def work_dir(root: Path) -> Path:
    """The handler's work directory in a job's directory `root`."""
    return root / _WORK


def job_log(root: Path) -> Path:
    """The job log in a job's directory `root`."""
    return root / _LOG


def stage_dir(root: Path) -> Path:
    """Where a job's outputs are staged in its directory `root`."""
    return root / _STAGE


class WorkDirs:
    """The job directories of one slot under `root` (the node's work_dir)."""

    def __init__(self, root: Path, slot: int) -> None:
        self.root = root
        self._slot = slot
        # Named for this process too: nothing another daemon on the same work_dir (a mistake,
        # but one a state-directory lock does not catch) makes or takes can be taken here.
        self._spare_path = root / f"{SPARE}{slot}-{os.getpid()}"
        self._spare_ready = False  # the spare directory is there, empty, made by this process
        self._making: asyncio.Task[None] | None = None  # the thread making it
        self._tasks: set[asyncio.Task[None]] = set()
        self._swept = False

    def job_root(self, pk: int) -> Path:
        """The directory of job `pk`: its log, and its work directory `work`."""
        return job_root(self.root, pk)

    def make(self, job_root: Path, *, keep: bool = False) -> Path:
        """A fresh, empty work directory in `job_root` (OSError when it cannot be made).

        `keep`: the directory of a re-attached job, whose container still writes there:
        kept as it is (made if missing)."""
        if not self._swept:
            self._swept = True
            for leftover in self.root.glob(f"{REMOVING}*"):  # a process stopped mid-removal
                self._in_thread(_rmtree, leftover)
            for spare in self.root.glob(f"{SPARE}{self._slot}-*"):  # made by an earlier process
                if spare != self._spare_path:
                    self._in_thread(_rmtree, spare)
        work = work_dir(job_root)
        if not keep:
            self.remove(job_root)  # left by an earlier run of this job here
            if self._take_spare(job_root):
                return work
        work.mkdir(parents=True, exist_ok=keep)
        return work

    def _take_spare(self, job_root: Path) -> bool:
        making = self._making
        if making is not None and making.done():
            self._making = None
            self._spare_ready = not making.cancelled() and making.exception() is None
        if not self._spare_ready:
            return False  # none ready (the first job, or still being made): mkdir as before
        self._spare_ready = False
        try:
            self._spare_path.rename(job_root)
            return True
        except OSError:
            return False

    def make_spare(self) -> None:
        """Make the next job's directory in a thread (a leftover one is made afresh)."""
        if not self._spare_ready and self._making is None:
            self._making = self._in_thread(_fresh_spare, self._spare_path)

    def recycle(self, job_root: Path) -> None:
        """A finished job's directory goes, and the next job's is made ahead; a directory
        the job left as it found it (an empty `work`, no log) is the next job's as it is."""
        if not self._spare_ready and self._making is None and _untouched(job_root):
            try:
                job_root.rename(self._spare_path)
                self._spare_ready = True
                return
            except OSError:
                pass
        self.remove(job_root)
        self.make_spare()

    def remove(self, job_root: Path) -> None:
        """Remove a job's directory without holding up the slot or the event loop: renamed
        aside at once (one call; the path is free for the next run), removed in a thread."""
        aside = job_root.with_name(f"{REMOVING}{job_root.name}-{time.monotonic_ns()}")
        try:
            job_root.rename(aside)
        except FileNotFoundError:
            return
        except OSError:  # cannot rename (odd file system): remove it where it is, now
            shutil.rmtree(job_root, ignore_errors=True)
            return
        self._in_thread(_rmtree, aside)

    def _in_thread(self, func: Callable[[Path], None], path: Path) -> asyncio.Task[None]:
        task = asyncio.create_task(asyncio.to_thread(func, path), name=f"workdir-{path.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _untouched(job_root: Path) -> bool:
    """Whether `job_root` holds nothing but an empty `work` directory."""
    try:
        with os.scandir(job_root) as entries:
            if [e.name for e in entries] != [_WORK]:
                return False
        with os.scandir(work_dir(job_root)) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _fresh_spare(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # a leftover of a stopped process, or a failed rename
    work_dir(path).mkdir(parents=True)
