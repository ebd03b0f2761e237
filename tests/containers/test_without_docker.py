"""Without Docker the container tests skip with one line, except under CI=true where they fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
A_DOCKER_TEST = f"{HERE / 'test_run.py'}::test_probe_reports_the_running_dockerd"


def _pytest_without_docker(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["DOCKER_HOST"] = f"unix://{tmp_path}/no-docker.sock"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider",
                           A_DOCKER_TEST], cwd=HERE.parent.parent, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_no_docker_skips_with_one_line_reason(tmp_path: Path) -> None:
    """A developer machine without Docker: the test is skipped, the reason says what to run."""
    result = _pytest_without_docker(tmp_path, ci=None)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "Docker is not usable" in result.stdout and "scripts/docker-setup.sh" in result.stdout


@pytest.mark.slow
def test_no_docker_under_ci_fails_instead_of_skipping(tmp_path: Path) -> None:
    """CI=true without Docker: the test errors out instead of passing as skipped."""
    result = _pytest_without_docker(tmp_path, ci="true")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "skipped" not in result.stdout
    assert "CI=true and Docker is not usable" in result.stdout
