"""Routes for jobs: creation from a template, the lifecycle actions, admin edits, outputs.

Each lifecycle route reads the job, asks ``lifecycle`` what the action does,
applies the change as a compare-and-set (``Store.apply``) and publishes the
transition to the job's web sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import Any

from aiohttp import web

from ..durable import fsync_path
from ..logs import get_logger
from ..settings import ServerSettings
from ..ufdltypes import UfdlTypeError, fits, parse_type
from . import lifecycle
from .common import (
    SETTINGS,
    ApiError,
    Caller,
    identify,
    pk_of,
    read_json,
    read_object,
    receive_body,
    store_of,
    upload_filename,
    want_bool,
    want_str,
)
from .lifecycle import Change, Refusal
from .listing import stream_list
from .rowjson import JOB_JSON_SQL
from .store import JOBS, Conflict, Store, now
from .templates import contract_inputs
from .views import compiled
from .ws import HUB, job_socket, message

log = get_logger("ufdl_node.server.jobs")


def _job_row(request: web.Request) -> Any:
    row = store_of(request.app).job(pk_of(request))
    if row is None:
        raise ApiError(404, "Not found.")
    return row


def _job_json(request: web.Request, pk: int) -> dict[str, Any]:
    store = store_of(request.app)
    return store.job_json(store.job(pk))  # type: ignore[arg-type]


def keeps_outputs(settings: ServerSettings) -> bool:
    """Whether reset and abort keep a job's outputs soft-deleted (the real server's rule)."""
    return settings.outputs_at_reset == "keep" or settings.real_server_quirks


def _remove_files(store: Store, output_pks: list[int]) -> None:
    for pk in output_pks:
        with contextlib.suppress(FileNotFoundError):
            store.output_path(pk).unlink()


async def _apply(request: web.Request, row: Any, outcome: Change | Refusal, node: int | None,
                 data: Any = None) -> web.Response:
    """Answer a refusal, or apply a change, publish its transition and answer the job."""
    if isinstance(outcome, Refusal):
        raise ApiError(outcome.status, outcome.detail, illegal=outcome.illegal)
    app = request.app
    store = store_of(app)
    try:
        removed = store.apply(row["pk"], Store.job_state(row), outcome.job, node=node,
                              current_job=outcome.current_job, drop_outputs=outcome.drop_outputs,
                              soft_drop=keeps_outputs(app[SETTINGS]))
    except Conflict as e:
        raise ApiError(406, str(e)) from None
    _remove_files(store, removed)
    after = store.job(row["pk"])
    assert after is not None
    if outcome.transition is not None:
        # Progress may come every second from every node: keep it out of the info log.
        level = log.debug if outcome.transition == "progress" else log.info
        level("job transition", job_pk=row["pk"], transition=outcome.transition, node=node)
        await app[HUB].publish(row["pk"], message(outcome.transition, after, data))
    return web.json_response(store.job_json(after))


def _node_state(request: web.Request, node: int) -> int | None:
    row = store_of(request.app).node(node)
    return None if row is None else row["current_job"]


# -- reading and admin edits ----------------------------------------------------------------


async def job_list(request: web.Request) -> web.StreamResponse:
    identify(request)
    query = compiled(await read_json(request), JOBS)
    return await stream_list(request, store_of(request.app), JOBS, JOB_JSON_SQL, query)


async def job_retrieve(request: web.Request) -> web.StreamResponse:
    """GET /v1/jobs/{pk}: the job, or its web socket when the request is an upgrade."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await job_socket(request)
    identify(request)
    return web.json_response(store_of(request.app).job_json(_job_row(request)))


async def job_update(request: web.Request) -> web.Response:
    identify(request).require_staff()
    row = _job_row(request)
    body = await read_object(request)
    description = want_str(body, "description", required=request.method == "PUT")
    if description is not None:
        store_of(request.app).update_job(row["pk"], {"description": description})
    return web.json_response(_job_json(request, row["pk"]))


async def job_soft_delete(request: web.Request) -> web.Response:
    identify(request).require_staff()
    row = _job_row(request)
    if row["deletion_time"] is None:
        store_of(request.app).update_job(row["pk"], {"deletion_time": now()})
    return web.Response(status=204)


async def job_reinstate(request: web.Request) -> web.Response:
    identify(request).require_staff()
    row = _job_row(request)
    store_of(request.app).update_job(row["pk"], {"deletion_time": None})
    return web.json_response(_job_json(request, row["pk"]))


async def job_hard_delete(request: web.Request) -> web.Response:
    identify(request).require_staff()
    row = _job_row(request)
    store = store_of(request.app)
    body = store.job_json(row)
    _remove_files(store, store.hard_delete_job(row["pk"]))
    return web.json_response(body)


# -- creating a job from a template -------------------------------------------------------------


