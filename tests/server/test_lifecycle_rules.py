"""The lifecycle rules as pure functions: every phase against every action, legal or not."""

from __future__ import annotations

import pytest

from ufdl_node.server import lifecycle as lc
from ufdl_node.server.lifecycle import Change, JobState, Phase, Refusal

T0, T1, NOW = "2024-01-01T00:00:00.000000+00:00", "2024-01-01T01:00:00.000000+00:00", "NOW"
ME, OTHER, PK = 1, 2, 10

# One job per phase, held by ME.
STATES = {
    Phase.CREATED: JobState(node=ME),
    Phase.STARTED: JobState(node=ME, start_time=T0),
    Phase.FINISHED: JobState(node=ME, start_time=T0, end_time=T1),
    Phase.ERRORED: JobState(node=ME, start_time=T0, end_time=T1, error_reason="boom"),
    Phase.CANCELLED: JobState(node=ME, start_time=T0, error_reason="Cancelled", is_cancelled=True),
}
# What ME's current_job is in each phase when it got there the normal way.
CURRENT = {Phase.CREATED: None, Phase.STARTED: PK, Phase.FINISHED: None, Phase.ERRORED: None,
           Phase.CANCELLED: PK}


def status(outcome: Change | Refusal) -> int:
    return outcome.status if isinstance(outcome, Refusal) else 200


def illegal(outcome: Change | Refusal) -> bool:
    return isinstance(outcome, Refusal) and outcome.illegal


@pytest.mark.parametrize("phase", list(Phase))
def test_phase_is_derived_from_the_fields(phase: Phase) -> None:
    """phase() reads each phase of section 3's table from start_time, end_time and error_reason."""
    assert lc.phase(STATES[phase]) is phase


def test_cancelled_before_start_is_still_created() -> None:
    """A job cancelled before it started reads CREATED (start_time null)."""
    assert lc.phase(JobState(error_reason="Cancelled")) is Phase.CREATED


# -- each action against each phase, held by the caller --------------------------------------------

EXPECTED = {
    # action: {phase: (status, illegal)}
    "acquire": {Phase.CREATED: (200, False), Phase.STARTED: (200, False), Phase.FINISHED: (200, False),
                Phase.ERRORED: (200, False), Phase.CANCELLED: (200, False)},
    "start": {Phase.CREATED: (200, False), Phase.STARTED: (406, False), Phase.FINISHED: (406, False),
              Phase.ERRORED: (406, False), Phase.CANCELLED: (406, False)},
    "progress": {Phase.CREATED: (406, True), Phase.STARTED: (200, False), Phase.FINISHED: (406, False),
                 Phase.ERRORED: (406, False), Phase.CANCELLED: (406, False)},
    "finish": {Phase.CREATED: (406, True), Phase.STARTED: (200, False), Phase.FINISHED: (406, True),
               Phase.ERRORED: (406, True), Phase.CANCELLED: (200, False)},
    "reset": {Phase.CREATED: (406, False), Phase.STARTED: (406, False), Phase.FINISHED: (406, False),
              Phase.ERRORED: (200, False), Phase.CANCELLED: (406, False)},
    "release": {Phase.CREATED: (200, False), Phase.STARTED: (406, True), Phase.FINISHED: (406, False),
                Phase.ERRORED: (200, False), Phase.CANCELLED: (406, False)},
    "abort": {Phase.CREATED: (200, False), Phase.STARTED: (200, False), Phase.FINISHED: (406, False),
              Phase.ERRORED: (200, False), Phase.CANCELLED: (200, False)},
    "cancel": {p: (200, False) for p in Phase},
}


def act(action: str, job: JobState, node: int = ME, current: int | None = None) -> Change | Refusal:
    if action == "acquire":
        return lc.acquire(job, node)
    if action == "start":
        return lc.start(job, node, current, NOW)
    if action == "progress":
        return lc.progress(job, node, 0.5)
    if action == "finish":
        return lc.finish(job, node, current, PK, None, NOW)
    if action == "reset":
        return lc.reset(job, node)
    if action == "release":
        return lc.release(job, node, current, PK)
    if action == "abort":
        return lc.abort(job)
    return lc.cancel(job)


