"""Fixtures for the embedded server's tests: real servers on loopback, and a small client.

`shared_server` is one server for the whole session, run on its own event loop
in a thread, so that tests which only need *a* server do not pay for a start
(users are hashed with scrypt on start). Tests that need their own settings,
or a restart, use `make_server`, which starts in-loop servers and stops them
afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartServer
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import ServerSettings

ADMIN = ("admin", "adminpw")
WORKER = ("worker", "workerpw")
TEMPLATE = {
    "name": "echo", "version": 1, "description": "test template", "scope": "public",
    "licence": "Apache 2.0",
    "specific": {"job_type": "Export", "executor_class": "tests.Echo", "required_packages": "",
                 "parameters": {"data": {"types": ["JSON"], "default": {}, "help": "anything"}}},
}
_MISSING: Any = object()
_IPS = itertools.count()
_TOKENS: dict[tuple[str, str], dict[str, str]] = {}


def server_settings(data_dir: Path, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {"data_dir": data_dir, "port": 0, "admin": ":".join(ADMIN),
                              "worker": ":".join(WORKER), "log_level": "warning"}
    values.update(overrides)
    return ServerSettings(**values)


class _ThreadedServer:
    """An EmbeddedServer on its own loop in a daemon thread."""

    def __init__(self, settings: ServerSettings) -> None:
        self.server = EmbeddedServer(settings)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.stop())
        self.loop.close()

    def __enter__(self) -> EmbeddedServer:
        self.thread.start()
        assert self.ready.wait(30), "the shared server did not start"
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One embedded server for the session (strict mode)."""
    with _ThreadedServer(server_settings(tmp_path_factory.mktemp("shared"))) as server:
        yield server


MakeServer = Callable[..., Awaitable[EmbeddedServer]]


@pytest.fixture
def make_server(tmp_path: Path, embedded_servers: StartServer) -> MakeServer:
    """Factory: start an embedded server (data in tmp_path/data unless given); all are stopped after."""

    async def make(data_dir: Path | None = None, **overrides: Any) -> EmbeddedServer:
        return await embedded_servers(server_settings(data_dir or tmp_path / "data", **overrides))

    return make


@dataclass
class Reply:
    status: int
    body: bytes
    headers: Any

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def seg(text: str) -> str:
    return urllib.parse.quote(text, safe="")


class Api:
    """A thin client of one server, acting as "admin", "worker" or None (anonymous)."""

    def __init__(self, session: aiohttp.ClientSession, server: EmbeddedServer) -> None:
        self.session = session
        self.url = server.url
        # A port may be reused by a later server with another signing key: key the cache on both.
        self.identity = f"{server.url} {server.settings.data_dir}"
        self.template_pk: int | None = None

    async def login(self, who: str) -> dict[str, str]:
        # Tokens are cached per server for the session: each obtain costs a scrypt check.
        key = (self.identity, who)
        if key not in _TOKENS:
            user, password = ADMIN if who == "admin" else WORKER
            reply = await self.call("POST", "/v1/auth/obtain", as_=None,
                                    json={"username": user, "password": password})
            assert reply.status == 200, reply
            _TOKENS[key] = reply.json
        return _TOKENS[key]

    async def call(self, method: str, path: str, *, as_: str | None = "worker", node: Any = None,
                   json: Any = _MISSING, data: Any = None, headers: dict[str, str] | None = None,
                   token: str | None = None) -> Reply:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        elif as_ is not None:
            hdrs["Authorization"] = f"Bearer {(await self.login(as_))['access']}"
        if node is not None:
            hdrs["Node-Id"] = str(node["pk"] if isinstance(node, dict) else node)
        kwargs: dict[str, Any] = {"headers": hdrs}
        if json is not _MISSING:
            kwargs["json"] = json
        elif data is not None:
            kwargs["data"] = data
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            return Reply(resp.status, await resp.read(), resp.headers)

    async def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        reply = await self.call(method, path, **kw)
        assert reply.status == status, f"{method} {path}: {reply.status} {reply.body[:300]!r}"
        return reply.json if reply.body else None

    async def node(self, **fields: Any) -> dict[str, Any]:
        n = next(_IPS)
        body = {"ip": f"10.1.{n // 250}.{n % 250 + 1}", "index": 0, "cpu_mem": 2**30}
        body.update(fields)
        return await self.ok("POST", "/v1/nodes/create", 201, json=body)

    async def template(self, spec: dict[str, Any] | None = None) -> int:
        if spec is None and self.template_pk is not None:
            return self.template_pk
        spec = spec or TEMPLATE
        found = await self.ok("POST", "/v1/job-templates/list", as_="admin", json={
            "expressions": [{"type": "exact", "field": "name", "value": spec["name"]},
                            {"type": "exact", "field": "version", "value": spec["version"]}]})
        pk = found[0]["pk"] if found else \
            (await self.ok("POST", "/v1/job-templates/import", 200, as_="admin", json=spec))["pk"]
        if spec is TEMPLATE:
            self.template_pk = pk
        return int(pk)

    async def job(self, **body: Any) -> dict[str, Any]:
        pk = await self.template()
        payload = {"input_values": {}, "parameter_values": {}, "description": "test"}
        payload.update(body)
        return await self.ok("POST", f"/v1/job-templates/{pk}/create-job", as_="admin",
                             json=payload)

    async def held(self, node: dict[str, Any], **body: Any) -> dict[str, Any]:
        job = await self.job(**body)
        return await self.ok("GET", f"/v1/jobs/{job['pk']}/acquire", node=node)

    async def started(self, node: dict[str, Any], **body: Any) -> dict[str, Any]:
        job = await self.held(node, **body)
        return await self.ok("POST", f"/v1/jobs/{job['pk']}/start", node=node,
                             json={"send_notification": "none"})

    async def finish(self, job: dict[str, Any], node: dict[str, Any], **extra: Any) -> Reply:
        return await self.call("POST", f"/v1/jobs/{job['pk']}/finish", node=node,
                               json={"success": True, "send_notification": "none", **extra})

    async def upload(self, job: dict[str, Any], node: dict[str, Any] | None, name: str, type_: str,
                     data: Any = b"{}", *, filename: str | None = "out", as_: str | None = "worker") -> Reply:
        headers = {"Content-Type": "application/data"}
        if filename is not None:
            headers["Content-Disposition"] = f"attachment; filename={filename}"
        return await self.call("POST", f"/v1/jobs/{job['pk']}/outputs/{seg(name)}/{seg(type_)}",
                               node=node, data=data, headers=headers, as_=as_)

    async def get_job(self, job: dict[str, Any]) -> dict[str, Any]:
        return await self.ok("GET", f"/v1/jobs/{job['pk']}", as_="admin")

    async def get_node(self, node: dict[str, Any]) -> dict[str, Any]:
        return await self.ok("GET", f"/v1/nodes/{node['pk']}", as_="admin")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture
async def api(shared_server: EmbeddedServer, session: aiohttp.ClientSession) -> Api:
    """A client of the shared (strict) server."""
    return Api(session, shared_server)


MakeApi = Callable[[EmbeddedServer], Api]


@pytest.fixture
def make_api(session: aiohttp.ClientSession) -> MakeApi:
    """A client of a given server."""
    return lambda server: Api(session, server)
