"""Routes for authentication, nodes and hardware generations (job templates: templates.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .auth import TokenInvalid, verify_password
from .common import (
    ApiError,
    conflict,
    identify,
    pk_of,
    read_json,
    read_object,
    store_of,
    token_not_valid,
    tokens_of,
    want_int,
    want_str,
)
from .filters import FilterError, compile_spec
from .listing import stream_list
from .rowjson import HARDWARE_JSON_SQL, NODE_JSON_SQL
from .store import HARDWARE_RESOURCE, NODES, Conflict


def compiled(spec: Any, resource: Any) -> Any:
    try:
        return compile_spec(spec, resource)
    except FilterError as e:
        raise ApiError(400, f"Bad filter specification: {e}") from None


# -- auth ----------------------------------------------------------------------------


async def obtain(request: web.Request) -> web.Response:
    body = await read_object(request)
    username = want_str(body, "username")
    password = want_str(body, "password")
    row = store_of(request.app).user_by_name(username)
    # scrypt takes tens of milliseconds: keep it off the event loop.
    good = await asyncio.to_thread(verify_password, password, None if row is None else row["password_hash"])
    if row is None or not good:
        raise ApiError(401, "No active account found with the given credentials",
                       code="no_active_account")
    tokens = tokens_of(request.app)
    return web.json_response({"access": tokens.access(row["pk"]), "refresh": tokens.refresh(row["pk"])})


async def refresh(request: web.Request) -> web.Response:
    body = await read_object(request)
    token = want_str(body, "refresh")
    tokens = tokens_of(request.app)
    if not token.isascii():  # a JWT is ASCII; anything else is not one
        raise token_not_valid("Token is invalid or expired")
    try:
        user_pk = tokens.verify(token, "refresh")
    except TokenInvalid:
        raise token_not_valid("Token is invalid or expired") from None
    if store_of(request.app).user(user_pk) is None:
        raise token_not_valid("User not found")
    return web.json_response({"access": tokens.access(user_pk)})


# -- hardware and nodes -----------------------------------------------------------------


async def hardware_list(request: web.Request) -> web.StreamResponse:
    identify(request)
    query = compiled(await read_json(request), HARDWARE_RESOURCE)
    return await stream_list(request, store_of(request.app), HARDWARE_RESOURCE, HARDWARE_JSON_SQL, query)


def _node_fields(request: web.Request, body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """Validate node fields the way DRF does: each error names its field."""
    try:
        return _check_node_fields(request, body, partial=partial)
    except ApiError as e:
        e.field_errors = True
        raise


def _unique_node_error(e: Conflict) -> ApiError:
    error = conflict(e)
    error.field_errors = True
    return error


def _check_node_fields(request: web.Request, body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    required = not partial
    fields: dict[str, Any] = {}
    for key, check in (("ip", lambda: want_str(body, "ip", required=required)),
                       ("index", lambda: want_int(body, "index", required=required)),
                       ("cpu_mem", lambda: want_int(body, "cpu_mem", required=required)),
                       ("gpu_mem", lambda: want_int(body, "gpu_mem", required=False, nullable=True)),
                       ("driver_version", lambda: want_str(body, "driver_version", required=False,
                                                           nullable=True)),
                       ("hardware_generation", lambda: want_int(body, "hardware_generation",
                                                                required=False, nullable=True))):
        if key in body or required:
            fields[key] = check()
    if fields.get("ip") == "":
        raise ApiError(400, "ip: This field may not be blank.",
                       extra={"ip": ["This field may not be blank."]})
    generation = fields.get("hardware_generation")
    if generation is not None and not store_of(request.app).hardware_exists(generation):
        message = f'Invalid pk "{generation}" - object does not exist.'
        raise ApiError(400, f"hardware_generation: {message}", extra={"hardware_generation": [message]})
    return fields


def _node_or_404(request: web.Request) -> Any:
    row = store_of(request.app).node(pk_of(request))
    if row is None:
        raise ApiError(404, "Not found.")
    return row


async def node_list(request: web.Request) -> web.StreamResponse:
    identify(request)
    query = compiled(await read_json(request), NODES)
    return await stream_list(request, store_of(request.app), NODES, NODE_JSON_SQL, query)


async def node_create(request: web.Request) -> web.Response:
    caller = identify(request)
    fields = _node_fields(request, await read_object(request), partial=False)
    store = store_of(request.app)
    try:
        pk = store.create_node(fields, creator=caller.user_pk)
    except Conflict as e:
        raise _unique_node_error(e) from None
    return web.json_response(store.node_json(store.node(pk)), status=201)  # type: ignore[arg-type]


async def node_retrieve(request: web.Request) -> web.Response:
    identify(request)
    return web.json_response(store_of(request.app).node_json(_node_or_404(request)))


def _may_change_node(request: web.Request) -> Any:
    """Own node (by Node-Id) or staff; anything else is 403."""
    caller = identify(request)
    row = _node_or_404(request)
    if not caller.is_staff and caller.node != row["pk"]:
        raise ApiError(403, "You do not have permission to perform this action.")
    return row


async def node_update(request: web.Request) -> web.Response:
    row = _may_change_node(request)
    fields = _node_fields(request, await read_object(request), partial=request.method == "PATCH")
    store = store_of(request.app)
    try:
        store.update_node(row["pk"], fields)
    except Conflict as e:
        raise _unique_node_error(e) from None
    return web.json_response(store.node_json(store.node(row["pk"])))  # type: ignore[arg-type]


async def node_delete(request: web.Request) -> web.Response:
    row = _may_change_node(request)
    # The real server answers 204 but keeps a node that jobs refer to; so do we.
    store_of(request.app).delete_node(row["pk"])
    return web.Response(status=204)


async def node_ping(request: web.Request) -> web.Response:
    caller = identify(request, node_action=True)
    if caller.node is None and not caller.is_staff:
        raise ApiError(403, "Ping is for a node: send its Node-Id header")
    return web.Response(status=200)
