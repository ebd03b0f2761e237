"""The job journal: what a running job has done, durable across a crash of the daemon.

One small JSON record per running job in ``<state_dir>/journal/job-<pk>.json``, each
write whole or not at all (a temporary file renamed over the record):

1. ``begin``: the job started here (pk, node, template, its work directory);
2. each output uploaded: name, type, size, sha256 and the file it came from;
3. the handler's end: ``succeeded``, or ``failed`` with the error the job ends with;
   from then on the finish is pending;
4. ``close``: the job was reported (finished, handed back, or no longer ours); the record
   goes, and with it the slot's reason to keep the work directory.

Beside the record, a job's start is counted at once in the node's start log (a line
appended before the handler runs; fsynced in a thread within STARTS_SYNC_DELAY_S, one fsync
for the starts of a burst of short jobs: see :mod:`.startlog`) and forgotten when the job's
end is reported: a job the node dies running, even within BEGIN_WRITE_S (before its record is
written), is counted, and the recovery ends it ERRORED once the node has died too often
running it (see :mod:`.crashes`).

A job's first write waits BEGIN_WRITE_S for its first event (see :meth:`Journal.begin`):
a job that ends sooner without uploading an output is not journaled at all, which costs a
crash at most that much work. Every write is in the kernel before the job moves on, so a
crash of the process (SIGKILL, the OOM killer, a bug) loses none. Against a power loss,
the records that change what a restart does are fsynced: each output's (inline: an
upload is slow anyway) and the handler's end (in a thread, beside the job's final report,
so that a short job does not wait for the disk). ``begin`` and ``close`` are not: a lost
``begin`` leaves the job to the usual recovery, which is what a mid-handler record leads
to anyway (a power loss stops the handler too), and a lost ``close`` leaves the record of
a job the server has as reported, which the next start reads back and closes.

This module only stores records; what a restart does with those a previous process
left (complete, fail, hand back) is :mod:`.recovery`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..durable import file_digest
from ..logs import get_logger, one_line
from .state import NodeState, sync_file, write_whole

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
BEGIN_WRITE_S = 0.5  # a job's first record waits this long for its first event (see begin)
STARTS_SYNC_DELAY_S = 0.05  # the start log's fsync waits this long for more starts to cover

log = get_logger("ufdl_node.journal")


@dataclass
class OutputRecord:
    """One output the server confirmed, and the file its bytes came from."""

    name: str
    type: str
    size: int
    sha256: str
    path: str
    uploaded: bool = True  # False: staged (the handler made it), not yet on the server


@dataclass
class JournalRecord:
    """What one running job has done so far."""

    pk: int
    node: int
    template: str
    job_root: str
    handler: str = RUNNING  # RUNNING, SUCCEEDED or FAILED
    error: str | None = None  # the error a FAILED job is finished with
    outputs: list[OutputRecord] = field(default_factory=list)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> JournalRecord:
        """A record from its JSON; KeyError, TypeError or ValueError when it is not one."""
        handler = str(data.get("handler", RUNNING))
        if handler not in (RUNNING, SUCCEEDED, FAILED):
            raise ValueError(f"unknown handler state {handler!r}")
        outputs = [OutputRecord(name=str(o["name"]), type=str(o["type"]), size=int(o["size"]),
                                sha256=str(o["sha256"]), path=str(o["path"]),
                                uploaded=bool(o.get("uploaded", True)))
                   for o in data.get("outputs", [])]
        error = data.get("error")
        return cls(pk=int(data["pk"]), node=int(data["node"]), template=str(data.get("template", "")),
                   job_root=str(data["job_root"]), handler=handler,
                   error=None if error is None else str(error), outputs=outputs)


class Journal:
    """The open records of this daemon's running jobs (see the module's docstring)."""

    def __init__(self, directory: Path, *, starts: NodeState | None = None) -> None:
        self.directory = directory
        self.starts = starts  # where each job's starts are counted (None: not counted)
        self._open: dict[int, JournalRecord] = {}
        self._syncs: set[asyncio.Future[None]] = set()  # fsyncs running in threads
        self._starts_sync: asyncio.Future[None] | None = None  # the start log's fsync in a thread
        self._starts_timer: asyncio.TimerHandle | None = None  # the next one, due soon
        self._starts_again = False  # more was appended while it ran: one more after it
        self._written: set[int] = set()  # open records that have a file
        self._timers: dict[int, asyncio.TimerHandle] = {}  # first writes still to come (begin)
        self._lock = threading.Lock()

    def _path(self, pk: int) -> Path:
        return self.directory / f"job-{pk}.json"

    def _write(self, record: JournalRecord, *, durable: bool = False) -> bool:
        try:
            # Whole: an output's record is written from a thread, the first one by a timer
            # on the event loop, and both go through the same temporary file.
            with self._lock:
                write_whole(self._path(record.pk), json.dumps(asdict(record)), durable=durable)
                self._written.add(record.pk)
            return True
        except OSError as e:
            # A safety net that cannot be written must not fail the job it guards: the job
            # runs on, and a crash now is recovered the old way (handed back, run again).
            log.warning("cannot write the job journal", job_pk=record.pk, error=one_line(e))
            return False

    def _sync_soon(self, pk: int) -> None:
        """Make job `pk`'s record survive a power loss, in a thread (see the module's docstring)."""
        self._sync_path_soon(self._path(pk))

    def _sync_path_soon(self, path: Path) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop: there is nothing to hold up
            self._sync(path)
            return
        future = loop.run_in_executor(None, self._sync, path)
        self._syncs.add(future)
        future.add_done_callback(self._syncs.discard)

    @staticmethod
    def _sync(path: Path) -> None:
        try:
            sync_file(path)
        except OSError as e:
            log.warning("cannot fsync the job journal", path=str(path), error=one_line(e))

    async def settle(self) -> None:
        """Wait for the fsyncs still running or due (at shutdown, and for tests)."""
        if self._starts_timer is not None:  # due soon: now
            self._starts_timer.cancel()
            self._launch_starts_sync()
        while self._syncs:
            await asyncio.gather(*self._syncs)

    # -- a running job's steps ------------------------------------------------------------

    def begin(self, pk: int, node: int, template: str, job_root: Path) -> None:
        """The job started on `node`; its files live in `job_root` until the record closes.

        Written BEGIN_WRITE_S later, or with the job's first output or its handler's end if
        sooner: a job that ends within that time costs one write, not two. Until then a
        crash leaves no record, and the job the usual recovery, which is what a record of a
        job mid-handler leads to as well (its work directory is kept all the same)."""
        record = JournalRecord(pk=pk, node=node, template=template, job_root=str(job_root))
        self._open[pk] = record
        self._count_start(pk)
        try:
            self._timers[pk] = asyncio.get_running_loop().call_later(BEGIN_WRITE_S, self._write_begin, record)
        except RuntimeError:  # outside the event loop: write it now
            self._write_begin(record)

    def _count_start(self, pk: int) -> None:
        if self.starts is None:
            return
        try:
            self.starts.count_start(pk)
        except OSError as e:  # like the record: the job runs on, uncounted
            log.warning("cannot count the job's start", job_pk=pk, error=one_line(e))
            return
        self._sync_starts_soon()

    def _sync_starts_soon(self) -> None:
        """Fsync the start log in a thread STARTS_SYNC_DELAY_S from now: the starts of short
        jobs meanwhile share it (one fsync and one thread's turn for a burst of jobs, not one
        each); while one runs, the next follows it and covers every line appended meanwhile."""
        if self._starts_sync is not None:
            self._starts_again = True
            return
        if self._starts_timer is not None:
            return  # due soon, and covers this start too
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside the event loop: there is nothing to hold up
            self._sync_starts()
            return
        self._starts_timer = loop.call_later(STARTS_SYNC_DELAY_S, self._launch_starts_sync)

    def _launch_starts_sync(self) -> None:
        self._starts_timer = None
        future = asyncio.get_running_loop().run_in_executor(None, self._sync_starts)
        self._starts_sync = future
        self._syncs.add(future)
        future.add_done_callback(self._starts_synced)

    def _starts_synced(self, future: asyncio.Future[None]) -> None:
        self._syncs.discard(future)
        self._starts_sync = None
        if self._starts_again:
            self._starts_again = False
            self._sync_starts_soon()

    def _sync_starts(self) -> None:
        assert self.starts is not None
        try:
            self.starts.sync_starts()
        except OSError as e:
            log.warning("cannot fsync the start log", path=str(self.starts.starts.path), error=one_line(e))

    def _write_begin(self, record: JournalRecord) -> None:
        if self._timers.get(record.pk) is not None and self._open.get(record.pk) is record:
            del self._timers[record.pk]
        if self._open.get(record.pk) is record and record.pk not in self._written:
            self._write(record)

    def output_staged(self, pk: int, name: str, type_: str, path: Path, size: int, sha256: str) -> None:
        """The handler made output NAME/TYPE, staged at `path`; it is uploaded once the
        handler has succeeded (blocking: the record is fsynced)."""
        record = self._open.get(pk)
        if record is None:
            return
        record.outputs = [o for o in record.outputs if (o.name, o.type) != (name, type_)]
        record.outputs.append(OutputRecord(name, type_, size, sha256, str(path), uploaded=False))
        self._write(record, durable=True)

    def output_uploaded(self, pk: int, name: str, type_: str, path: Path) -> None:
        """The server has output NAME/TYPE of job `pk`, made from `path` (blocking: hashes
        it, unless it is the staged file the record knows)."""
        record = self._open.get(pk)
        if record is None:
            return
        known = next((o for o in record.outputs if (o.name, o.type, o.path) == (name, type_, str(path))),
                     None)
        size, sha256 = (known.size, known.sha256) if known is not None else file_digest(path)
        record.outputs = [o for o in record.outputs if (o.name, o.type) != (name, type_)]
        record.outputs.append(OutputRecord(name, type_, size, sha256, str(path)))
        self._write(record, durable=True)

    def handler_succeeded(self, pk: int) -> None:
        """The handler returned: the job is done but for the log and the finish."""
        self._handler_ended(pk, SUCCEEDED, None)

    def handler_failed(self, pk: int, error: str) -> None:
        """The job is to end ERRORED with `error`; only the log and the finish are left."""
        self._handler_ended(pk, FAILED, error)

    def _handler_ended(self, pk: int, state: str, error: str | None) -> None:
        record = self._open.get(pk)
        if record is None:
            return
        record.handler, record.error = state, error
        if pk not in self._written and not record.outputs:
            # Ended within BEGIN_WRITE_S, and uploaded nothing: no record at all. A crash
            # before the finish lands leaves the job to the usual recovery (run again): at
            # most BEGIN_WRITE_S of work, and no output the real server would refuse twice.
            return
        if self._write(record):
            self._sync_soon(pk)

    def succeeded(self, pk: int) -> bool:
        """Whether job `pk`'s handler succeeded and its record says so on disk: a restart
        completes the job (uploads what is left, finishes it) without running it again."""
        record = self._open.get(pk)
        return record is not None and record.handler == SUCCEEDED and pk in self._written

    def is_open(self, pk: int) -> bool:
        """Whether job `pk` has a record this process has not closed."""
        return pk in self._open

    def close(self, pk: int) -> None:
        """The job was reported: forget it and its starts (its work directory may go now)."""
        self.drop(pk)
        if self.starts is not None:
            try:
                self.starts.forget_starts(pk)
            except OSError as e:
                log.warning("cannot forget the job's starts", job_pk=pk, error=one_line(e))

    def drop(self, pk: int) -> None:
        """Forget job `pk`'s record (not its starts: a job left mid-handler keeps its count)."""
        self._open.pop(pk, None)
        timer = self._timers.pop(pk, None)
        if timer is not None:  # a job that ended within BEGIN_WRITE_S: its first write is not due
            timer.cancel()
        if pk in self._written:  # a job that ended before its first write has no file
            self._written.discard(pk)
            with contextlib.suppress(FileNotFoundError):
                self._path(pk).unlink()

    # -- what a previous process left ---------------------------------------------------------

    def adopt(self, record: JournalRecord) -> None:
        """Take a record a previous process left as open (its file is there) until closed."""
        self._open[record.pk] = record
        self._written.add(record.pk)

    def left_behind(self) -> list[JournalRecord]:
        """The records a previous process did not close; a corrupt one is a warning, moved aside."""
        records = []
        for path in sorted(self.directory.glob("job-*.json")):
            try:
                records.append(JournalRecord.parse(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, KeyError, TypeError, ValueError) as e:
                log.warning("journal record is corrupt; ignoring it", path=str(path), reason=one_line(e, 200))
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(path.name + ".corrupt"))
        return records
