"""`ufdl-node hwinfo` and `check-config` say whether Docker is reachable and has the NVIDIA runtime."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.daemon.conftest import PYTHON, daemon_process_env

from .conftest import unavailable


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "ufdl_node", *args], capture_output=True, text=True, timeout=60,
                          env=daemon_process_env(**env))


def test_hwinfo_names_the_docker_version_and_the_nvidia_runtime(docker_problem: str | None) -> None:
    """With dockerd reachable, hwinfo prints its version and whether the NVIDIA runtime is there."""
    if docker_problem:
        unavailable(docker_problem)
    result = _cli("hwinfo")

    assert result.returncode == 0, result.stderr
    docker_line = result.stdout.splitlines()[-1]
    assert docker_line.startswith("Docker ") and "NVIDIA runtime: " in docker_line


def test_hwinfo_json_has_the_docker_facts(docker_problem: str | None) -> None:
    """hwinfo --json carries a docker object with reachable and nvidia_runtime."""
    if docker_problem:
        unavailable(docker_problem)
    facts = json.loads(_cli("hwinfo", "--json").stdout)["docker"]

    assert facts["reachable"] is True and isinstance(facts["nvidia_runtime"], bool)


def test_hwinfo_says_why_docker_is_not_reachable(tmp_path: Path) -> None:
    """No socket at DOCKER_HOST: one line naming the address, and hwinfo still succeeds."""
    sock = tmp_path / "none.sock"
    result = _cli("hwinfo", DOCKER_HOST=f"unix://{sock}")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"Docker not reachable at unix://{sock}: ")


def test_check_config_fails_when_docker_templates_are_set_but_docker_is_unreachable(tmp_path: Path) -> None:
    """Container templates configured and no Docker: check-config names the problem and exits non-zero."""
    templates = tmp_path / "docker.d"
    templates.mkdir()
    config = tmp_path / "node.toml"
    config.write_text(f'server_url = "http://127.0.0.1:9"\npassword = "pw-123456"\n'
                      f'docker_url = "unix://{tmp_path}/none.sock"\ndocker_template_dirs = ["{templates}"]\n')
    config.chmod(0o600)

    result = _cli("check-config", "--config", str(config))

    assert result.returncode != 0
    assert f"docker: Docker not reachable at unix://{tmp_path}/none.sock" in result.stdout
    assert "ufdl-node: check-config: docker templates are configured but Docker not reachable" \
        in result.stderr
