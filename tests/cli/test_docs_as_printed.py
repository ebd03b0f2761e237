"""The operator's commands of the README (the systemd short version) and of docs/operations.md,
run by bash as printed, in order, under a scratch root: `init` writes the settings and the unit,
the operator's edit and password file follow, and `check-config` passes against a live server.
What needs systemd as PID 1, a new system user or the network is left out (tests/cli/readme.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .conftest import REPO, WORKER_PW
from .readme import as_operator, block, run_as_printed, sh_blocks

pytestmark = pytest.mark.slow


def _check_the_install(root: Path, out: str, url: str) -> None:
    config = root / "etc" / "ufdl-node" / "config.toml"
    assert f'server_url = "{url}"' in config.read_text()
    unit = (root / "etc" / "systemd" / "system" / "ufdl-node.service").read_text()
    assert "ExecStart=" in unit and "LoadCredential=password:/etc/ufdl-node/password" in unit
    password = root / "etc" / "ufdl-node" / "password"
    assert password.read_text().strip() == WORKER_PW and password.stat().st_mode & 0o777 == 0o600
    assert f"ok: {url} answers and accepts user 'worker'" in out, out


@pytest.mark.timeout(180)
async def test_the_readme_systemd_short_version_runs_as_printed(server, tmp_path):
    root = tmp_path / "root"
    lines = as_operator(block("systemd-short"), root, server_url=server.url, password=WORKER_PW)
    out, err = await asyncio.to_thread(run_as_printed, lines, tmp_path)
    _check_the_install(root, out, server.url)
    assert "left out: systemctl enable --now ufdl-node" in err, err


@pytest.mark.timeout(180)
async def test_the_operations_guide_runs_as_printed(server, tmp_path):
    root = tmp_path / "root"
    lines = as_operator(sh_blocks(REPO / "docs" / "operations.md"), root, server_url=server.url,
                        password=WORKER_PW)
    out, _ = await asyncio.to_thread(run_as_printed, lines, tmp_path)
    _check_the_install(root, out, server.url)
    assert "CPU" in out or "GPU" in out, out  # hwinfo ran
    assert (root / "etc" / "modules-load.d" / "nvidia-uvm.conf").read_text() == "nvidia-uvm\n"
