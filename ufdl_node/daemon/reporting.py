"""How a slot tells the server a job's end: finish, hand back, release, the log, recovery.

Every call here outlasts an outage (:meth:`Reporter.until_done`): a job this node
acquired must end FINISHED, ERRORED with a readable reason, or back in the pool,
never wedged. Refusals propagate (the server no longer lets this node act on it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..backoff import Backoff, retry_transient
from ..client import UfdlClient
from ..durable import file_digest
from ..errors import NotAcceptable, OutputRefused, RefusedError, ServerError, TransientError
from ..logs import bind_job, one_line
from ..protocol import JobView, Phase
from .logoutput import LOG_NAME, LOG_TYPE, pack_log
from .state import NodeState

if TYPE_CHECKING:
    from .journal import Journal

T = TypeVar("T")
LOG_OUTPUT = (LOG_NAME, LOG_TYPE)  # as the stock launcher types its log: Compressed<JSON, 8>
LOG_NAMES = 20  # log, log-2, ... log-20: one per run of a job the real server has seen
FIRST_RETRY_S = 0.5


class JobLog(Protocol):
    """The job's log file, as the reporter needs it."""

    path: Path

    def close(self) -> None: ...


class Reporter:
    """One node's lifecycle calls that end a job, each repeated through an outage."""

    def __init__(self, client: UfdlClient, node_pk: int, state: NodeState, log: Any,
                 max_delay_s: float, journal: Journal | None = None) -> None:
        self.client = client
        self.journal = journal
        self.node_pk = node_pk
        self.state = state
        self.log = log
        self.max_delay_s = max_delay_s
        self.last_error: str | None = None
        self.waiting_out = False  # a call is being repeated through an outage now

    async def until_done(self, action: str, call: Callable[[], Awaitable[T]]) -> T:
        """Repeat a lifecycle call through an outage: a job must never stay wedged.

        The client already retries each call a few times; this outlasts a longer
        outage (the server being restarted), backing off up to lifecycle_retry_max_s.
        """
        def on_error(error: Exception, delay_s: float) -> None:
            self.last_error = one_line(error)
            self.waiting_out = True
            self.log.warning("server unavailable; will retry", action=action, error=self.last_error,
                             retry_in_s=round(delay_s, 2))

        try:
            return await retry_transient(call, Backoff(FIRST_RETRY_S, self.max_delay_s), asyncio.sleep,
                                         on_error, (TransientError,))
        finally:
            self.waiting_out = False

    async def upload(self, pk: int, name: str, type_: str, path: Path, *, sha256: str | None = None) -> None:
        """Upload output NAME/TYPE from `path` through an outage; the journal records it.

        Where the server holds NAME/TYPE already (the real server keeps a job's outputs after
        a reset, soft-deleted, and refuses the same NAME/TYPE again; or an upload of ours
        landed just before a crash), its copy is downloaded and compared with `path`: the
        same bytes count as uploaded, other bytes raise OutputRefused saying so.
        """
        try:
            await self.until_done("upload", lambda: self.client.upload_output(pk, self.node_pk, name,
                                                                              type_, path))
        except OutputRefused as refused:
            if not await self._server_copy_matches(pk, name, type_, path, sha256):
                raise OutputRefused("upload_output", f"output {name}/{type_}: the server keeps a "
                                    "different copy from an earlier run of this job (it keeps outputs "
                                    "after a reset and refuses the same name and type again); "
                                    "this run's output was not stored") from refused
            self.log.info("output already on the server with the same bytes", output=f"{name}/{type_}")
        if self.journal is not None:  # hashing a big output blocks: off the event loop
            try:
                await asyncio.to_thread(self.journal.output_uploaded, pk, name, type_, path)
            except OSError as e:  # the server has it; only a restart's re-upload of it is lost
                self.log.warning("output uploaded but not journaled", output=f"{name}/{type_}",
                                 error=one_line(e))

    async def _server_copy_matches(self, pk: int, name: str, type_: str, path: Path,
                                   sha256: str | None) -> bool:
        """Whether the server's copy of output NAME/TYPE has the bytes of `path` (the real
        server's output info has no hash: the copy is downloaded beside `path` and hashed)."""
        kept = path.with_name(f".{path.name}.server-copy")
        try:
            await self.until_done("download", lambda: self.client.download_output(pk, name, type_, kept))
            theirs = await asyncio.to_thread(file_digest, kept)
            ours = await asyncio.to_thread(file_digest, path) if sha256 is None else None
        except (RefusedError, OSError) as e:
            self.log.warning("cannot compare an output with the server's copy", output=f"{name}/{type_}",
                             error=one_line(e))
            return False
        finally:
            await asyncio.to_thread(kept.unlink, missing_ok=True)
        return theirs[1] == (sha256 if ours is None else ours[1])

    # -- ending a job -------------------------------------------------------------------

    async def finish(self, pk: int) -> None:
        """Finish a job with success."""
        await self.until_done("finish", lambda: self.client.finish(pk, self.node_pk))

    async def finish_error(self, pk: int, reason: str, *, log: bool = True) -> None:
        """Finish a job with `reason` (one line, at most 1000 characters)."""
        reason = one_line(reason, 1000)
        self.last_error = reason
        if log:
            self.log.warning("job failed", reason=reason)
        await self.until_done("finish", lambda: self.client.finish(pk, self.node_pk, error=reason))

    async def finish_quietly(self, pk: int, error: str) -> None:
        """Finish with `error`; a refusal is only logged (the job is no longer ours)."""
        try:
            await self.until_done("finish", lambda: self.client.finish(pk, self.node_pk, error=error))
        except RefusedError as e:
            self.log.info("finish refused", job_pk=pk, error=one_line(e))

    async def release_quietly(self, pk: int) -> None:
        """Release a held job; a refusal is only logged."""
        try:
            await self.until_done("release", lambda: self.client.release(pk, self.node_pk))
        except RefusedError as e:
            self.log.info("release refused", job_pk=pk, error=one_line(e))

    async def hand_back(self, pk: int, reason: str) -> None:
        """Finish with `reason`, reset, release: the job goes back to the pool.

        Recorded in the node's state first, so that a crash half-way (after the finish,
        before the release) is completed by the next start (recovery.complete_handback).
        """
        self.state.begin_handback(pk)
        await self.finish_error(pk, reason, log=False)
        await self.hand_back_errored(pk)

    async def hand_back_errored(self, pk: int) -> None:
        """An ERRORED job of ours goes back to the pool: reset, then release."""
        try:
            await self.until_done("reset", lambda: self.client.reset(pk, self.node_pk))
        except RefusedError as e:
            self.log.warning("reset refused; leaving the job errored", error=one_line(e))
        else:
            await self.release_quietly(pk)
        self.state.end_handback(pk)  # not in a finally: a cancelled hand-back stays recorded

    async def upload_log(self, pk: int, job_log: JobLog, taken: Collection[tuple[str, str]]) -> None:
        """Upload the job log as output `log`, or `log-2`, `log-3`, ... where the real server
        keeps (soft-deleted) logs of earlier runs under the names before (`taken`), packed
        as the stock launcher uploads its log (:mod:`.logoutput`)."""
        job_log.close()
        text_path = job_log.path
        try:
            empty = text_path.stat().st_size == 0
        except OSError:  # nothing was logged (the file is made at the first line), or unreadable
            empty = True
        if empty:
            return  # nothing to say: an empty output would only cost the server a call
        try:
            packed = text_path.with_name(text_path.name + ".zip")
            log_path = await asyncio.to_thread(pack_log, text_path, packed)
        except OSError as e:
            self.log.warning("could not pack the job log", error=one_line(e))
            return
        name, type_ = LOG_OUTPUT
        candidates = [name] + [f"{name}-{n}" for n in range(2, LOG_NAMES + 1)]
        for candidate in candidates:
            if (candidate, type_) in taken:
                continue
            try:
                await self.upload(pk, candidate, type_, log_path)
                return
            except OutputRefused:
                continue  # kept by the server from an earlier run: try the next name
            except ServerError as e:
                self.log.warning("could not upload the job log", error=one_line(e))
                return
        self.log.warning("job log not uploaded: every log name is taken on the server",
                         names=f"{candidates[0]}..{candidates[-1]}")

    # -- what a previous process left behind (UFDL-API.md section 6; see recovery.py) -----

    async def release_strays(self) -> int:
        """Release jobs this node holds but never started (an acquire whose reply was lost,
        or a process that died between acquire and start); how many. Safe only while the
        slot is idle."""
        spec = {"expressions": [{"type": "exact", "field": "node", "value": self.node_pk},
                                {"type": "isnull", "field": "start_time"}]}
        strays = await self.client.list_jobs(spec, node_id=self.node_pk)
        for job in strays:
            with bind_job(job_pk=job.get("pk")):
                self.log.info("releasing a job held but never started", job_pk=job.get("pk"))
                await self.release_quietly(int(job["pk"]))
        return len(strays)

    async def end_stale_job(self, pk: int, reason: str) -> None:
        """A job this node started but no longer runs: finish it with `reason`, then hand it back."""
        self.state.begin_handback(pk)
        try:
            job = JobView.parse(await self.client.finish(pk, self.node_pk, error=reason))
        except NotAcceptable:
            job = JobView.parse(await self.client.get_job(pk))
        if job.held_by(self.node_pk) and job.error_reason == reason and job.phase is Phase.ERRORED \
                and not job.cancelled:
            await self.hand_back_errored(pk)
        else:
            self.state.end_handback(pk)
