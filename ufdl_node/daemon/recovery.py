"""What a restart does with what a previous process left: records in, decisions out.

The supervisor calls :meth:`Recovery.run` once, after registering its nodes and before
its slots take work. In order:

1. **The journal** (:mod:`.journal`, records of jobs that were running): a job whose
   handler succeeded is *completed* (outputs the server lacks uploaded from the kept
   work directory once their size and sha256 match, the log, the finish), not run
   again; a job whose handler failed is *failed* with its error; a job mid-handler is
   left to step 2, its work directory kept until step 3. That matters most on the real
   server, which keeps a job's outputs after a reset: a second run could not upload
   them again.
2. **Each node's current job** (what the server counts as running there): a job the
   node died running more than ``max_crash_restarts`` times is *failed* as a poison job
   (see :mod:`.crashes`); a job whose container still runs is *re-attached* (its slot
   runs it again and the handler follows the container, :mod:`.containers`); any other
   is *handed back* ("node restarted during job": finish with the reason, reset,
   release), and jobs the node holds but never started are released.
3. The work directories of jobs left mid-handler go, but those re-attached.
4. **Hand-backs half done** (recorded in the node's state before their first call):
   completed, so that no job stays ERRORED and held.

Every call waits out an outage (the supervisor's ``until_reachable``, which gives up
only on a stop signal); a refusal ends what can be done for that job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..client import UfdlClient
from ..durable import file_digest
from ..errors import MalformedReply, RefusedError, ServerError, TransientError
from ..logs import bind_job, get_logger, one_line
from ..protocol import JobView, Phase
from ..registry import Registry
from ..settings import NodeSettings
from .containers import ContainerHost
from .crashes import poison_reason
from .journal import FAILED, RUNNING, Journal, JournalRecord
from .poller import Offer
from .reporting import LOG_OUTPUT, Reporter
from .slot import Slot
from .state import NodeState
from .workdirs import is_job_root, job_log, job_root

T = TypeVar("T")
UntilReachable = Callable[[str, Callable[[], Awaitable[T]]], Awaitable[T]]

log = get_logger("ufdl_node.recovery")


@dataclass
class KeptLog:
    """A job log left in a kept work directory, as the reporter's upload_log takes it."""

    path: Path

    def note(self, line: str) -> None:
        """Add a line saying what the restart did (a log whose file is gone is left alone)."""
        if self.path.parent.is_dir():
            with contextlib.suppress(OSError):
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(f"{line}\n")

    def close(self) -> None:
        """Nothing to close: no process writes it any more."""


