"""The start log: each job's starts counted by a line appended, across restarts, whatever a
crash or a power loss leaves of its last line (see ufdl_node/daemon/startlog.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ufdl_node.daemon import startlog
from ufdl_node.daemon.journal import Journal
from ufdl_node.daemon.state import START_LOG, NodeState


def _warnings(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["log_level"] == "warning" and "start log" in e["event"]]


def test_starts_survive_a_restart_and_a_reported_end_forgets_them(tmp_path: Path):
    """Counted in one process, read back by the next; the state file is not written per job."""
    state = NodeState(tmp_path / "state.json")
    assert state.count_start(5) == 1
    assert state.count_start(5) == 2
    assert state.count_start(6) == 1
    state.forget_starts(6)
    assert not (tmp_path / "state.json").exists(), "a job's start must not rewrite the state file"
    assert (tmp_path / START_LOG).read_text() == "+5\n+5\n+6\n-6\n"  # appended, one line each
    again = NodeState(tmp_path / "state.json")
    assert (again.starts_of(5), again.starts_of(6)) == (2, 0)
    assert (tmp_path / START_LOG).read_text() == "+5\n+5\n"  # compacted when read back
    assert again.count_start(5) == 3


@pytest.mark.parametrize("tail", ["+7", "+", "\0\0\0\0", "+7\0\0"],
                         ids=["torn", "sign-only", "zeros", "zeros-after"])
def test_a_torn_last_line_is_left_out_with_one_warning(tmp_path: Path, tail: str):
    """A power loss mid-append: the whole lines count, the torn one does not, one warning;
    the log is rewritten without it, so later lines are whole lines again."""
    (tmp_path / START_LOG).write_bytes(f"+5\n+9\n+5\n-9\n{tail}".encode())
    state = NodeState(tmp_path / "state.json")
    with capture_logs() as logs:
        assert (state.starts_of(5), state.starts_of(7), state.starts_of(9)) == (2, 0, 0)
    assert len(_warnings(logs)) == 1, logs
    state.count_start(7)
    assert NodeState(tmp_path / "state.json").starts_of(7) == 1
    assert (tmp_path / START_LOG).read_text() == "+5\n+5\n+7\n"


def test_a_line_that_is_not_a_log_line_is_left_out(tmp_path: Path):
    """Zeros in the middle (blocks allocated, never written) or a hand edit: skipped, warned."""
    (tmp_path / START_LOG).write_bytes(b"+5\n\0\0\0\n+x\n+5\n")
    state = NodeState(tmp_path / "state.json")
    with capture_logs() as logs:
        assert state.starts_of(5) == 2
    assert _warnings(logs)[0]["lines"] == 2


def test_an_older_versions_counts_in_the_state_file_are_taken_over(tmp_path: Path):
    """state.json's ``starts`` (before the start log): counted on, then gone from state.json."""
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"attempts": {"3": 1}, "handbacks": [4], "starts": {"9": 2}}))
    state = NodeState(path)
    assert state.count_start(9) == 3
    assert json.loads(path.read_text()) == {"attempts": {"3": 1}, "handbacks": [4]}
    assert NodeState(path).starts_of(9) == 3


def test_the_log_is_compacted_as_it_grows_and_keeps_the_newest_jobs(tmp_path: Path, monkeypatch):
    """Rewritten whole every COMPACT_LINES lines; at most MAX_STARTS jobs, the oldest dropped."""
    monkeypatch.setattr(startlog, "COMPACT_LINES", 10)
    monkeypatch.setattr(startlog, "MAX_STARTS", 3)
    state = NodeState(tmp_path / "state.json")
    for pk in range(1, 41):  # 40 jobs: started, and all but every tenth reported
        state.count_start(pk)
        if pk % 10:
            state.forget_starts(pk)
        assert len((tmp_path / START_LOG).read_text().splitlines()) <= 10 + 3
    assert [state.starts_of(pk) for pk in (10, 20, 30, 40)] == [0, 1, 1, 1]  # the oldest went
    again = NodeState(tmp_path / "state.json")
    assert [again.starts_of(pk) for pk in (10, 20, 30, 40)] == [0, 1, 1, 1]


async def test_fsyncs_of_the_log_run_in_a_thread_one_at_a_time(tmp_path: Path, monkeypatch):
    """Jobs started one after another while an fsync runs share the next one (here: twenty
    jobs in one step of the loop, two fsyncs); the last start is covered by the last fsync."""
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    state = NodeState(tmp_path / "state.json")
    journal = Journal(tmp_path / "journal", starts=state)
    for pk in range(1, 21):
        journal.begin(pk, 1, "t", tmp_path / "work" / f"job-{pk}")
        journal.close(pk)
    await journal.settle()
    size = (tmp_path / START_LOG).stat().st_size
    assert 1 <= len(synced) <= 2 and synced[-1] == size, (synced, size)


def test_a_log_that_cannot_be_rewritten_is_appended_to(tmp_path: Path, monkeypatch):
    """A full disk at the first read (the rewrite fails): a warning, and the starts counted
    by appending to the log as it is, after its torn last line, which stays left out."""
    (tmp_path / START_LOG).write_bytes(b"+5\n+7")
    real = os.replace

    def full(src, dst) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    state = NodeState(tmp_path / "state.json")
    with capture_logs() as logs:
        assert state.count_start(5) == 2
    assert any("cannot rewrite the start log" in e["event"] for e in _warnings(logs)), logs
    monkeypatch.setattr(os, "replace", real)
    assert (tmp_path / START_LOG).read_text() == "+5\n+7~\n+5\n"
    again = NodeState(tmp_path / "state.json")
    assert (again.starts_of(5), again.starts_of(7)) == (2, 0)
