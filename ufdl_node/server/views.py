"""Routes for authentication, nodes, hardware generations and job templates."""

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
from .rowjson import HARDWARE_JSON_SQL, NODE_JSON_SQL, TEMPLATE_JSON_SQL
from .store import HARDWARE_RESOURCE, NODES, TEMPLATES, Conflict

# Contracts and the inputs each declares (UFDL-API.md section 4).
CONTRACT_INPUTS: dict[str, tuple[str, ...]] = {"Train": ("dataset",), "Predict": ("model", "dataset"),
                                                "Export": ()}
IMPORT_KEYS = frozenset({"name", "version", "description", "scope", "domain", "licence", "framework",
                         "specific"})
SPECIFIC_KEYS = frozenset({"job_type", "executor_class", "required_packages", "parameters"})
PARAMETER_KEYS = frozenset({"types", "help", "default", "default_type", "const"})
SCOPES = ("public", "project", "user")


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


# -- job templates ------------------------------------------------------------------------


async def template_list(request: web.Request) -> web.StreamResponse:
    identify(request)
    query = compiled(await read_json(request), TEMPLATES)
    return await stream_list(request, store_of(request.app), TEMPLATES, TEMPLATE_JSON_SQL, query)


def _template_or_404(request: web.Request) -> Any:
    row = store_of(request.app).template(pk_of(request))
    if row is None:
        raise ApiError(404, "Not found.")
    return row


async def template_retrieve(request: web.Request) -> web.Response:
    identify(request)
    return web.json_response(store_of(request.app).template_json(_template_or_404(request)))


def _unknown_keys(body: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}",
                       extra={k: ["Unknown field."] for k in unknown})


def _parameters(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ApiError(400, "specific.parameters must be an object of name: {types, help, default?}")
    for name, spec in raw.items():
        where = f"specific.parameters.{name}"
        if not isinstance(spec, dict):
            raise ApiError(400, f"{where} must be an object")
        _unknown_keys(spec, PARAMETER_KEYS, where)
        types = spec.get("types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) and t for t in types):
            raise ApiError(400, f"{where}.types must be a non-empty list of type names")
        if "help" in spec and not isinstance(spec["help"], str):
            raise ApiError(400, f"{where}.help must be a string")
        if "default_type" in spec and spec["default_type"] not in types:
            raise ApiError(400, f"{where}.default_type must be one of its types")
        if "const" in spec and not isinstance(spec["const"], bool):
            raise ApiError(400, f"{where}.const must be true or false")
    return raw


def _contract(job_type: str, domain: str | None, framework: Any) -> str:
    base = job_type.split("<", 1)[0].strip()
    if base not in CONTRACT_INPUTS:
        raise ApiError(400, f"specific.job_type: unknown contract {base!r}; "
                            f"known: {sorted(CONTRACT_INPUTS)}")
    if "<" in job_type:
        return job_type
    args = []
    if domain is not None:
        args.append(f"Domain<'{domain}'>")
    if framework is not None:
        args.append(f"Framework<'{framework['name']}', '{framework['version']}'>")
    return f"{base}<{', '.join(args)}>" if args else base


def contract_inputs(type_: str | None) -> tuple[str, ...]:
    return CONTRACT_INPUTS.get((type_ or "").split("<", 1)[0].strip(), ())


async def template_import(request: web.Request) -> web.Response:
    caller = identify(request)
    caller.require_staff()
    body = await read_object(request)
    _unknown_keys(body, IMPORT_KEYS, "import")
    store = store_of(request.app)
    name = want_str(body, "name")
    if not name.strip():
        raise ApiError(400, "name: This field may not be blank.")
    fields: dict[str, Any] = {
        "name": name, "version": want_int(body, "version", required=False, minimum=1) or 1,
        "description": want_str(body, "description", required=False, default=""),
        "scope": want_str(body, "scope", required=False, default="public"),
        "licence": want_str(body, "licence"), "creator": caller.user_pk}
    if fields["scope"] not in SCOPES:
        raise ApiError(400, f"scope must be one of {list(SCOPES)}")
    licences = store.licence_names()
    if fields["licence"] not in licences:
        raise ApiError(400, f"licence: unknown licence {fields['licence']!r}; known: {licences}")
    domain = want_str(body, "domain", required=False, nullable=True)
    if domain is not None:
        domains = store.domain_names()
        if domain not in domains and domain not in domains.values():
            raise ApiError(400, f"domain: unknown domain {domain!r}; known: {sorted(domains.values())}")
        domain = domains.get(domain, domain)
    fields["domain"] = domain
    framework = body.get("framework")
    if framework is not None and not (isinstance(framework, dict) and set(framework) == {"name", "version"}
                                      and all(isinstance(v, str) for v in framework.values())):
        raise ApiError(400, 'framework must be {"name": str, "version": str}')
    specific = body.get("specific")
    fields["workable"] = specific is not None
    if specific is not None:
        if not isinstance(specific, dict):
            raise ApiError(400, "specific must be an object")
        _unknown_keys(specific, SPECIFIC_KEYS, "specific")
        job_type = want_str(specific, "job_type")
        fields.update(type=_contract(job_type, domain, framework),
                      executor_class=want_str(specific, "executor_class"),
                      required_packages=want_str(specific, "required_packages", required=False,
                                                 default=""),
                      parameters=_parameters(specific.get("parameters", {})))
    try:
        pk = store.create_template(fields)
    except Conflict as e:
        raise conflict(e) from None
    return web.json_response(store.template_json(store.template(pk)), status=201)  # type: ignore[arg-type]
