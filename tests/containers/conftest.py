"""Fixtures for the container tests: a real dockerd, the busybox test image, a registry.

Docker missing skips these tests with one line on a developer machine; with
CI=true it fails them instead (CI runs scripts/docker-setup.sh first). Every
container a test starts carries this session's node label and is removed after
the test; the registry and the image tags pushed to it go at the session's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from ufdl_node.containers.engine import ContainerEngine, RegistryAuth
from ufdl_node.containers.spec import LABEL_NODE, ContainerSpec

TEST_IMAGE = "ufdl-node-test/busybox:latest"
TEST_NODE = f"pytest-{uuid.uuid4().hex[:12]}"  # this session's containers, for the sweep
SETUP_HINT = "run scripts/docker-setup.sh"
REGISTRY_START_S = 30.0


def unavailable(reason: str) -> None:
    """Skip with `reason`, or fail under CI, where Docker is part of the job."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


async def _docker_problem() -> str | None:
    async with ContainerEngine() as engine:
        facts = await engine.probe()
        if not facts.reachable:
            return f"Docker is not usable ({facts.reason}); {SETUP_HINT}"
        if not await engine.has_image(TEST_IMAGE):
            return f"the test image {TEST_IMAGE} is missing; {SETUP_HINT}"
    return None


@pytest.fixture(scope="session")
def docker_problem() -> str | None:
    """Why Docker cannot be used for these tests, or None (asked once a session)."""
    return asyncio.run(_docker_problem())


@pytest.fixture
async def engine(docker_problem: str | None) -> AsyncIterator[ContainerEngine]:
    """A ContainerEngine on the real dockerd; this session's containers are swept after the test."""
    if docker_problem:
        unavailable(docker_problem)
    engine = ContainerEngine()
    yield engine
    for run in await engine.find({LABEL_NODE: TEST_NODE}):
        await run.remove()
    await engine.close()


_job_pks = itertools.count(1)


@pytest.fixture
def make_spec() -> Callable[..., ContainerSpec]:
    """ContainerSpec factory: the test image, this session's node label, a fresh job pk."""

    def make(command: str | list[str], **kwargs: Any) -> ContainerSpec:
        values: dict[str, Any] = {"image": TEST_IMAGE, "node": TEST_NODE, "slot": "0",
                                  "job_pk": next(_job_pks)}
        values.update(kwargs)
        return ContainerSpec(command=command, **values)

    return make


@dataclass(frozen=True)
class Registry:
    """A docker-registry on loopback with htpasswd auth, holding the test image."""

    host: str  # 127.0.0.1:port
    username: str
    password: str
    image: str  # the test image as pushed there

    @property
    def auth(self) -> RegistryAuth:
        """The credentials the registry accepts."""
        return RegistryAuth(self.username, self.password)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_registry(url: str, process: subprocess.Popen[bytes]) -> None:
    """Until the registry answers /v2/ (401 without credentials), bounded."""
    deadline = time.monotonic() + REGISTRY_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
        except urllib.error.HTTPError as e:
            if e.headers.get("Docker-Distribution-Api-Version"):
                return  # it answers (and not another program that took the port first)
            raise RuntimeError(f"not docker-registry on {url}: {e}") from None
        except OSError:
            time.sleep(0.1)
            continue
        raise RuntimeError(f"{url} answers without credentials: not the test's registry")
    raise RuntimeError(f"docker-registry did not answer {url} within {REGISTRY_START_S:g} s")


async def _push_test_image(repo: str, auth: RegistryAuth, host: str) -> None:
    """Push to `repo` the test image plus a layer of its own, then drop it locally,
    so that a pull downloads a layer and reports its progress."""
    async with aiodocker.Docker() as docker:
        container = await docker.containers.create({
            "Image": TEST_IMAGE, "User": "0:0", "Labels": {LABEL_NODE: TEST_NODE},
            "Cmd": ["/bin/sh", "-c", "head -c 4000000 /dev/urandom > /payload.bin"]})
        try:
            await container.start()
            assert (await container.wait())["StatusCode"] == 0
            await container.commit(repository=repo, tag="latest")
        finally:
            await container.delete(force=True)
        credentials = {"username": auth.username, "password": auth.password, "serveraddress": host}
        await docker.images.push(repo, tag="latest", auth=credentials)
        await docker.images.delete(f"{repo}:latest")


async def delete_image(ref: str) -> None:
    """Remove the image `ref` from the node, if there."""
    async with aiodocker.Docker() as docker:
        with contextlib.suppress(aiodocker.DockerError):
            await docker.images.delete(ref)


def _start_registry(root: Path, log_file: Any) -> tuple[str, subprocess.Popen[bytes]]:
    """docker-registry serving on a free loopback port; its host:port and process.

    The port is free when asked for, but another test run beside this one may take it before
    the registry binds it: then the registry exits, and another port is tried (three in all)."""
    for attempt in range(3):
        host = f"127.0.0.1:{_free_port()}"
        (root / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: {host}\nauth:\n  htpasswd:\n"
            f"    realm: ufdl-test\n    path: {root / 'htpasswd'}\n")
        process = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                   stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_for_registry(f"http://{host}/v2/", process)
            return host, process
        except RuntimeError:
            process.kill()
            process.wait()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def registry(docker_problem: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A loopback docker-registry requiring a password, with the test image pushed to it."""
    if docker_problem:
        unavailable(docker_problem)
    missing = [tool for tool in ("docker-registry", "htpasswd") if shutil.which(tool) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed; {SETUP_HINT}")
    root: Path = tmp_path_factory.mktemp("registry")
    username, password = "ufdl-test", uuid.uuid4().hex
    htpasswd = subprocess.run(["htpasswd", "-Bbn", username, password], check=True,
                              capture_output=True, text=True).stdout
    (root / "htpasswd").write_text(htpasswd)
    log_file = (root / "registry.log").open("wb")
    try:
        host, process = _start_registry(root, log_file)
    except RuntimeError:
        log_file.close()
        raise
    try:
        repo = f"{host}/ufdl-test/busybox"
        asyncio.run(_push_test_image(repo, RegistryAuth(username, password), host))
        yield Registry(host, username, password, f"{repo}:latest")
        asyncio.run(delete_image(f"{repo}:latest"))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()