@pytest.mark.parametrize("action,phase", [(a, p) for a in EXPECTED for p in Phase])
def test_every_action_in_every_phase(action: str, phase: Phase) -> None:
    """Each action answers section 3's status in each phase, and flags the real server's 500s."""
    outcome = act(action, STATES[phase], current=CURRENT[phase])
    assert (status(outcome), illegal(outcome)) == EXPECTED[action][phase], outcome


@pytest.mark.parametrize("action", ["start", "progress", "finish", "reset", "release"])
@pytest.mark.parametrize("phase", list(Phase))
def test_another_node_is_refused_with_403(action: str, phase: Phase) -> None:
    """A node that does not hold the job (and is not working on it) gets 403 for every worker action."""
    assert status(act(action, STATES[phase], node=OTHER, current=None)) == 403


@pytest.mark.parametrize("action", ["start", "progress", "finish", "reset", "release"])
def test_actions_on_an_unheld_job_are_403(action: str) -> None:
    """Worker actions on a job nobody holds are 403."""
    assert status(act(action, JobState(), current=None)) == 403


def test_acquire_sets_the_node() -> None:
    """Acquire of a free job sets node and announces the transition."""
    assert lc.acquire(JobState(), ME) == Change(job={"node": ME}, transition="acquire")


def test_acquire_by_the_holder_is_a_no_op() -> None:
    """A repeat acquire by the holder changes nothing."""
    assert lc.acquire(STATES[Phase.CREATED], ME) == Change()


def test_acquire_of_a_job_held_by_another_node_is_406() -> None:
    """Acquire of another node's job is 406."""
    assert status(lc.acquire(STATES[Phase.CREATED], OTHER)) == 406


@pytest.mark.parametrize("phase", [Phase.FINISHED, Phase.ERRORED, Phase.CANCELLED])
def test_acquire_of_an_unheld_finalised_job_is_406(phase: Phase) -> None:
    """A released finalised job cannot be acquired: 406."""
    job = JobState(**{**STATES[phase].__dict__, "node": None})
    assert status(lc.acquire(job, ME)) == 406


def test_acquire_of_a_job_cancelled_before_start_is_406() -> None:
    """A job cancelled before anyone held it is not acquirable."""
    assert status(lc.acquire(JobState(error_reason="Cancelled"), ME)) == 406


def test_acquire_of_a_meta_job_is_403() -> None:
    """A job from a non-workable template cannot be acquired."""
    assert status(lc.acquire(JobState(workable=False), ME)) == 403


def test_start_sets_start_time_and_current_job() -> None:
    """Start sets start_time and the node's current_job."""
    assert lc.start(STATES[Phase.CREATED], ME, None, NOW) == Change(
        job={"start_time": NOW, "is_cancelled": False}, current_job="set", transition="start")


def test_start_of_a_job_cancelled_after_acquire_reads_cancelled() -> None:
    """A held job cancelled before start still starts, and is then CANCELLED with is_cancelled true."""
    job = JobState(node=ME, error_reason="Cancelled")
    outcome = lc.start(job, ME, None, NOW)
    assert isinstance(outcome, Change) and outcome.job["is_cancelled"] is True
    after = JobState(node=ME, start_time=NOW, error_reason="Cancelled", is_cancelled=True)
    assert lc.phase(after) is Phase.CANCELLED


def test_start_while_working_on_another_job_is_406() -> None:
    """A node whose current_job is set cannot start another job."""
    assert status(lc.start(STATES[Phase.CREATED], ME, 99, NOW)) == 406


def test_finish_with_error_errors_the_job() -> None:
    """Finish with an error (even "") makes the job ERRORED and clears current_job."""
    outcome = lc.finish(STATES[Phase.STARTED], ME, PK, PK, "", NOW)
    assert outcome == Change(job={"end_time": NOW, "error_reason": ""}, current_job="clear",
                             transition="error")


def test_finish_without_error_finishes_the_job() -> None:
    """Finish without an error makes the job FINISHED."""
    outcome = lc.finish(STATES[Phase.STARTED], ME, PK, PK, None, NOW)
    assert outcome == Change(job={"end_time": NOW}, current_job="clear", transition="finish")


