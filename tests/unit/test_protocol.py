"""protocol.py: the one phase rule and JobView, parsed from both servers' shapes of a job."""

from __future__ import annotations

import pytest

from ufdl_node.protocol import JobView, Phase, display_phase, find_work_spec, phase, pk_of

T = "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(("start", "end", "reason", "expected"), [
    (None, None, None, Phase.CREATED),
    (None, None, "Cancelled", Phase.CREATED),
    (T, None, None, Phase.STARTED),
    (T, None, "Cancelled", Phase.CANCELLED),
    (T, T, None, Phase.FINISHED),
    (T, T, "boom", Phase.ERRORED),
])
def test_phase_follows_the_table_of_section_3(start, end, reason, expected):
    """The phase is derived from start_time, end_time and error_reason as UFDL-API.md section 3 says."""
    assert phase({"start_time": start, "end_time": end, "error_reason": reason}) is expected


def test_a_job_cancelled_before_it_started_reads_cancelled_to_a_person():
    """display_phase shows CREATED with reason Cancelled as CANCELLED; the protocol phase stays CREATED."""
    job = {"start_time": None, "end_time": None, "error_reason": "Cancelled"}
    assert display_phase(job) is Phase.CANCELLED and phase(job) is Phase.CREATED


def test_phase_compares_and_formats_as_its_name():
    """A Phase equals its text and formats as it, so logs and old string comparisons keep working."""
    assert Phase.STARTED == "STARTED" and f"{Phase.ERRORED}" == "ERRORED" and str(Phase.CREATED) == "CREATED"


def test_pk_of_reads_nested_and_flat_relations():
    """The real server nests relations ({"pk": 3, ...}); the embedded one sends the pk."""
    assert pk_of({"pk": 3, "ip": "x"}) == 3 and pk_of(3) == 3 and pk_of(None) is None


def test_job_view_parses_a_real_server_reply():
    """A reply with a nested node and template gives the holder, template and outputs."""
    view = JobView.parse({"pk": "7", "node": {"pk": 2}, "template": {"pk": 4, "name": "t", "version": 3},
                          "start_time": T, "end_time": None, "error_reason": None, "is_cancelled": False,
                          "outputs": [{"name": "log", "type": "text"}, "garbage"]})
    assert (view.pk, view.holder, view.template_pk) == (7, 2, 4)
    assert (view.template_name, view.template_version) == ("t", 3)
    assert view.phase is Phase.STARTED and view.held_by(2) and not view.held_by(3)
    assert view.outputs == frozenset({("log", "text")})


def test_job_view_knows_when_a_start_may_be_made():
    """Only a CREATED job without an error reason and not cancelled is startable."""
    base = {"pk": 1, "node": 5, "template": {"pk": 1}, "start_time": None, "end_time": None}
    assert JobView.parse({**base, "error_reason": None}).startable
    assert not JobView.parse({**base, "error_reason": "Cancelled"}).startable
    assert not JobView.parse({**base, "error_reason": None, "is_cancelled": True}).startable


def test_job_view_refuses_a_reply_without_a_pk():
    """A reply without a pk is not a job: KeyError, which callers treat as a malformed reply."""
    with pytest.raises(KeyError):
        JobView.parse({"template": {"pk": 1}})


def test_find_work_asks_for_free_workable_jobs_oldest_first():
    """The find-work filter: not started, no error, not held, workable; pk ascending."""
    spec = find_work_spec()
    fields = {(e["field"], e.get("invert", False)) for e in spec["expressions"]}
    assert fields == {("start_time", False), ("error_reason", False), ("node", False),
                      ("template.workabletemplate", True)}
    assert spec["order_by"] == [{"field": "pk", "ascending": True}]
