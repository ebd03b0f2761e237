"""Fixtures for the client tests: the embedded server on loopback, a FaultProxy in
front of it, and a world with a template, a node and jobs in any phase.

The admin client talks to the server directly (setting the scene must not meet
the faults); the worker client under test goes through the proxy, with tiny
backoff so that retries cost milliseconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartServer, wait_for
from tests.faults import FaultProxy
from ufdl_node import logs
from ufdl_node.client import UfdlClient
from ufdl_node.metrics import Metrics
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import ServerSettings

TEMPLATE_SPEC: dict[str, Any] = {
    "name": "client_echo", "version": 1, "description": "client tests", "scope": "public",
    "licence": "Apache 2.0",
    "specific": {"job_type": "Export", "executor_class": "tests.Echo", "required_packages": "",
                 "parameters": {"data": {"types": ["JSON"], "default": {}, "help": "anything"}}},
}
WORKER_PASSWORD = "workerpw-Secret-123"
ADMIN_PASSWORD = "adminpw-Secret-456"
FAST: dict[str, Any] = {"request_timeout_s": 2.0, "retry_max_attempts": 4,
                        "retry_initial_delay_s": 0.001, "retry_max_delay_s": 0.02}


class World:
    """A server, a proxy in front of it, an admin client, a worker client and its node."""

    def __init__(self, server: EmbeddedServer, proxy: FaultProxy, admin: UfdlClient,
                 worker: UfdlClient, metrics: Metrics) -> None:
        self.server, self.proxy, self.admin, self.worker, self.metrics = \
            server, proxy, admin, worker, metrics
        self.template_pk = 0
        self.node_pk = 0
        self._ips = 0

    async def setup(self) -> None:
        self.template_pk = (await self.admin.import_template(TEMPLATE_SPEC))["pk"]
        self.node_pk = await self.new_node()

    async def new_node(self) -> int:
        self._ips += 1
        # the worker's own node: only its creator (or staff) may act as a node
        node = await self.direct.create_node({"ip": f"10.1.0.{self._ips}", "index": 0, "cpu_mem": 2**30,
                                              "gpu_mem": None, "driver_version": None,
                                              "hardware_generation": None})
        return int(node["pk"])

    def client(self, url: str | None = None, password: str = WORKER_PASSWORD, **kwargs: Any) -> UfdlClient:
        """Another worker client (the test closes it)."""
        return UfdlClient(url or self.proxy.url, "worker", password, **{**FAST, **kwargs})

    async def job(self, **kwargs: Any) -> dict[str, Any]:
        return await self.admin.create_job(self.template_pk, {}, {"data": {"value": 1, "type": "JSON"}},
                                           "client test", **kwargs)

    async def held(self, node: int | None = None, **kwargs: Any) -> dict[str, Any]:
        job = await self.job(**kwargs)
        return await self.direct.acquire(job["pk"], node or self.node_pk)

    async def started(self, node: int | None = None, **kwargs: Any) -> dict[str, Any]:
        job = await self.held(node, **kwargs)
        return await self.direct.start(job["pk"], node or self.node_pk)

    async def errored(self, reason: str = "boom") -> dict[str, Any]:
        job = await self.started()
        return await self.direct.finish(job["pk"], self.node_pk, error=reason)

    async def read(self, pk: int) -> dict[str, Any]:
        return await self.admin.get_job(pk)

    def sample(self, name: str, **labels: str) -> float:
        """A value of the worker client's Prometheus registry (0 while nothing was recorded)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def outlive_tokens(self, refresh: bool = False) -> None:
        """Wait until the server refuses every access token issued so far (and refresh token too).

        A probe pair obtained now expires no earlier than any pair issued before it, so the
        server refusing the probe is the condition; no guess at JWT expiry rounding.
        """
        url = self.server.url
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/auth/obtain",
                                 json={"username": "worker", "password": WORKER_PASSWORD}) as reply:
                probe = await reply.json()

            async def refused() -> bool:
                if refresh:
                    request = http.post(f"{url}/v1/auth/refresh", json={"refresh": probe["refresh"]})
                else:
                    request = http.get(f"{url}/v1/nodes/{self.node_pk}",
                                       headers={"Authorization": f"Bearer {probe['access']}"})
                async with request as reply:
                    return reply.status == 401

            await wait_for(refused, what="the server to refuse the tokens issued so far")

    @property
    def direct(self) -> UfdlClient:
        """A worker client that bypasses the proxy (for setting the scene)."""
        return self._direct

    def attach_direct(self, client: UfdlClient) -> None:
        self._direct = client


@pytest.fixture(autouse=True)
def _cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A low scrypt cost for the test users: each world logs in three times."""
    monkeypatch.setattr("ufdl_node.server.auth.SCRYPT_N", 2**8)


@pytest.fixture(autouse=True)
def _fresh_secret_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's registered secrets are forgotten afterwards: tests stay independent."""
    monkeypatch.setattr(logs, "_secrets", dict(logs._secrets))
    monkeypatch.setattr(logs, "_secret_re", logs._secret_re)


@pytest.fixture
def start_server(tmp_path: Path, embedded_servers: StartServer) -> Callable[..., Awaitable[EmbeddedServer]]:
    """A factory of embedded servers on free loopback ports, stopped after the test."""
    count = 0

    async def start(**overrides: Any) -> EmbeddedServer:
        nonlocal count
        count += 1
        return await embedded_servers(ServerSettings(
            data_dir=tmp_path / f"server{count - 1}", port=0, admin=f"admin:{ADMIN_PASSWORD}",
            worker=f"worker:{WORKER_PASSWORD}", **overrides))

    return start


@pytest.fixture
async def make_world(start_server: Callable[..., Awaitable[EmbeddedServer]]) \
        -> AsyncIterator[Callable[..., Awaitable[World]]]:
    """A factory of worlds; keyword arguments go to the server's settings."""
    opened: list[Any] = []

    async def make(**server_settings: Any) -> World:
        server = await start_server(**server_settings)
        proxy = FaultProxy(server.url)
        await proxy.start()
        opened.append(proxy)
        metrics = Metrics()
        admin = UfdlClient(server.url, "admin", ADMIN_PASSWORD, **FAST)
        worker = UfdlClient(proxy.url, "worker", WORKER_PASSWORD, metrics=metrics, **FAST)
        direct = UfdlClient(server.url, "worker", WORKER_PASSWORD, **FAST)
        opened.extend([admin, worker, direct])
        world = World(server, proxy, admin, worker, metrics)
        world.attach_direct(direct)
        await world.setup()
        return world

    yield make
    for thing in reversed(opened):
        if isinstance(thing, FaultProxy):
            await thing.stop()
        else:
            await thing.close()


@pytest.fixture
async def world(make_world: Callable[..., Awaitable[World]]) -> World:
    """The embedded server as it is (strict: JSON errors, 406 on illegal transitions)."""
    return await make_world()


@pytest.fixture
async def quirks_world(make_world: Callable[..., Awaitable[World]]) -> World:
    """The embedded server behaving like the real one: 500 HTML, outputs kept after reset, ..."""
    return await make_world(real_server_quirks=True)


