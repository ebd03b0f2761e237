"""Routes for the Docker-image and pretrained-model records, and job outputs by pk (UFDL-API.md section 8).

Any authenticated user lists and reads them (``POST .../list`` with a filter
spec, ``GET .../{pk}``); staff create them (``POST .../create``), as on the
real server, where they come with the server's migrations.

A Docker-image record carries its registry's credentials, and the real server
answers them in clear to any user (a worker pulls the image with them); this
server does the same for compatibility, but never logs them or names them in
an error.

A pretrained model's file (the real server's ``data``) is sent by staff with ``POST
/v1/pretrained-models/{pk}/upload`` (the raw bytes as the body) and read by any user with
``POST /v1/pretrained-models/{pk}/download`` (what the UFDL Python client calls); a
record without one answers 404 naming it.

A Predict job names its model as a job output by the output's own pk:
``GET /v1/job-outputs/{pk}`` is that output's record and ``POST
/v1/job-outputs/{pk}/download`` its bytes (streamed), for any authenticated user.

Create bodies take the real server's migration files' shapes:
``cuda_version`` by version (``"11.1"``), ``framework`` as ``{"name",
"version"}``, ``min_hardware_generation`` by generation name (or null),
``domain`` by code or full name, ``licence`` by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..logs import get_logger
from . import records_store as rs
from .common import (
    SETTINGS,
    ApiError,
    conflict,
    identify,
    pk_of,
    read_json,
    read_object,
    receive_body,
    store_of,
    stored_file,
    want_str,
)
from .listing import stream_list
from .recordjson import DOCKER_JSON_SQL, PRETRAINED_JSON_SQL
from .store import Conflict, Store
from .views import compiled

log = get_logger("ufdl_node.server.records")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DOCKER_KEYS = frozenset({"name", "version", "url", "registry_url", "registry_username", "registry_password",
                         "cuda_version", "framework", "domain", "tasks", "min_hardware_generation", "cpu",
                         "licence"})
PRETRAINED_KEYS = frozenset({"name", "description", "url", "metadata", "framework", "domain", "licence"})
TASKS = ("Train", "Predict", "Export")


def _unknown_keys(body: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}",
                       extra={k: ["Unknown field."] for k in unknown})


def _required_text(body: dict[str, Any], key: str) -> str:
    value = want_str(body, key)
    if not value.strip():
        raise ApiError(400, f"{key}: This field may not be blank.",
                       extra={key: ["This field may not be blank."]})
    return str(value)


def _framework(raw: Any) -> tuple[str, str]:
    """The framework's (name, version): the row is made, when new, with the record it belongs
    to, so that a create refused for another field leaves no framework behind."""
    if not (isinstance(raw, dict) and set(raw) == {"name", "version"}
            and all(isinstance(v, str) and v.strip() for v in raw.values())):
        raise ApiError(400, 'framework: must be {"name": str, "version": str}',
                       extra={"framework": ["Not a valid framework."]})
    return raw["name"], raw["version"]


def _domain(store: Store, raw: Any) -> str:
    domains = store.domain_names()
    code = next((c for c, name in domains.items() if raw in (c, name)), None)
    if code is None:
        raise ApiError(400, f"domain: must be one of {sorted(domains)} (or its full name)",
                       extra={"domain": ["Unknown domain."]})
    return code


def _licence(store: Store, raw: Any) -> str:
    names = store.licence_names()
    match = next((n for n in names if isinstance(raw, str) and raw.lower() == n.lower()), None)
    if match is None:
        raise ApiError(400, f"licence: unknown licence; known: {names}",
                       extra={"licence": ["Unknown licence."]})
    return match


# -- Docker images -------------------------------------------------------------------------------


def _docker_fields(store: Store, body: dict[str, Any]) -> dict[str, Any]:
    _unknown_keys(body, DOCKER_KEYS, "create")
    cuda = want_str(body, "cuda_version")
    cuda_pk = rs.cuda_pk(store, cuda)
    if cuda_pk is None:
        raise ApiError(400, f"cuda_version: unknown CUDA version; known: {rs.cuda_versions(store)}",
                       extra={"cuda_version": ["Unknown CUDA version."]})
    generation = want_str(body, "min_hardware_generation", required=False, nullable=True)
    generation_pk = None if generation is None else rs.hardware_pk(store, generation)
    if generation is not None and generation_pk is None:
        raise ApiError(400, "min_hardware_generation: unknown hardware generation (see /v1/hardware/list)",
                       extra={"min_hardware_generation": ["Unknown generation."]})
    tasks = body.get("tasks", [])
    if not isinstance(tasks, list) or not all(t in TASKS for t in tasks):
        raise ApiError(400, f"tasks: must be a list of {list(TASKS)}", extra={"tasks": ["Not a valid list."]})
    cpu = body.get("cpu", False)
    if not isinstance(cpu, bool):
        raise ApiError(400, "cpu: Must be a valid boolean.", extra={"cpu": ["Must be a valid boolean."]})
    # The credentials are checked for type only: their values never appear in a message.
    return {"name": _required_text(body, "name"), "version": _required_text(body, "version"),
            "url": _required_text(body, "url"),
            "registry_url": want_str(body, "registry_url", required=False, default=""),
            "registry_username": want_str(body, "registry_username", required=False, nullable=True),
            "registry_password": want_str(body, "registry_password", required=False, nullable=True),
            "cuda_version": cuda_pk, "framework": _framework(body.get("framework")),
            "domain": _domain(store, body.get("domain")), "tasks": tasks,
            "min_hardware_generation": generation_pk, "cpu": int(cpu),
            "licence": _licence(store, body.get("licence"))}


async def docker_list(request: web.Request) -> web.StreamResponse:
    identify(request)
    query = compiled(await read_json(request), rs.DOCKER_IMAGES)
    return await stream_list(request, store_of(request.app), rs.DOCKER_IMAGES, DOCKER_JSON_SQL, query)


async def docker_retrieve(request: web.Request) -> web.Response:
    identify(request)
    row = rs.docker_image(store_of(request.app), pk_of(request))
    if row is None:
        raise ApiError(404, "Not found.")
    return web.json_response(rs.docker_json(row))


async def docker_create(request: web.Request) -> web.Response:
    identify(request).require_staff()
    store = store_of(request.app)
    fields = _docker_fields(store, await read_object(request))
    try:
        pk = rs.create_docker_image(store, fields)
    except Conflict as e:
        raise conflict(e) from None
    log.info("docker image record created", docker_pk=pk, name=fields["name"], version=fields["version"])
    return web.json_response(rs.docker_json(rs.docker_image(store, pk)), status=201)  # type: ignore[arg-type]


# -- pretrained models ------------------------------------------------------------------------


async def pretrained_list(request: web.Request) -> web.StreamResponse:
    identify(request)
    query = compiled(await read_json(request), rs.PRETRAINED_MODELS)
    return await stream_list(request, store_of(request.app), rs.PRETRAINED_MODELS, PRETRAINED_JSON_SQL, query)


async def pretrained_retrieve(request: web.Request) -> web.Response:
    identify(request)
    row = rs.pretrained_model(store_of(request.app), pk_of(request))
    if row is None:
        raise ApiError(404, "Not found.")
    return web.json_response(rs.pretrained_json(row))


async def pretrained_create(request: web.Request) -> web.Response:
    caller = identify(request)
    caller.require_staff()
    store = store_of(request.app)
    body = await read_object(request)
    _unknown_keys(body, PRETRAINED_KEYS, "create")
    fields = {"name": _required_text(body, "name"),
              "description": want_str(body, "description", required=False, default=""),
              "url": _required_text(body, "url"), "metadata": body.get("metadata", {}),
              "framework": _framework(body.get("framework")),
              "domain": _domain(store, body.get("domain")), "licence": _licence(store, body.get("licence")),
              "creator": caller.user_pk}
    try:
        pk = rs.create_pretrained_model(store, fields)
    except Conflict as e:
        raise conflict(e) from None
    log.info("pretrained model record created", model_pk=pk, name=fields["name"])
    return web.json_response(rs.pretrained_json(rs.pretrained_model(store, pk)), status=201)  # type: ignore[arg-type]


def _pretrained_or_404(request: web.Request) -> tuple[Store, int]:
    store, pk = store_of(request.app), pk_of(request)
    if rs.pretrained_model(store, pk) is None:
        raise ApiError(404, "Not found.")
    return store, pk


async def pretrained_upload(request: web.Request) -> web.Response:
    """The record's file, replaced by the request's body (staff)."""
    identify(request).require_staff()
    store, pk = _pretrained_or_404(request)
    limit = request.app[SETTINGS].max_upload_bytes
    target = rs.pretrained_file(store, pk)
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    temp = target.with_name(f".{pk}.part")
    try:
        size = await receive_body(request, temp, limit, "pretrained model")
        await asyncio.to_thread(os.replace, temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    log.info("pretrained model file stored", model_pk=pk, bytes=size)
    return web.json_response(rs.pretrained_json(rs.pretrained_model(store, pk)))  # type: ignore[arg-type]


async def pretrained_download(request: web.Request) -> web.StreamResponse:
    identify(request)
    store, pk = _pretrained_or_404(request)
    path = rs.pretrained_file(store, pk)
    if not path.is_file():
        raise ApiError(404, f"Pretrained model {pk} has no file on this server")
    return stored_file(path, f"pretrained model {pk}", f"pretrained-{pk}")


# -- job outputs by pk ---------------------------------------------------------------------------


def _output_or_404(request: web.Request) -> Any:
    identify(request)
    row = rs.output_by_pk(store_of(request.app), pk_of(request))
    if row is None:
        raise ApiError(404, "Not found.")
    return row


async def job_output_retrieve(request: web.Request) -> web.Response:
    return web.json_response(Store.output_json(_output_or_404(request)))


async def job_output_download(request: web.Request) -> web.StreamResponse:
    row = _output_or_404(request)
    pk = int(row["pk"])
    return stored_file(store_of(request.app).output_path(pk), f"output {pk}", f"output-{pk}")


_PK = r"{pk:\d+}"
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/docker/list", docker_list),
    ("POST", "/v1/docker/create", docker_create),
    ("GET", f"/v1/docker/{_PK}", docker_retrieve),
    ("POST", "/v1/pretrained-models/list", pretrained_list),
    ("POST", "/v1/pretrained-models/create", pretrained_create),
    ("GET", f"/v1/pretrained-models/{_PK}", pretrained_retrieve),
    ("POST", f"/v1/pretrained-models/{_PK}/upload", pretrained_upload),
    ("POST", f"/v1/pretrained-models/{_PK}/download", pretrained_download),
    ("GET", f"/v1/job-outputs/{_PK}", job_output_retrieve),
    ("POST", f"/v1/job-outputs/{_PK}/download", job_output_download),
]
