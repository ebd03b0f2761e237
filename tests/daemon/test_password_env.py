"""A password in the environment of a root daemon: its jobs could read it from /proc; say so."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from ufdl_node.client import UfdlClient
from ufdl_node.registry import Registry

from .conftest import (
    ADMIN_PW,
    PYTHON,
    WORKER_PW,
    DaemonProcess,
    daemon_process_env,
    import_template,
    write_config,
)
from .test_journal import SOAK_HANDLERS, SoakJobs

pytestmark = pytest.mark.slow
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the warning is about a daemon running as root")


async def _check_config(config: Path, **env: str) -> str:
    # not subprocess.run: the embedded server answers from this test's event loop
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "ufdl_node", "check-config", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=daemon_process_env(**env))
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode()


@as_root
async def test_check_config_warns_of_a_password_in_a_root_environment(server, tmp_path):
    """check-config as root with UFDL_NODE_PASSWORD set: one warning naming the safer ways."""
    config = write_config(tmp_path / "node.toml", server.url, tmp_path)
    text = config.read_text().replace(f'password = "{WORKER_PW}"\n', "")
    config.write_text(text)
    out = await _check_config(config, UFDL_NODE_PASSWORD=WORKER_PW)
    warnings = [line for line in out.splitlines()
                if line.startswith("ufdl-node: check-config: warning: UFDL_NODE_PASSWORD")]
    assert len(warnings) == 1, out
    assert "password_file" in warnings[0] and "LoadCredential" in warnings[0]
    assert WORKER_PW not in out


async def test_check_config_with_a_password_file_does_not_warn(server, tmp_path):
    """check-config with password_file: no warning about the environment."""
    secret = tmp_path / "password"
    secret.write_text(WORKER_PW)
    secret.chmod(0o600)
    config = write_config(tmp_path / "node.toml", server.url, tmp_path, password_file=str(secret))
    config.write_text(config.read_text().replace(f'password = "{WORKER_PW}"\n', ""))
    out = await _check_config(config)
    assert "UFDL_NODE_PASSWORD" not in out and "ok:" in out, out


@as_root
async def test_daemon_warns_and_its_jobs_do_not_inherit_the_password(server, tmp_path, wait_for):
    """A root daemon given UFDL_NODE_PASSWORD warns at start; a job's subprocess does not see it."""
    config = write_config(tmp_path / "node.toml", server.url, tmp_path, handler_dirs=[str(SOAK_HANDLERS)])
    config.write_text(config.read_text().replace(f'password = "{WORKER_PW}"\n', ""))
    (tmp_path / "records").mkdir()
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        registry = Registry.load([SOAK_HANDLERS], entry_points=False)
        template = await import_template(admin, registry, "soak_job")
        jobs = SoakJobs(admin, template, tmp_path / "records")
        job = await jobs.create("env")
        daemon = DaemonProcess(config, tmp_path / "daemon.log", {"UFDL_NODE_PASSWORD": WORKER_PW})
        try:
            await jobs.wait(job["pk"], "FINISHED", wait_for)
            seen = await admin.download_output(job["pk"], "env", "text", tmp_path / "env.txt")
            assert seen.read_text() == "absent"
            warnings = [line for line in daemon.log().splitlines()
                        if "UFDL_NODE_PASSWORD is in the environment" in line]
            assert len(warnings) == 1, daemon.log()
        finally:
            daemon.kill()