def _typed_value(where: str, raw: Any) -> tuple[Any, str]:
    if not isinstance(raw, dict) or set(raw) != {"value", "type"} or not isinstance(raw["type"], str):
        raise ApiError(400, f'{where} must be {{"value": ..., "type": "<type>"}}')
    return raw["value"], raw["type"]


def _fits(type_: str, value: Any) -> bool:
    """Whether a parameter's value is of its type, as far as the type names tell (ufdltypes.fits);
    a type the node cannot read (a template kept from before migration 5) takes anything."""
    try:
        return fits(type_, value)
    except UfdlTypeError:
        return True


def _declared(type_: str, types: list[str]) -> str | None:
    """The declared type that `type_` names, spelt as declared: the real server parses types, so
    spacing does not matter (``Framework<'a','1'>`` is ``Framework<'a', '1'>``); None if none."""
    if type_ in types:
        return type_
    try:
        given = parse_type(type_)
    except UfdlTypeError:
        return None
    for declared in types:
        with contextlib.suppress(UfdlTypeError):
            if parse_type(declared) == given:
                return declared
    return None


def _check_parameters(template: Any, given: dict[str, Any]) -> None:
    """The given parameter values against the template's, in its order, as the real server
    checks them (JobTemplate.check_parameter_values): a missing one without a default is 400,
    a wrong one 406, and the names it does not declare 406 after all its own are checked."""
    declared: dict[str, Any] = Store.template_json(template).get("parameters", {})
    for name, spec in declared.items():
        if name not in given:
            if "default" not in spec:
                raise ApiError(400, f"Required parameter '{name}' is missing")
            continue
        where = f"parameter_values.{name}"
        raw = given[name]
        value, type_ = _typed_value(where, raw)
        declared_type = _declared(type_, spec["types"])
        if declared_type is None:
            raise ApiError(406, f"{where}: type {type_!r} is not one of {spec['types']}")
        raw["type"] = type_ = declared_type  # kept as the template spells it, as the real server does
        if not _fits(type_, value):
            raise ApiError(406, f"{where}: the value is not a {type_}")
        if spec.get("const"):
            raise ApiError(406, f"{where}: the parameter is constant")
    for name in given:
        if name not in declared:
            raise ApiError(406, f"parameter_values.{name}: the template has no parameter {name!r}; "
                                f"known: {sorted(declared)}")


async def create_job(request: web.Request) -> web.Response:
    caller = identify(request)
    store = store_of(request.app)
    template = store.template(pk_of(request))
    if template is None:
        raise ApiError(404, "Not found.")
    if not template["workable"]:
        raise ApiError(400, "Jobs can only be created from a workable template")
    body = await read_object(request)
    unknown = sorted(set(body) - {"input_values", "parameter_values", "description",
                                  "notification_override"})
    if unknown:
        raise ApiError(400, f"create-job: unknown key(s) {unknown}")
    inputs = body.get("input_values", {})
    params = body.get("parameter_values", {})
    if params is None:
        params = {}
    if not isinstance(inputs, dict) or not isinstance(params, dict):
        raise ApiError(400, "input_values and parameter_values must be JSON objects")
    # Inputs come from the contract; undeclared ones are dropped, as the real server does.
    kept = {}
    for name in contract_inputs(template["type"]):
        if name not in inputs:
            raise ApiError(400, f"input_values: missing input {name!r}")
        value, type_ = _typed_value(f"input_values.{name}", inputs[name])
        kept[name] = {"value": value, "type": type_}
    _check_parameters(template, params)
    description = want_str(body, "description", required=False, default="")
    pk = store.create_job(template["pk"], kept, params, description,
                          body.get("notification_override"), caller.user_pk or 0)
    log.info("job created", job_pk=pk, template=template["name"])
    return web.json_response(_job_json(request, pk))


# -- worker actions ----------------------------------------------------------------------------


def _node_caller(request: web.Request) -> tuple[Caller, int]:
    caller = identify(request, node_action=True)
    return caller, caller.require_node()


async def acquire(request: web.Request) -> web.Response:
    _caller, node = _node_caller(request)
    row = _job_row(request)
    return await _apply(request, row, lifecycle.acquire(Store.job_state(row), node), node)


async def start(request: web.Request) -> web.Response:
    _caller, node = _node_caller(request)
    row = _job_row(request)
    want_str(await read_object(request), "send_notification")
    outcome = lifecycle.start(Store.job_state(row), node, _node_state(request, node), now())
    return await _apply(request, row, outcome, node)


async def progress(request: web.Request) -> web.Response:
    _caller, node = _node_caller(request)
    row = _job_row(request)
    data = await read_json(request)
    if data is not None and not isinstance(data, dict):
        raise ApiError(400, "The progress body must be a JSON object")
    amount = float(request.match_info["amount"])
    return await _apply(request, row, lifecycle.progress(Store.job_state(row), node, amount), node, data)


