"""Fixtures for command-line tests: an embedded server on loopback and a way to run `ufdl-node`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import ServerSettings

ADMIN_PW = "cli-admin-pw-1"
WORKER_PW = "cli-worker-pw-2"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    settings = ServerSettings(data_dir=tmp_path / "server", port=0, admin=f"admin:{ADMIN_PW}",
                              worker=f"worker:{WORKER_PW}", log_level="warning")
    async with EmbeddedServer(settings) as srv:
        yield srv


def ufdl_node(*args: str, cwd: Path | None = None, timeout_s: float = 120,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `ufdl-node ARGS` as a real process; its own environment, no UFDL_NODE_ leaks."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "ufdl_node", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout_s, env=clean, stdin=subprocess.DEVNULL)
