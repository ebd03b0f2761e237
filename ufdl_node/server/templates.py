"""Routes for job templates: list, retrieve, and import in the real server's migration format.

The real server (``ImportTemplateViewSet`` and ``migrations/job_templates`` in
``waikato-ufdl/ufdl-backend``) makes templates only by import, answering **200** with
the template; ``POST /v1/job-templates/create`` is refused. The body: ``name``,
``version``? (absent: the newest active version + 1; present: an active template of
that name and version is soft-deleted and replaced), ``description``?, ``scope``,
``licence`` by name, ``domain``? as its 2-letter code, and ``specific: {job_type,
executor_class, required_packages, parameters}``. A parameter is ``{types, help,
default?, default_type?, const?}`` with the server's type names; a default must fit its
``default_type`` (default: the first of its types). The template shows ``domain`` as
its code and ``licence`` as the licence's pk; a parameter with a default shows
``default_type`` and ``const``, one without shows neither.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..ufdltypes import UfdlTypeError, contract_type, fits, parse_type
from .common import ApiError, identify, pk_of, read_json, read_object, store_of, want_int, want_str
from .listing import stream_list
from .rowjson import TEMPLATE_JSON_SQL
from .store import TEMPLATES, Conflict
from .views import compiled

# Contracts and the inputs each declares (UFDL-API.md section 4).
CONTRACT_INPUTS: dict[str, tuple[str, ...]] = {"Train": ("dataset",), "Predict": ("model", "dataset"),
                                                "Export": ()}
IMPORT_KEYS = frozenset({"name", "version", "description", "scope", "domain", "licence", "specific"})
SPECIFIC_KEYS = frozenset({"job_type", "executor_class", "required_packages", "parameters"})
PARAMETER_KEYS = frozenset({"types", "help", "default", "default_type", "const"})
SCOPES = ("public", "project", "user")


def contract_inputs(type_: str | None) -> tuple[str, ...]:
    return CONTRACT_INPUTS.get((type_ or "").split("<", 1)[0].strip(), ())


async def template_list(request: web.Request) -> web.StreamResponse:
    identify(request)
    query = compiled(await read_json(request), TEMPLATES)
    return await stream_list(request, store_of(request.app), TEMPLATES, TEMPLATE_JSON_SQL, query)


async def template_retrieve(request: web.Request) -> web.Response:
    identify(request)
    store = store_of(request.app)
    row = store.template(pk_of(request))
    if row is None:
        raise ApiError(404, "Not found.")
    return web.json_response(store.template_json(row))


async def template_create(request: web.Request) -> web.Response:
    """Templates are made by import only: 403 to everyone, as on the real server."""
    identify(request)
    raise ApiError(403, "Job templates are created by import (POST /v1/job-templates/import).")


def _unknown_keys(body: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}",
                       extra={k: ["Unknown field."] for k in unknown})


def _parameter(name: str, spec: Any) -> dict[str, Any]:
    """One parameter as the template keeps it; ApiError 400 naming what is wrong."""
    where = f"specific.parameters.{name}"
    if not isinstance(spec, dict):
        raise ApiError(400, f"{where} must be an object of {{types, help, default?}}")
    _unknown_keys(spec, PARAMETER_KEYS, where)
    types = spec.get("types")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) and t for t in types):
        raise ApiError(400, f"{where}.types must be a non-empty list of type names")
    try:
        parsed = [parse_type(t) for t in types]
    except UfdlTypeError as e:
        raise ApiError(400, f"{where}.types: {e}") from None
    if not isinstance(spec.get("help"), str):
        raise ApiError(400, f"{where}.help: a parameter needs its help text (a string)")
    if "const" in spec and not isinstance(spec["const"], bool):
        raise ApiError(400, f"{where}.const must be true or false")
    kept: dict[str, Any] = {"types": types, "help": spec["help"]}
    if "default" not in spec:
        return kept
    default_type = spec.get("default_type", types[0])
    if default_type not in types:
        raise ApiError(400, f"{where}.default_type {default_type!r} is not one of its types {types}")
    if not fits(parsed[types.index(default_type)], spec["default"]):
        raise ApiError(400, f"{where}.default {spec['default']!r} is not a value of type {default_type}")
    return kept | {"default": spec["default"], "default_type": default_type,
                   "const": bool(spec.get("const", False))}


def _parameters(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ApiError(400, "specific.parameters must be an object of name: {types, help, default?}")
    return {name: _parameter(name, spec) for name, spec in raw.items()}


def _specific(specific: Any) -> dict[str, Any]:
    if not isinstance(specific, dict):
        raise ApiError(400, "specific must be an object")
    _unknown_keys(specific, SPECIFIC_KEYS, "specific")
    job_type = want_str(specific, "job_type")
    try:
        contract_type(job_type)
    except UfdlTypeError as e:
        raise ApiError(400, f"specific.job_type: {e}") from None
    return {"type": job_type, "executor_class": want_str(specific, "executor_class"),
            "required_packages": want_str(specific, "required_packages", required=False, default=""),
            "parameters": _parameters(specific.get("parameters", {}))}


def _common(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    store = store_of(request.app)
    name = want_str(body, "name")
    if not name.strip():
        raise ApiError(400, "name: This field may not be blank.")
    fields: dict[str, Any] = {
        "name": name, "version": want_int(body, "version", required=False, minimum=1),
        "description": want_str(body, "description", required=False, default=""),
        "scope": want_str(body, "scope", required=False, default="public"),
        "licence": want_str(body, "licence")}
    if fields["scope"] not in SCOPES:
        raise ApiError(400, f"scope must be one of {list(SCOPES)}")
    licences = store.licence_names()
    if fields["licence"] not in licences:
        raise ApiError(400, f"licence: unknown licence {fields['licence']!r}; known: {licences}")
    domain = want_str(body, "domain", required=False, nullable=True)
    codes = sorted(store.domain_names())
    if domain is not None and domain not in codes:
        raise ApiError(400, f"domain: unknown data domain {domain!r}; give its code, one of {codes}",
                       extra={"domain": ["Unknown data domain."]})
    fields["domain"] = domain
    return fields


async def template_import(request: web.Request) -> web.Response:
    caller = identify(request)
    caller.require_staff()
    body = await read_object(request)
    _unknown_keys(body, IMPORT_KEYS, "import")
    fields = _common(request, body)
    fields["creator"] = caller.user_pk
    specific = body.get("specific")
    fields["workable"] = specific is not None
    if specific is not None:
        fields.update(_specific(specific))
    store = store_of(request.app)
    try:
        pk = store.import_template(fields)
    except Conflict as e:
        raise ApiError(409, str(e)) from None
    return web.json_response(store.template_json(store.template(pk)))  # type: ignore[arg-type]