class Recovery:
    """One restart's recovery (see the module's docstring)."""

    def __init__(self, *, client: UfdlClient, registry: Registry, settings: NodeSettings,
                 journal: Journal, state: NodeState, containers: ContainerHost | None,
                 until_reachable: UntilReachable[Any]) -> None:
        self.client = client
        self.registry = registry
        self.settings = settings
        self.journal = journal
        self.state = state
        self.containers = containers
        self.until_reachable = until_reachable
        self.ended: set[int] = set()  # jobs the journal's records ended (across repeats)
        self.mid_handler: dict[int, Path] = {}  # jobs left mid-handler: their work directories

    async def run(self, slots: list[Slot], current: Mapping[Slot, int | None]) -> dict[Slot, Offer]:
        """Recover everything; the jobs to re-attach, by slot (their slots run them first).
        `current`: each slot's node's current_job as registration found it."""
        reporters = {slot.node_pk: slot.reporter for slot in slots}
        ended = await self.until_reachable("recover", functools.partial(self.complete_journal, reporters))
        reattach: dict[Slot, Offer] = {}
        for slot in slots:
            pk = current.get(slot)
            if pk in ended or (pk is not None and await self._poisoned(slot, pk)):
                pk = None  # the journal finished it, or the node died running it too often
            offer = await self._reattach(slot, pk)
            if offer is not None:
                reattach[slot] = offer
                pk = None  # its job goes on: not the usual error, reset, release
            hand_back = functools.partial(self._hand_back_current, slot.reporter, pk)
            await self.until_reachable("recover", hand_back)
        # A job left mid-handler runs again from scratch, unless its container was re-attached.
        self._clean_mid_handler(keep={offer[0].pk for offer in reattach.values()})
        await self._complete_handbacks({slot.node_pk: slot for slot in slots})
        return reattach

    # -- 1. the journal --------------------------------------------------------------------

    async def complete_journal(self, reporters: Mapping[int, Reporter]) -> set[int]:
        """Complete or close every record a previous process left; the pks of jobs it ended.

        A job that was mid-handler is not ended here (step 2 hands it back). A transient
        fault propagates with the record still open: the caller repeats the call once the
        server is back (and may stop meanwhile, on a signal).
        """
        for record in self.journal.left_behind():
            self.journal.adopt(record)
            with bind_job(job_pk=record.pk, template=record.template):
                try:
                    if await self._record(record, reporters.get(record.node)):
                        self.ended.add(record.pk)
                except (TransientError, MalformedReply):  # waited out by the caller, like an outage
                    raise
                except (ServerError, KeyError, TypeError, ValueError) as e:
                    # Refused for good, or a reply without a usable job: the usual recovery
                    # still hands a job left STARTED back to the pool.
                    log.warning("could not complete a journaled job; closing its record",
                                job_pk=record.pk, error=one_line(e))
            if record.pk in self.mid_handler:
                self.journal.drop(record.pk)  # its starts count: the poison check reads them
            else:
                self.journal.close(record.pk)
                self._remove_work_dir(record.pk, Path(record.job_root))
        return self.ended

    async def _record(self, record: JournalRecord, reporter: Reporter | None) -> bool:
        """Complete or fail one journaled job (True), or leave it (False)."""
        pk = record.pk
        if reporter is None:
            log.warning("journal record of a node this daemon no longer runs; closing it",
                        job_pk=pk, node=record.node)
            return False
        job = JobView.parse(await reporter.client.get_job(pk, node_id=record.node))
        if not (job.held_by(record.node) and job.phase is Phase.STARTED and not job.cancelled):
            log.warning("journal record of a job no longer ours or no longer running; closing it",
                        job_pk=pk, phase=str(job.phase), holder=job.holder)
            return False
        if record.handler == RUNNING:
            log.info("journaled job was mid-handler; it goes back to the pool", job_pk=pk)
            self.mid_handler[pk] = Path(record.job_root)
            return False
        if record.handler == FAILED:
            log.info("finishing a job whose handler failed before a restart", job_pk=pk)
            await reporter.finish_error(pk, record.error or "handler failed", log=False)
            return True
        problem = await self._upload_missing(record, job, reporter)
        if problem is not None:
            await reporter.finish_error(pk, problem)
        else:
            await reporter.finish(pk)
            log.info("completed a job whose handler had succeeded before a restart", job_pk=pk)
        return True

    async def _upload_missing(self, record: JournalRecord, job: JobView, reporter: Reporter) -> str | None:
        """Upload the outputs the server lacks from the kept files; the job's error, if any."""
        for output in record.outputs:
            if output.uploaded and (output.name, output.type) in job.outputs:
                continue
            path = Path(output.path)
            try:
                size, sha256 = await asyncio.to_thread(file_digest, path)
            except OSError as e:
                return f"output {output.name}/{output.type} is lost: {path}: {e.strerror}"
            if (size, sha256) != (output.size, output.sha256):
                return f"output {output.name}/{output.type} changed on disk since it was made; not uploaded"
            log.info("uploading an output the server lacks", output=f"{output.name}/{output.type}")
            try:
                await reporter.upload(job.pk, output.name, output.type, path, sha256=sha256)
            except ServerError as e:
                return f"output {output.name}/{output.type} could not be uploaded: {one_line(e)}"
        if not any(o.type == LOG_OUTPUT[1] and o.name.startswith(LOG_OUTPUT[0]) for o in record.outputs):
            kept = KeptLog(job_log(Path(record.job_root)))
            kept.note("the node restarted after the handler had succeeded; the job was completed "
                      "from its kept work directory, not run again")
            await reporter.upload_log(job.pk, kept, job.outputs)
        return None

    # -- 2. each node's current job --------------------------------------------------------

    async def _poisoned(self, slot: Slot, pk: int) -> bool:
        """Whether job `pk`, left running on `slot` by a process that died, was ended ERRORED
        for having taken the node down too often (crashes.py)."""
        root = self.mid_handler.get(pk, job_root(self.settings.job_work_root, pk))
        return await self.until_reachable("recover", functools.partial(
            end_poison_job, slot.reporter, self.state, pk, root, self.settings.max_crash_restarts))

    async def _reattach(self, slot: Slot, current: int | None) -> Offer | None:
        """The job whose container a previous process left running for `slot` (still ours
        and STARTED), to be followed again; any other container of the node goes."""
        if self.containers is None:
            return None
        client, registry, work_root = self.client, self.registry, self.settings.job_work_root

        async def read_job(pk: int) -> JobView:
            reply = await self.until_reachable("recover", functools.partial(client.get_job, pk))
            return JobView.parse(reply)

        def can_run(job: JobView) -> bool:
            return registry.for_template(job.template_name, job.template_version or 0) is not None

        job = await self.containers.recover_slot(slot.node_pk, lambda pk: job_root(work_root, pk),
                                                 read_job, current, can_run)
        if job is None:
            return None
        spec = registry.for_template(job.template_name, job.template_version or 0)
        assert spec is not None
        return job, spec

    async def _hand_back_current(self, reporter: Reporter, current_job: int | None) -> None:
        """Hand back the job the node's record still counts as current, then any stray hold."""
        if current_job is not None:
            with bind_job(job_pk=current_job):
                reporter.log.warning("recovering job left by a previous process", job_pk=current_job)
                try:
                    await reporter.end_stale_job(current_job, "node restarted during job")
                except RefusedError as e:  # the server will not let us: nothing left to do for it
                    reporter.log.warning("could not recover the job", error=one_line(e))
        await reporter.release_strays()

    # -- 3. and 4. -------------------------------------------------------------------------

    def _clean_mid_handler(self, keep: set[int]) -> None:
        """Remove the work directories of the jobs left mid-handler, except those in `keep`
        (their containers were re-attached and still write there)."""
        for pk, root in self.mid_handler.items():
            if pk not in keep:
                self._remove_work_dir(pk, root)
        self.mid_handler.clear()

    def _remove_work_dir(self, pk: int, root: Path) -> None:
        # the name check: a record edited by hand must not aim the removal anywhere else
        if not self.settings.keep_work_dirs and is_job_root(root, pk):
            shutil.rmtree(root, ignore_errors=True)

    async def _complete_handbacks(self, by_node: Mapping[int, Slot]) -> None:
        """Finish the hand-backs a previous process began (reset, release)."""
        for pk in self.state.pending_handbacks():
            try:
                reply = await self.until_reachable("recover", functools.partial(self.client.get_job, pk))
                job = JobView.parse(reply)
            except (RefusedError, KeyError, TypeError, ValueError) as e:  # say, the job is gone
                log.info("forgetting a hand-back", job_pk=pk, reason=one_line(e))
                self.state.end_handback(pk)
                continue
            holder = by_node.get(job.holder) if job.holder is not None else None
            if holder is None:
                self.state.end_handback(pk)
            else:
                complete = functools.partial(complete_handback, holder.reporter, job)
                await self.until_reachable("recover", complete)