async def finish(request: web.Request) -> web.Response:
    _caller, node = _node_caller(request)
    row = _job_row(request)
    body = await read_object(request)
    want_bool(body, "success")  # required, and ignored, as on the real server
    want_str(body, "send_notification")
    error = want_str(body, "error", required=False)
    outcome = lifecycle.finish(Store.job_state(row), node, _node_state(request, node), row["pk"],
                               error, now())
    return await _apply(request, row, outcome, node)


async def reset(request: web.Request) -> web.Response:
    _caller, node = _node_caller(request)
    row = _job_row(request)
    return await _apply(request, row, lifecycle.reset(Store.job_state(row), node), node)


async def release(request: web.Request) -> web.Response:
    _caller, node = _node_caller(request)
    row = _job_row(request)
    outcome = lifecycle.release(Store.job_state(row), node, _node_state(request, node), row["pk"])
    return await _apply(request, row, outcome, node)


async def abort(request: web.Request) -> web.Response:
    identify(request).require_staff()
    row = _job_row(request)
    return await _apply(request, row, lifecycle.abort(Store.job_state(row)), None)


async def cancel(request: web.Request) -> web.Response:
    identify(request).require_staff()
    row = _job_row(request)
    return await _apply(request, row, lifecycle.cancel(Store.job_state(row)), None)


# -- outputs ---------------------------------------------------------------------------------


def _output_key(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info["type"]


def _output_or_400(request: web.Request, job_pk: int) -> Any:
    name, type_ = _output_key(request)
    row = store_of(request.app).output(job_pk, name, type_)
    if row is None:
        raise ApiError(400, f"Job {job_pk} has no output {name!r} of type {type_!r}")
    return row


async def add_output(request: web.Request) -> web.Response:
    app = request.app
    settings, store = app[SETTINGS], store_of(app)
    caller = identify(request, node_action=True)
    if caller.user is None:
        # The real server fails an anonymous upload with a 500; it never stores it.
        raise ApiError(500, "An output needs an authenticated user", illegal=True)
    row = _job_row(request)
    refusal = lifecycle.add_output(Store.job_state(row), caller.node, caller.is_staff)
    if refusal is not None:
        raise ApiError(refusal.status, refusal.detail)
    if upload_filename(request) is None:
        raise ApiError(400, "Missing filename. Request should include a Content-Disposition header "
                            "with a filename parameter.")
    name, type_ = _output_key(request)
    if store.output(row["pk"], name, type_) is not None:
        raise ApiError(400, f"Job {row['pk']} already has an output {name!r} of type {type_!r}")
    limit = settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"The output is larger than the limit of {limit} bytes")
    # Bytes go to a temporary file first and take their final name (the output's pk) only once
    # the row exists, so a failed or refused upload leaves neither a row nor a file behind.
    temp = store.outputs_dir / f".upload-{uuid.uuid4().hex}.part"

    def place(output_pk: int) -> None:
        os.replace(temp, store.output_path(output_pk))
        fsync_path(store.outputs_dir)  # the new name itself survives a power loss

    try:
        size = await receive_body(request, temp, limit, "output")
        await asyncio.to_thread(fsync_path, temp)
        try:
            # the bytes take their name inside the row's transaction: a crash between the two
            # (a SIGKILL, a power loss) must not leave a row whose bytes are gone
            pk = store.create_output(row["pk"], name, type_, size, caller.user_pk, place=place)
        except Conflict as e:
            raise ApiError(400, str(e)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    log.info("output added", job_pk=row["pk"], output_pk=pk, bytes=size)
    return web.json_response(store.output_json(store.output(row["pk"], name, type_)))  # type: ignore[arg-type]


async def output_info(request: web.Request) -> web.Response:
    identify(request)
    row = _job_row(request)
    return web.json_response(store_of(request.app).output_json(_output_or_400(request, row["pk"])))


async def output_download(request: web.Request) -> web.StreamResponse:
    identify(request)
    row = _job_row(request)
    output = _output_or_400(request, row["pk"])
    path = store_of(request.app).output_path(output["pk"])
    if not path.is_file():
        raise ApiError(404, f"The bytes of output {output['pk']} are missing from the data directory")
    # FileResponse streams the file (sendfile where it can): memory stays flat for any size.
    return web.FileResponse(path, headers={
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'attachment; filename="output-{int(output["pk"])}"'})


async def output_delete(request: web.Request) -> web.Response:
    identify(request).require_staff()
    row = _job_row(request)
    output = _output_or_400(request, row["pk"])
    store = store_of(request.app)
    soft = request.app[SETTINGS].real_server_quirks
    body = store.output_json(output)
    store.delete_output(output["pk"], soft=soft)
    if soft:
        body = store.output_json(store.output(row["pk"], output["name"], output["type"]))  # type: ignore[arg-type]
    else:
        body["deletion_time"] = now()
        _remove_files(store, [output["pk"]])
    return web.json_response(body)