def test_finish_of_an_aborted_job_only_clears_current_job() -> None:
    """After abort (job unheld, CREATED) the node's finish answers 200 and only frees the node."""
    assert lc.finish(JobState(), ME, PK, PK, "aborted", NOW) == Change(current_job="clear")


def test_finish_of_a_cancelled_job_only_clears_current_job() -> None:
    """Finish of a CANCELLED job frees the node and leaves the job CANCELLED."""
    assert lc.finish(STATES[Phase.CANCELLED], ME, PK, PK, None, NOW) == Change(current_job="clear")


def test_reset_keeps_the_job_held_and_drops_outputs() -> None:
    """Reset puts an ERRORED job back to CREATED, still held, and drops its outputs."""
    outcome = lc.reset(STATES[Phase.ERRORED], ME)
    assert isinstance(outcome, Change) and outcome.drop_outputs and outcome.job["node"] == ME
    assert lc.phase(JobState(**{k: v for k, v in outcome.job.items() if k != "progress"})) is Phase.CREATED


def test_release_clears_node() -> None:
    """Release of a held CREATED job sets node to null."""
    assert lc.release(STATES[Phase.CREATED], ME, None, PK) == Change(job={"node": None},
                                                                    transition="release")


def test_abort_unholds_and_keeps_current_job() -> None:
    """Abort clears node and the lifecycle fields, drops outputs, and leaves current_job alone."""
    outcome = lc.abort(STATES[Phase.STARTED])
    assert isinstance(outcome, Change) and outcome.current_job is None and outcome.drop_outputs
    assert outcome.job["node"] is None and outcome.job["start_time"] is None


def test_cancel_before_start() -> None:
    """Cancel of an unstarted job sets error_reason "Cancelled" with is_cancelled false."""
    assert lc.cancel(JobState()) == Change(job={"error_reason": "Cancelled", "is_cancelled": False},
                                           transition="cancel")


def test_cancel_of_a_started_job() -> None:
    """Cancel of a STARTED job sets is_cancelled true."""
    outcome = lc.cancel(STATES[Phase.STARTED])
    assert isinstance(outcome, Change) and outcome.job == {"error_reason": "Cancelled", "is_cancelled": True}


@pytest.mark.parametrize("phase", [Phase.FINISHED, Phase.ERRORED, Phase.CANCELLED])
def test_cancel_of_a_finalised_job_is_a_no_op(phase: Phase) -> None:
    """Cancel of a finalised job changes nothing."""
    assert lc.cancel(STATES[phase]) == Change()


def test_cancel_of_a_child_job_is_400() -> None:
    """Only a top-level job can be cancelled."""
    assert status(lc.cancel(JobState(parent=3))) == 400


@pytest.mark.parametrize("phase,expected", [(Phase.CREATED, 417), (Phase.STARTED, None),
                                            (Phase.FINISHED, 406), (Phase.ERRORED, None),
                                            (Phase.CANCELLED, None)])
def test_add_output_by_phase(phase: Phase, expected: int | None) -> None:
    """Outputs: 417 before start, 406 after finish, accepted while STARTED, ERRORED or CANCELLED."""
    refusal = lc.add_output(STATES[phase], ME, False)
    assert (refusal.status if refusal else None) == expected


def test_add_output_by_another_node_is_403_but_staff_passes() -> None:
    """Another node may not add outputs; staff may, as on the real server."""
    refusal = lc.add_output(STATES[Phase.STARTED], OTHER, False)
    assert refusal is not None and refusal.status == 403
    assert lc.add_output(STATES[Phase.STARTED], None, True) is None


@pytest.mark.parametrize("phase,expected", [(Phase.CREATED, None), (Phase.STARTED, "progress"),
                                            (Phase.FINISHED, "finish"), (Phase.ERRORED, "error"),
                                            (Phase.CANCELLED, "cancel")])
def test_replay_on_connect(phase: Phase, expected: str | None) -> None:
    """The web socket replays progress, finish, error or cancel, and nothing for CREATED."""
    assert lc.replay_transition(STATES[phase]) == expected