async def complete_handback(reporter: Reporter, job: JobView) -> None:
    """Finish a hand-back a previous process began (`job` held by this node)."""
    if job.phase is Phase.ERRORED and not job.cancelled:
        with bind_job(job_pk=job.pk):
            reporter.log.info("completing a hand-back a previous process began")
            await reporter.hand_back_errored(job.pk)
    else:
        reporter.state.end_handback(job.pk)


async def end_poison_job(reporter: Reporter, state: NodeState, pk: int, job_root: Path,
                         max_crash_restarts: int) -> bool:
    """Finish job `pk` ERRORED (True) when the node has died running it more than
    `max_crash_restarts` times; else False, and the usual recovery hands it back.

    `job_root`: where the job's last run kept its log (uploaded with a note, when it is there).
    A transient fault reading the job propagates: the caller repeats the call once the
    server is back (and may stop meanwhile, on a signal).
    """
    deaths = state.starts_of(pk)
    if deaths <= max_crash_restarts:
        return False
    with bind_job(job_pk=pk):
        try:
            job = JobView.parse(await reporter.client.get_job(pk, node_id=reporter.node_pk))
        except (TransientError, MalformedReply):  # waited out by the caller, like an outage
            raise
        except (ServerError, KeyError, TypeError, ValueError) as e:
            log.warning("cannot read a job the node died running; the usual recovery takes it",
                        job_pk=pk, error=one_line(e))
            return False
        if not (job.held_by(reporter.node_pk) and job.phase is Phase.STARTED and not job.cancelled):
            state.forget_starts(pk)  # no longer ours to end: the usual recovery says so
            return False
        reason = poison_reason(deaths)
        log.error("the node died running this job too often; ending it", job_pk=pk, deaths=deaths,
                  max_crash_restarts=max_crash_restarts)
        kept = KeptLog(job_log(job_root))
        kept.note(reason)
        await reporter.upload_log(pk, kept, job.outputs)
        try:
            await reporter.finish_error(pk, reason, log=False)
        except RefusedError as e:
            log.warning("could not end a job the node died running", job_pk=pk, error=one_line(e))
            return False
    state.forget_starts(pk)
    return True
