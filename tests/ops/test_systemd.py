"""systemd/ufdl-node.service: systemd accepts it, and its sandbox rates at most EXPOSURE_MAX."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ufdl-node.service"
# `systemd-analyze security` rated the unit 1.6 with systemd 252 (Debian 12); see
# docs/operations.md. Raise this only with a reason written in the unit.
EXPOSURE_MAX = 2.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                reason="systemd-analyze is not installed (Debian package: systemd)")


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def _unit_text() -> str:
    return UNIT.read_text(encoding="utf-8")


def _directives() -> list[tuple[str, str]]:
    return [(k.strip(), v.strip()) for k, _, v in
            (line.partition("=") for line in _unit_text().splitlines())
            if not k.startswith(("#", "[")) and k.strip()]


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing: no unknown key, no bad value."""
    # verify also checks that ExecStart= exists; /opt/ufdl-node is not installed here,
    # so a copy of the unit points at this Python instead (same name: ufdl-node.service).
    copy = tmp_path / "ufdl-node.service"
    copy.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", _unit_text(),
                           flags=re.MULTILINE), encoding="utf-8")
    result = _analyze("verify", "--man=no", str(copy))
    problems = [line for line in (result.stdout + result.stderr).splitlines() if str(copy) in line]
    assert (result.returncode, problems) == (0, [])


def test_unit_exposure_is_at_most_the_recorded_level() -> None:
    """`systemd-analyze security --offline=true` rates the sandbox at or below EXPOSURE_MAX."""
    result = _analyze("security", "--offline=true", "--no-pager", str(UNIT))
    m = re.search(r"Overall exposure level for ufdl-node\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert m, result.stdout[-2000:] + result.stderr
    assert float(m.group(1)) <= EXPOSURE_MAX


def test_exposure_is_recorded_in_the_operations_doc() -> None:
    """docs/operations.md states the score this unit gets."""
    result = _analyze("security", "--offline=true", "--no-pager", str(UNIT))
    m = re.search(r"Overall exposure level for ufdl-node\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert m
    doc = (UNIT.parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")
    assert f"exposure level {m.group(1)}" in doc


def test_unit_stop_timeout_outlasts_the_grace_period() -> None:
    """TimeoutStopSec leaves room for grace_period_s + cancel_grace_s and the hand-back."""
    from ufdl_node.settings import NodeSettings

    fields = NodeSettings.model_fields
    needed = float(fields["grace_period_s"].default) + float(fields["cancel_grace_s"].default) + 60
    assert float(dict(_directives())["TimeoutStopSec"]) >= needed


def test_unit_lets_the_daemon_hand_back_jobs_and_reach_gpus() -> None:
    """The settings the daemon relies on: notify, mixed kill, no PrivateDevices, NVIDIA devices allowed."""
    directives = _directives()
    settings = dict(directives)
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["KillMode"] == "mixed" and settings["KillSignal"] == "SIGTERM"
    assert "PrivateDevices" not in settings and settings["DevicePolicy"] == "closed"
    allowed = {v.split()[0] for k, v in directives if k == "DeviceAllow"}
    assert {"char-nvidia-frontend", "char-nvidia-uvm", "char-nvidia-caps"} <= allowed
