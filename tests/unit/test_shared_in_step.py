"""The repository's copies of ../shared (tests/conformance, docs/) stay in step with it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
SCRIPT = REPO / "scripts" / "sync_shared.py"


def sync_shared(*args: str, shared: Path, repo: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run scripts/sync_shared.py (what `make check-shared` and `make sync-shared` run)."""
    return subprocess.run([sys.executable, str(SCRIPT), "--shared", str(shared), "--repo", str(repo),
                           *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def shared_and_clone(tmp_path: Path) -> tuple[Path, Path]:
    """A small shared folder and a repository whose copies match it."""
    shared, repo = tmp_path / "shared", tmp_path / "repo"
    (shared / "conformance").mkdir(parents=True)
    (shared / "seeds").mkdir()
    (shared / "conformance" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (shared / "conformance" / "run.sh").chmod(0o555)
    (shared / "conformance" / "test_a.py").write_text("def test_a():\n    pass\n")
    (shared / "UFDL-API.md").write_text("see `../shared/seeds/jobs.md` and `conformance/template.json`\n")
    for name in ("DESIGN.md", "STYLE.md", "seeds/jobs.md"):
        (shared / name).write_text(f"# {name}\n")
    done = sync_shared(shared=shared, repo=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    return shared, repo


def test_copies_match_shared() -> None:
    """Every copy in tests/conformance and docs/ matches ../shared (when the checkout has one beside it)."""
    if not SHARED.is_dir():
        pytest.skip(f"no {SHARED} beside this checkout: nothing to compare the copies with")
    done = sync_shared("--check", shared=SHARED)
    assert done.returncode == 0, f"copies out of step with {SHARED}:\n{done.stdout}{done.stderr}"


def test_a_changed_copy_is_named_with_the_way_to_sync(shared_and_clone: tuple[Path, Path]) -> None:
    """A copy that differs from its shared file fails the check, naming it and `make sync-shared`."""
    shared, repo = shared_and_clone
    (repo / "tests" / "conformance" / "test_a.py").write_text("def test_a():\n    assert False\n")
    done = sync_shared("--check", shared=shared, repo=repo)
    assert done.returncode == 1
    assert "tests/conformance/test_a.py: differs" in done.stdout
    assert "make sync-shared" in done.stdout
    assert "docs/" not in done.stdout


def test_a_new_shared_file_without_a_copy_is_named(shared_and_clone: tuple[Path, Path]) -> None:
    """A file added to the shared suite but not copied fails the check as missing."""
    shared, repo = shared_and_clone
    (shared / "conformance" / "test_new.py").write_text("def test_new():\n    pass\n")
    done = sync_shared("--check", shared=shared, repo=repo)
    assert done.returncode == 1
    assert "tests/conformance/test_new.py: missing" in done.stdout


def test_a_file_only_the_repository_has_is_allowed(shared_and_clone: tuple[Path, Path]) -> None:
    """The repository's suite may hold tests the shared one lacks; the check passes."""
    shared, repo = shared_and_clone
    (repo / "tests" / "conformance" / "test_ours.py").write_text("def test_ours():\n    pass\n")
    done = sync_shared("--check", shared=shared, repo=repo)
    assert done.returncode == 0, done.stdout


def test_sync_brings_a_changed_copy_back_in_step(shared_and_clone: tuple[Path, Path]) -> None:
    """`make sync-shared` rewrites a differing copy from the shared file; the check then passes."""
    shared, repo = shared_and_clone
    (shared / "DESIGN.md").write_text("# DESIGN.md, revised\n")
    assert sync_shared("--check", shared=shared, repo=repo).returncode == 1
    done = sync_shared(shared=shared, repo=repo)
    assert "updated docs/DESIGN.md" in done.stdout
    assert (repo / "docs" / "DESIGN.md").read_text() == "# DESIGN.md, revised\n"
    assert sync_shared("--check", shared=shared, repo=repo).returncode == 0


def test_copied_docs_link_inside_the_repository(shared_and_clone: tuple[Path, Path]) -> None:
    """docs/UFDL-API.md gets its ../shared paths rewritten to files the repository has."""
    _shared, repo = shared_and_clone
    text = (repo / "docs" / "UFDL-API.md").read_text()
    assert "../shared" not in text
    assert "(seeds/jobs.md)" in text and "(../tests/conformance/template.json)" in text


def test_copied_run_sh_stays_executable(shared_and_clone: tuple[Path, Path]) -> None:
    """The conformance suite's run.sh is executable in the copy, and the copy is writable."""
    _shared, repo = shared_and_clone
    mode = (repo / "tests" / "conformance" / "run.sh").stat().st_mode
    assert mode & 0o100 and mode & 0o200


def test_stale_rewrite_is_reported(shared_and_clone: tuple[Path, Path]) -> None:
    """When the shared text no longer holds a path the copy rewrites, the check says to update REWRITES."""
    shared, repo = shared_and_clone
    (shared / "UFDL-API.md").write_text("the link moved to `../shared/elsewhere.md`\n")
    done = sync_shared("--check", shared=shared, repo=repo)
    assert done.returncode == 1
    assert "docs/UFDL-API.md" in done.stdout and "REWRITES" in done.stdout


def test_no_shared_folder_is_not_an_error_for_the_check(tmp_path: Path) -> None:
    """Without a shared folder (a plain clone) the check passes and says there is nothing to compare."""
    done = sync_shared("--check", shared=tmp_path / "absent", repo=tmp_path)
    assert done.returncode == 0
    assert "nothing to compare" in done.stdout


def test_repository_files_point_at_no_shared_folder() -> None:
    """No tracked file outside the copying machinery refers to ../shared: a clone has none."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: cannot list the tracked files")
    listed = subprocess.run(["git", "-C", str(REPO), "grep", "--untracked", "-l", "--", "../shared"],
                            capture_output=True, text=True, timeout=60)
    allowed = {"scripts/sync_shared.py", "tests/unit/test_shared_in_step.py", "Makefile", "README.md"}
    assert set(listed.stdout.split()) <= allowed, listed.stdout
