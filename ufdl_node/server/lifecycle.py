"""The job lifecycle as pure functions (UFDL-API.md section 3).

Nothing here does I/O. The HTTP layer reads a job into a :class:`JobState`,
asks one of the ``*_transition`` functions what the caller's action does, and
either answers the :class:`Refusal` or applies the :class:`Change` with a
compare-and-set on the fields it read. Keeping the rules here lets the tests
walk every (phase, action) pair without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..protocol import CANCELLED_REASON, Phase, phase_of


@dataclass(frozen=True)
class JobState:
    """The lifecycle fields of one job, as stored."""

    node: int | None = None
    start_time: str | None = None
    end_time: str | None = None
    error_reason: str | None = None
    is_cancelled: bool = False
    parent: int | None = None
    workable: bool = True


@dataclass(frozen=True)
class Refusal:
    """The action is refused with `status` and `detail`.

    `illegal` marks the refusals the real server answers with a 500 HTML page
    (an unguarded exception in its view); the embedded server answers them 406
    unless it imitates the real server.
    """

    status: int
    detail: str
    illegal: bool = False


@dataclass(frozen=True)
class Change:
    """What an allowed action does.

    `job` holds the job columns to set (empty for a no-op). `current_job`
    says what becomes of the calling node's ``current_job``: ``"set"``,
    ``"clear"`` or None (unchanged). `drop_outputs` asks for the job's outputs
    to go (reset, abort). `transition` names the web-socket message, if any.
    """

    job: dict[str, Any] = field(default_factory=dict)
    current_job: str | None = None
    drop_outputs: bool = False
    transition: str | None = None


Outcome = Change | Refusal


def phase(job: JobState) -> Phase:
    """The phase is derived from the fields, never stored (protocol.py holds the rule)."""
    return phase_of(job.start_time, job.end_time, job.error_reason)


def is_finalised(job: JobState) -> bool:
    return phase(job) in (Phase.FINISHED, Phase.ERRORED, Phase.CANCELLED)


def _not_holder(job: JobState) -> Refusal:
    return Refusal(403, "This node has not acquired the job" if job.node is not None
                   else "The job is not held by any node")


# -- worker actions (the caller is a node) ------------------------------------------


def acquire(job: JobState, node: int) -> Outcome:
    """Take a free job for `node`; a repeat by the holder is a no-op."""
    if not job.workable:
        return Refusal(403, "A meta-job cannot be acquired")
    if job.node == node:
        return Change()
    if job.node is not None:
        return Refusal(406, "The job is held by another node")
    if is_finalised(job):
        return Refusal(406, f"The job is {phase(job).value.lower()}")
    if job.error_reason is not None:
        return Refusal(406, "The job was cancelled")
    return Change(job={"node": node}, transition="acquire")


def start(job: JobState, node: int, node_current_job: int | None, now: str) -> Outcome:
    """Begin work; a job cancelled after acquire still starts and reads CANCELLED."""
    if job.node != node:
        return _not_holder(job)
    if node_current_job is not None:
        return Refusal(406, f"The node is already working on job {node_current_job}")
    if phase(job) is not Phase.CREATED:
        return Refusal(406, f"The job cannot start: it is {phase(job).value.lower()}")
    return Change(job={"start_time": now, "is_cancelled": job.error_reason is not None},
                  current_job="set", transition="start")


def progress(job: JobState, node: int, amount: float) -> Outcome:
    """Record progress on a STARTED job."""
    if job.node != node:
        return _not_holder(job)
    current = phase(job)
    if current is Phase.CREATED:
        return Refusal(406, "The job has not started", illegal=True)
    if current is not Phase.STARTED:
        return Refusal(406, f"The job is {current.value.lower()}")
    return Change(job={"progress": amount}, transition="progress")


def add_output(job: JobState, node: int | None, is_staff: bool) -> Refusal | None:
    """None when an output may be added; staff may add to any job (as the real server allows)."""
    if not is_staff and (node is None or job.node != node):
        return _not_holder(job)
    current = phase(job)
    if current is Phase.CREATED:
        return Refusal(417, "The job has not started")
    if current is Phase.FINISHED:
        return Refusal(406, "The job has finished")
    return None


def finish(job: JobState, node: int, node_current_job: int | None, job_pk: int,
           error: str | None, now: str) -> Outcome:
    """End the caller's work on a job: FINISHED, or ERRORED when `error` is not None.

    Finish is what clears the node's ``current_job``: a node whose job was
    aborted (taken away) or cancelled still calls it, and gets 200.
    """
    working_on_it = node_current_job == job_pk
    if not working_on_it and job.node != node:
        return _not_holder(job)
    clear = "clear" if working_on_it else None
    if working_on_it and (job.node != node or phase(job) is Phase.CANCELLED):
        return Change(current_job="clear")
    current = phase(job)
    if current is Phase.CREATED:
        return Refusal(406, "The job has not started", illegal=True)
    if current is not Phase.STARTED:
        return Refusal(406, f"The job is already {current.value.lower()}", illegal=True)
    if error is None:
        return Change(job={"end_time": now}, current_job=clear, transition="finish")
    return Change(job={"end_time": now, "error_reason": error}, current_job=clear,
                  transition="error")


def reset(job: JobState, node: int) -> Outcome:
    """An ERRORED job goes back to CREATED, still held by the caller."""
    if job.node != node:
        return _not_holder(job)
    if phase(job) is not Phase.ERRORED:
        return Refusal(406, f"Only an errored job can be reset; it is {phase(job).value.lower()}")
    return Change(job=_fresh(node), drop_outputs=True, transition="reset")


def release(job: JobState, node: int, node_current_job: int | None, job_pk: int) -> Outcome:
    """Give a CREATED or ERRORED job back to the pool."""
    if job.node != node:
        return _not_holder(job)
    current = phase(job)
    if current is Phase.STARTED:
        return Refusal(406, "A started job cannot be released", illegal=True)
    if current in (Phase.FINISHED, Phase.CANCELLED):
        return Refusal(406, f"The job is {current.value.lower()}")
    return Change(job={"node": None},
                  current_job="clear" if node_current_job == job_pk else None,
                  transition="release")


# -- admin actions -----------------------------------------------------------------


def abort(job: JobState) -> Outcome:
    """Back to CREATED and unheld. The holder's current_job stays, so its finish answers 200."""
    if phase(job) is Phase.FINISHED:
        return Refusal(406, "A finished job cannot be aborted")
    return Change(job=_fresh(None), drop_outputs=True, transition="abort")


def cancel(job: JobState) -> Outcome:
    """Cancel a top-level job; a finalised one is left alone."""
    if job.parent is not None:
        return Refusal(400, "Only a top-level job can be cancelled")
    if is_finalised(job) or job.error_reason is not None:
        return Change()
    started = phase(job) is Phase.STARTED
    return Change(job={"error_reason": CANCELLED_REASON, "is_cancelled": started},
                  transition="cancel")


def _fresh(node: int | None) -> dict[str, Any]:
    return {"node": node, "start_time": None, "end_time": None, "error_reason": None,
            "is_cancelled": False, "progress": 0.0}


# -- what the web socket replays on connect ---------------------------------------------

REPLAY = {Phase.STARTED: "progress", Phase.FINISHED: "finish", Phase.ERRORED: "error",
          Phase.CANCELLED: "cancel"}


def replay_transition(job: JobState) -> str | None:
    """The message a new web socket gets for the job's current phase (none for CREATED)."""
    return REPLAY.get(phase(job))
