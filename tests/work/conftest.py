"""A small UFDL server on loopback for the work toolkit: datasets, files, archives,
categories, Docker-image and pretrained-model records and job outputs, in the real
server's wire format (UFDL-API.md section 8), with fault injection and request counts.

``FakeUfdl`` keeps its records in plain dicts that a test fills. Faults: ``fail(method,
path_regex, times, status)`` answers `status` to the next `times` matching requests;
``cut(method, path_regex, times)`` sends a body's headers (its full Content-Length)
and half of it, then drops the connection. ``count(method, path_regex)`` tells how
many requests reached the server.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web

from ufdl_node.transport import Transport
from ufdl_node.work.server_access import ServerAccess

TOKEN = "work-test-token"


def sha(data: bytes) -> str:
    """The sha256 a dataset record lists for `data`."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    times: int
    kind: str  # "fail", "cut" or "cut-chunked"
    status: int = 500
    retry_after: str | None = None


@dataclass
class FakeUfdl:
    """The server's state: records by pk, file bytes, faults and a log of requests."""

    datasets: dict[int, dict[str, Any]] = field(default_factory=dict)
    files: dict[int, dict[str, bytes]] = field(default_factory=dict)
    categories: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    docker: dict[int, dict[str, Any]] = field(default_factory=dict)
    pretrained: dict[int, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[int, tuple[int, str, str, bytes]] = field(default_factory=dict)
    archive_override: dict[int, bytes] = field(default_factory=dict)
    listed_hashes: dict[int, dict[str, str]] = field(default_factory=dict)
    bare_names: set[int] = field(default_factory=set)  # records whose `files` is a list of names
    faults: list[Fault] = field(default_factory=list)
    expired_tokens: int = 0  # answer 401 to this many authenticated requests (a token that expired)
    seen: list[tuple[str, str]] = field(default_factory=list)
    clients: list[tuple[str, str, int, str]] = field(default_factory=list)  # path, User-Agent, port, Node-Id
    bodies: list[Any] = field(default_factory=list)

    def add_dataset(self, pk: int, name: str, files: dict[str, bytes], *, domain: str = "ic",
                    version: int = 1, categories: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """A dataset record with `files` (its `files` field lists their sha256)."""
        self.files[pk] = dict(files)
        self.categories[pk] = dict(categories or {})
        record = {"pk": pk, "name": name, "version": version, "previous_version": None,
                  "description": "", "project": 1, "licence": 1, "is_public": False, "domain": domain,
                  "tags": "", "creator": 1, "creation_time": "2026-01-01T00:00:00Z",
                  "deletion_time": None}
        self.datasets[pk] = record
        return record

    def record(self, pk: int) -> dict[str, Any]:
        hashes = {name: sha(data) for name, data in self.files[pk].items()}
        hashes.update(self.listed_hashes.get(pk, {}))
        listed: Any = sorted(hashes) if pk in self.bare_names else hashes
        return {**self.datasets[pk], "files": listed}

    def fail(self, method: str, path: str, times: int, status: int = 500,
             retry_after: str | None = None) -> None:
        """Answer `status` (with `retry_after` as Retry-After) to the next `times` matching requests."""
        self.faults.append(Fault(method, re.compile(path), times, "fail", status, retry_after))

    def cut(self, method: str, path: str, times: int, *, chunked: bool = False) -> None:
        """Send half of the next `times` matching bodies, then drop the connection (with
        `chunked`, in chunked transfer encoding: no Content-Length to compare with)."""
        self.faults.append(Fault(method, re.compile(path), times, "cut-chunked" if chunked else "cut"))

    def count(self, method: str, path: str) -> int:
        """How many requests matching `method` and the regex `path` arrived."""
        pattern = re.compile(path)
        return sum(1 for m, p in self.seen if m == method and pattern.search(p))

    def fault_for(self, request: web.Request) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and fault.pattern.search(request.path):
                fault.times -= 1
                return fault
        return None


def _not_found(what: str) -> web.Response:
    return web.json_response({"detail": f"{what} not found"}, status=404)


def _archive(files: dict[str, bytes], filetype: str) -> bytes:
    buf = io.BytesIO()
    if filetype == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in sorted(files.items()):
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for name, data in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _matches(record: dict[str, Any], spec: dict[str, Any]) -> bool:
    for expr in spec.get("expressions", []):
        assert expr["type"] == "exact", expr
        if record.get(expr["field"]) != expr["value"]:
            return False
    return True


async def _send(request: web.Request, data: bytes, filename: str | None = None) -> web.StreamResponse:
    """Stream `data` as a file reply, or half of it and a dropped connection when a cut is due."""
    resp = web.StreamResponse(headers={"Content-Type": "application/data"})
    if filename:
        resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    if request["cut"] == "cut-chunked":
        resp.enable_chunked_encoding()
    else:
        resp.content_length = len(data)
    await resp.prepare(request)
    if request["cut"]:
        await resp.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()
        return resp
    await resp.write(data)
    await resp.write_eof()
    return resp


class _Routes:
    """The fake server's views, one per call of UFDL-API.md section 8 the toolkit makes."""

    def __init__(self, state: FakeUfdl) -> None:
        self.state = state

    @web.middleware
    async def gate(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """Log the request, check the token (a 401 while tokens are 'expired'), inject faults."""
        state = self.state
        state.seen.append((request.method, request.path))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state.clients.append((request.path, request.headers.get("User-Agent", ""), peer[1] if peer else 0,
                              request.headers.get("Node-Id", "")))
        if not request.path.startswith("/v1/auth/"):
            if state.expired_tokens > 0:
                state.expired_tokens -= 1
                return web.json_response({"code": "token_not_valid"}, status=401)
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.json_response({"detail": "token_not_valid"}, status=401)
        fault = state.fault_for(request)
        if fault is not None and fault.kind == "fail":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return web.Response(status=fault.status, text="<html><title>Server Error</title></html>",
                                content_type="text/html", headers=headers)
        request["cut"] = fault.kind if fault is not None else None
        reply: web.StreamResponse = await handler(request)
        return reply

    async def obtain(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("password") != "pw":
            return web.json_response({"detail": "No active account"}, status=401)
        return web.json_response({"access": TOKEN, "refresh": "refresh-token"})

    async def refresh(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"access": TOKEN})

    async def dataset(self, request: web.Request) -> web.StreamResponse:
        pk = int(request.match_info["pk"])
        if pk not in self.state.datasets:
            return _not_found(f"dataset {pk}")
        return web.json_response(self.state.record(pk))

    async def dataset_list(self, request: web.Request) -> web.StreamResponse:
        spec = await request.json()
        records = [self.state.record(pk) for pk in sorted(self.state.datasets)]
        return web.json_response(_listed(records, spec))

    async def dataset_file(self, request: web.Request) -> web.StreamResponse:
        pk, name = int(request.match_info["pk"]), unquote(request.match_info["name"])
        if name not in self.state.files.get(pk, {}):
            return _not_found(f"file {name}")
        return await _send(request, self.state.files[pk][name])

    async def dataset_download(self, request: web.Request) -> web.StreamResponse:
        pk = int(request.match_info["pk"])
        if pk not in self.state.datasets:
            return _not_found(f"dataset {pk}")
        body = await request.json() if request.can_read_body else {}
        self.state.bodies.append(body)
        filetype = body.get("filetype", "zip")
        if filetype not in ("zip", "tar.gz"):
            return web.json_response({"detail": f"unsupported filetype {filetype}"}, status=415)
        data = self.state.archive_override.get(pk) or _archive(self.state.files[pk], filetype)
        record = self.state.datasets[pk]
        return await _send(request, data, f"{record['name']}.v{record['version']}.{filetype}")

    async def dataset_download_get(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="<html><title>Server Error (500)</title></html>",
                            content_type="text/html")

    async def categories(self, request: web.Request) -> web.StreamResponse:
        pk = int(request.match_info["pk"])
        if pk not in self.state.datasets:
            return _not_found(f"dataset {pk}")
        cats = self.state.categories[pk]
        if request.method == "PATCH":  # the real server's add/remove: answers just the changes
            body = await request.json()
            self.state.bodies.append(body)
            return _modify(cats, self.state.files[pk], body)
        if request.method == "POST":  # the real server's set: {file: [labels]}, [] removes
            body = await request.json()
            self.state.bodies.append(body)
            unknown = sorted(set(body) - set(self.state.files[pk]))
            if unknown:  # the pre-2021 {"images", "categories"} body lands here too
                return web.json_response({"detail": f"Data-set has no image named {unknown[0]!r}"},
                                         status=400)
            for image, labels in body.items():
                cats.pop(image, None)
                if labels:
                    cats[image] = list(labels)
            return web.json_response(body)
        return web.json_response(cats)

    async def clear(self, request: web.Request) -> web.StreamResponse:
        pk = int(request.match_info["pk"])
        if pk not in self.state.datasets:
            return _not_found(f"dataset {pk}")
        self.state.categories[pk] = {}
        return web.json_response(self.state.record(pk))

    def record_views(self, table: dict[int, dict[str, Any]], label: str) -> tuple[Any, Any]:
        """GET one record and POST .../list for a table of plain records."""
        async def one(request: web.Request) -> web.StreamResponse:
            pk = int(request.match_info["pk"])
            return web.json_response(table[pk]) if pk in table else _not_found(f"{label} {pk}")

        async def listing(request: web.Request) -> web.StreamResponse:
            return web.json_response(_listed([r for _, r in sorted(table.items())], await request.json()))
        return one, listing

    async def output_download(self, request: web.Request) -> web.StreamResponse:
        pk = int(request.match_info["pk"])
        if pk not in self.state.outputs:
            return _not_found(f"job output {pk}")
        return await _send(request, self.state.outputs[pk][3])

    async def job_output(self, request: web.Request) -> web.StreamResponse:
        wanted = (int(request.match_info["job"]), unquote(request.match_info["name"]),
                  unquote(request.match_info["type"]))
        for job, name, type_, data in self.state.outputs.values():
            if (job, name, type_) == wanted:
                return await _send(request, data)
        return web.json_response({"detail": "no such output"}, status=400)


def _modify(cats: dict[str, list[str]], files: dict[str, bytes], body: dict[str, Any]) -> web.Response:
    """PATCH {"method": "add"|"remove", "images", "categories"} on `cats`: the changes made, or
    400 for an image the dataset does not have (the real server's BadName)."""
    unknown = [image for image in body["images"] if image not in files]
    if unknown:
        return web.json_response({"detail": f"Data-set has no image with this name: {unknown[0]}"},
                                 status=400)
    add = body["method"] == "add"
    changes: dict[str, list[str]] = {}
    for image in body["images"]:
        held = list(cats.get(image, []))  # a copy: the test's own label lists stay as given
        for category in body["categories"]:
            if add and category not in held:
                held.append(category)
            elif not add and category in held:
                held.remove(category)
            else:
                continue
            changes.setdefault(image, []).append(category)
        if held:
            cats[image] = held
        else:
            cats.pop(image, None)
    return web.json_response(changes)


def _listed(records: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    found = [r for r in records if _matches(r, spec)]
    for order in reversed(spec.get("order_by", [])):
        found.sort(key=lambda r, f=order["field"]: r.get(f), reverse=not order.get("ascending", True))
    return found


def build_app(state: FakeUfdl) -> web.Application:
    """The aiohttp application that serves `state`."""
    views = _Routes(state)
    app = web.Application(middlewares=[views.gate])
    docker_one, docker_list = views.record_views(state.docker, "docker image")
    pm_one, pm_list = views.record_views(state.pretrained, "pretrained model")
    app.router.add_post("/v1/auth/obtain", views.obtain)
    app.router.add_post("/v1/auth/refresh", views.refresh)
    app.router.add_get(r"/v1/datasets/{pk:\d+}", views.dataset)
    app.router.add_post("/v1/datasets/list", views.dataset_list)
    app.router.add_get(r"/v1/datasets/{pk:\d+}/files/{name:.+}", views.dataset_file)
    app.router.add_post(r"/v1/datasets/{pk:\d+}/download", views.dataset_download)
    app.router.add_get(r"/v1/datasets/{pk:\d+}/download", views.dataset_download_get)
    app.router.add_route("*", r"/v1/classify/datasets/{pk:\d+}/categories", views.categories)
    app.router.add_delete(r"/v1/datasets/{pk:\d+}/clear", views.clear)
    app.router.add_get(r"/v1/docker/{pk:\d+}", docker_one)
    app.router.add_post("/v1/docker/list", docker_list)
    app.router.add_get(r"/v1/pretrained-models/{pk:\d+}", pm_one)
    app.router.add_post("/v1/pretrained-models/list", pm_list)
    app.router.add_post(r"/v1/job-outputs/{pk:\d+}/download", views.output_download)
    app.router.add_get(r"/v1/jobs/{job:\d+}/outputs/{name}/{type}", views.job_output)
    return app


@dataclass
class Harness:
    """A running fake server and a ServerAccess to it."""

    state: FakeUfdl
    url: str
    session: aiohttp.ClientSession

    def access(self, *, retry_s: float = 5.0, password: str = "pw",
               node_id: int | None = None) -> ServerAccess:
        """A ServerAccess over the node's one HTTP path (a Transport on the harness's session,
        logged in with `password`, acting as node `node_id` if given) with quick retries for
        at most `retry_s` seconds."""
        transport = Transport(self.url, "worker", password, session=self.session, request_timeout_s=10)
        return ServerAccess(transport.node_io(node_id), retry_s=retry_s, initial_delay_s=0.01,
                            max_delay_s=0.05)


@pytest.fixture
async def ufdl(aiohttp_server: Any) -> AsyncIterator[Harness]:
    """A fake UFDL server on loopback and a client session to it."""
    state = FakeUfdl()
    server = await aiohttp_server(build_app(state))
    async with aiohttp.ClientSession() as session:
        yield Harness(state, str(server.make_url("")).rstrip("/"), session)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip holding `members` as they are named (no checks: tests build bad ones too)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def json_bytes(value: Any) -> bytes:
    """`value` as JSON bytes."""
    return json.dumps(value).encode()
