"""The node's state file: durable writes, and a bad file is one warning and a fresh state."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ufdl_node.daemon.state import NodeState

from .conftest import Jobs, phase


def _corrupt_warnings(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["log_level"] == "warning" and "state file is corrupt" in e["event"]]


@pytest.mark.parametrize("content", ["", '{"attempts": {"7": 1}, "handb', "[1, 2]",
                                     '{"attempts": {"7": "many"}, "handbacks": []}'],
                         ids=["empty", "truncated", "not-an-object", "wrong-type"])
def test_bad_state_file_is_one_warning_and_a_fresh_state(tmp_path: Path, content: str):
    """An empty, truncated or ill-typed state file: one warning, a fresh state, the file kept aside."""
    path = tmp_path / "state.json"
    path.write_text(content)
    state = NodeState(path)
    with capture_logs() as logs:
        assert state.pending_handbacks() == []
        assert state.pending_handbacks() == []
        assert state.bump_attempts(7) == 1
    assert len(_corrupt_warnings(logs)) == 1, logs
    assert (tmp_path / "state.json.corrupt").read_text() == content
    assert json.loads(path.read_text()) == {"attempts": {"7": 1}, "handbacks": []}


def test_write_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path: Path, monkeypatch):
    """A write fsyncs the temporary file, renames it, then fsyncs the directory (STYLE.md item 16)."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    NodeState(tmp_path / "state.json").begin_handback(3)
    assert events == ["fsync file", "replace", "fsync dir"]
    assert json.loads((tmp_path / "state.json").read_text())["handbacks"] == [3]


async def test_daemon_starts_on_an_empty_state_file_and_runs_work(server, jobs: Jobs, start_daemon, tmp_path):
    """An empty state file (a power loss before the fix) does not stop the daemon: the job finishes."""
    state_dir = tmp_path / "node-a" / "state"
    state_dir.mkdir(parents=True)
    (state_dir / "state.json").write_text("")
    job = await jobs.create()
    start_daemon(server)
    await jobs.wait(job, lambda j: phase(j) == "FINISHED")
    assert (state_dir / "state.json.corrupt").exists()
