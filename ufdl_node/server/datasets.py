"""Routes for datasets: list, create, get, files, clear, the archive download.

Same wire format as the real server (UFDL-API.md section 8):

- ``POST /v1/datasets/list`` (filter spec); ``POST /v1/<domain>/datasets/create`` (the
  domain apps: ``/v1/classify``, ``/v1/objdet``, ``/v1/speech``, ``/v1/spectra``) with
  ``project`` and ``licence`` (pks: see ``catalogue.py``) and ``tags`` required,
  ``description`` ("") and ``is_public`` (false) optional, errors as DRF's field errors
  (``{field: [message]}``, plus a one-line ``detail``). The domain comes from the route
  (one in the body is ignored); the record shows it by its name ("Image Classification",
  ...), ``previous_version`` -1. ``POST /v1/datasets/create`` makes a dataset without a
  domain (``domain`` null), which no domain route serves (404). A domain is stored as its
  code ('' for none), as migration 3 stored it;
- ``GET /v1/datasets/{pk}`` with ``files: {name: sha256}``, ``DELETE`` of it
  (a soft delete by its creator or staff, 204), ``DELETE .../clear`` (every label,
  annotation and transcription goes, object-detection file types stay, file metadata
  becomes ""; its files stay; answers the record: the backend's ``ClearDatasetViewSet``,
  which stock predict executors call before labelling);
- ``POST .../files/{name}`` (raw body, ``Content-Disposition`` filename required; the URL
  names the file) → ``{"filename", "handle"}``; ``GET`` of the same path → the bytes;
  ``DELETE`` → the removed file's record. The bytes are fsynced under their final name
  before the file's row commits: a crash never leaves a row without bytes, and what it
  leaves without a row goes at the next start;
- ``POST .../download`` ``{"filetype": "zip"|"tar.gz", "params": {...}}`` → the files at
  the archive's top level, streamed. ``params.annotations_args`` is accepted and ignored,
  as the real server ignores it since 2022 (a worker converts on its own side); any other
  param is a 422 naming it;
- each domain prefix serves the same calls for datasets of its domain only (404 for
  another's). Categories and file metadata are in ``filedata.py``, object-detection
  annotations and speech transcriptions in ``domains.py``.

Ownership is simpler than the real server's teams and projects: a dataset
belongs to the user who created it. Every authenticated user may read every
dataset (workers must); its creator and staff may change it, and so may a node
whose current job has the dataset among its inputs (the real server's
"node execute" permission, with which predict jobs store their predictions),
when that job was created by staff or by the dataset's creator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..durable import fsync_path
from ..logs import get_logger
from . import records_store as rs
from .archive import FILETYPES, Member, stream_archive
from .common import (
    SETTINGS,
    ApiError,
    Caller,
    conflict,
    identify,
    pk_of,
    read_json,
    read_object,
    receive_body,
    served_file,
    store_of,
    upload_filename,
    want_bool,
    want_int,
    want_str,
)
from .filters import Query
from .listing import stream_list
from .recordjson import DATASET_JSON_SQL
from .store import Conflict, Store
from .views import compiled

log = get_logger("ufdl_node.server.datasets")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CREATE_KEYS = frozenset({"name", "version", "description", "project", "licence", "is_public", "domain",
                         "tags"})
DOWNLOAD_KEYS = frozenset({"filetype", "params"})
MAX_NAME_BYTES = 255
MAX_DATASET_NAME = 200  # the real server's CharField length
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def check_file_name(name: str) -> str:
    """A dataset file name: one path segment, so it stays at an archive's top level."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or _CONTROL.search(name) \
            or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise ApiError(400, f"Bad file name {shown!r}: a file name is one path segment of at most "
                            f"{MAX_NAME_BYTES} bytes, without '/', '\\', control characters, "
                            "and not '.' or '..'")
    return name


def _want_text(body: dict[str, Any], key: str, *, default: str | None = None, blank: bool = True,
               max_chars: int | None = None, multiline: bool = False) -> Any:
    value = want_str(body, key, required=default is None, default=default)
    checked = value.replace("\n", "").replace("\t", "") if multiline else value
    if _CONTROL.search(checked) or (not blank and not value.strip()) \
            or (max_chars is not None and len(value) > max_chars):
        limit = "" if max_chars is None else f" of at most {max_chars} characters"
        raise ApiError(400, f"{key}: must be non-blank text{limit} without control characters",
                       extra={key: ["Not a valid string."]})
    return value


def dataset_or_404(request: web.Request, domain: str | None) -> Any:
    """The request's dataset row (without its file list: ``rs.dataset`` has it), or 404."""
    row = rs.dataset_head(store_of(request.app), pk_of(request))
    if row is None or (domain is not None and row["domain"] != domain):
        raise ApiError(404, "Not found.")
    return row


def no_file(dataset: Any, e: KeyError) -> ApiError:
    """The 400 of a label, annotation or metadata call for a file the dataset lacks (KeyError
    naming it), as the real server's domain apps answer it."""
    return ApiError(400, f"Data-set {dataset['pk']} has no file named {e.args[0]!r}")


def _names_dataset(given: Any, dataset: Any) -> bool:
    """Whether an input value names `dataset`: its pk (a number, digits or {"pk": n}),
    its name, or "<name> v<version>"."""
    if isinstance(given, dict):
        given = given.get("pk")
    if isinstance(given, bool):
        return False
    if isinstance(given, int):
        return bool(given == dataset["pk"])
    if not isinstance(given, str):
        return False
    text = given.strip()
    return text in (str(dataset["pk"]), dataset["name"], f"{dataset['name']} v{dataset['version']}")


def _node_works_on(store: Store, node_pk: int, dataset: Any) -> bool:
    """True when the node's current job has this dataset among its inputs, and that job's
    creator may change the dataset: any user may create a job, so without that check one
    could name another's dataset and change it through a node of their own."""
    node = store.node(node_pk)
    job = None if node is None or node["current_job"] is None else store.job(node["current_job"])
    if job is None:
        return False
    creator = None if job["creator"] is None else store.user(job["creator"])
    if creator is None or not (creator["is_staff"] or creator["pk"] == dataset["creator"]):
        return False
    return any(isinstance(value, dict) and _names_dataset(value.get("value"), dataset)
               for value in Store.job_json(job)["input_values"].values())


def dataset_to_change(request: web.Request, domain: str | None) -> Any:
    """The request's dataset, when its caller may change it: 404 without one, 403 when
    it is another user's (staff, or a node working on a job of one who may, may change it)."""
    caller = identify(request)
    dataset = dataset_or_404(request, domain)
    if caller.is_staff or (caller.user_pk is not None and caller.user_pk == dataset["creator"]):
        return dataset
    if caller.node is not None and _node_works_on(store_of(request.app), caller.node, dataset):
        return dataset
    raise ApiError(403, "You do not have permission to change this dataset: it belongs to another user")


# -- list, create, retrieve ------------------------------------------------------------------


def _list(domain: str | None) -> Handler:
    async def dataset_list(request: web.Request) -> web.StreamResponse:
        identify(request)
        query = compiled(await read_json(request), rs.DATASETS)
        if domain is not None:
            query = Query(where=f"({query.where}) AND d.domain = ?", order=query.order,
                          params=[*query.params, domain])
        # Built off the event loop, as job lists are: a list of many datasets must not stall it.
        return await stream_list(request, store_of(request.app), rs.DATASETS, DATASET_JSON_SQL, query)
    return dataset_list


def _fk(store: Store, body: dict[str, Any], key: str, table: str, errors: dict[str, list[str]]) -> Any:
    """A required foreign key given as a pk (DRF's PrimaryKeyRelatedField): a name, or a pk
    that names nothing, is a field error."""
    if key not in body:
        errors[key] = ["This field is required."]
        return None
    raw = body[key]
    if isinstance(raw, bool) or not isinstance(raw, int):
        errors[key] = [f"Incorrect type. Expected pk value, received {type(raw).__name__}."]
        return None
    # Table names come from this module, never from a request.
    deleted = " AND deletion_time IS NULL" if table == "projects" else ""
    if not 0 < raw <= 2**63 - 1 or store.db.execute(
            f"SELECT 1 FROM {table} WHERE pk = ?{deleted}", (raw,)).fetchone() is None:
        errors[key] = [f'Invalid pk "{raw}" - object does not exist.']
        return None
    return raw


def _field(errors: dict[str, list[str]], read: Callable[[], Any]) -> Any:
    try:
        return read()
    except ApiError as e:
        errors.update({k: v for k, v in e.extra.items() if isinstance(v, list)}
                      or {"non_field_errors": [e.detail]})
        return None


def _create_fields(request: web.Request, body: dict[str, Any], caller: Caller,
                   domain: str | None) -> dict[str, Any]:
    """The row of a create, checked as the real server's DatasetSerialiser checks it: project,
    licence (pks) and tags required; the domain comes from the route, never the body. Every
    field error at once, DRF-style ({field: [message]}), with a one-line detail."""
    unknown = sorted(set(body) - CREATE_KEYS)
    if unknown:
        raise ApiError(400, f"create: unknown key(s) {unknown}; allowed: {sorted(CREATE_KEYS)}",
                       extra={k: ["Unknown field."] for k in unknown})
    store = store_of(request.app)
    errors: dict[str, list[str]] = {}
    fields = {
        "name": _field(errors, lambda: _want_text(body, "name", blank=False, max_chars=MAX_DATASET_NAME)),
        "version": _field(errors, lambda: want_int(body, "version", required=False, minimum=1)) or 1,
        "description": _field(errors, lambda: _want_text(body, "description", default="", multiline=True)),
        "project": _fk(store, body, "project", "projects", errors),
        "licence": _fk(store, body, "licence", "licences", errors),
        "is_public": int(bool(_field(errors, lambda: want_bool(body, "is_public")
                                     if "is_public" in body else False))),
        "previous_version": -1, "domain": domain or "",
        "tags": _field(errors, lambda: _want_text(body, "tags")),
        "creator": caller.user_pk}
    if errors:
        detail = "; ".join(f"{key}: {messages[0]}" for key, messages in sorted(errors.items()))
        error = ApiError(400, detail, extra=errors)
        error.field_errors = True  # in quirks mode, the field errors alone, as the real server sends
        raise error
    return fields


def _create(domain: str | None) -> Handler:
    async def dataset_create(request: web.Request) -> web.Response:
        caller = identify(request)
        fields = _create_fields(request, await read_object(request), caller, domain)
        store = store_of(request.app)
        try:
            pk = rs.create_dataset(store, fields)
        except Conflict as e:
            raise conflict(e) from None
        log.info("dataset created", dataset_pk=pk, domain=fields["domain"])
        return web.json_response(rs.dataset_json(rs.dataset(store, pk)), status=201)  # type: ignore[arg-type]
    return dataset_create


def _retrieve(domain: str | None) -> Handler:
    async def dataset_retrieve(request: web.Request) -> web.Response:
        identify(request)
        row = dataset_or_404(request, domain)
        return web.json_response(rs.dataset_json(rs.dataset(store_of(request.app), row["pk"])))  # type: ignore[arg-type]
    return dataset_retrieve


def _delete(domain: str | None) -> Handler:
    async def dataset_delete(request: web.Request) -> web.Response:
        """A soft delete, as on the real server: the dataset leaves lists unless include_inactive."""
        caller = identify(request)
        dataset = dataset_or_404(request, domain)
        if not (caller.is_staff or caller.user_pk == dataset["creator"]):
            raise ApiError(403, "You do not have permission to delete this dataset: "
                                "it belongs to another user")
        rs.soft_delete_dataset(store_of(request.app), dataset["pk"])
        return web.Response(status=204)
    return dataset_delete


def _clear(domain: str | None) -> Handler:
    async def dataset_clear(request: web.Request) -> web.Response:
        """DELETE .../clear: remove the dataset's annotations and file metadata, keep its files."""
        dataset = dataset_to_change(request, domain)
        store = store_of(request.app)
        rs.clear_annotations(store, dataset["pk"])
        log.info("dataset annotations cleared", dataset_pk=dataset["pk"])
        return web.json_response(rs.dataset_json(rs.dataset(store, dataset["pk"])))  # type: ignore[arg-type]
    return dataset_clear


# -- files -------------------------------------------------------------------------------------


def _file_json(name: str, sha256: str) -> dict[str, Any]:
    # The real server's NamedFile record; our "handle" is the content's sha256.
    return {"filename": name, "handle": sha256}


async def _store_file(store: Store, dataset_pk: int, name: str, request: web.Request) -> tuple[int, str, int]:
    """Receive the body and give it a row: (file pk, sha256, size).

    The bytes are complete, fsynced and under their final name (the file's pk, a new one: a
    name is never reused, so no older file's bytes are touched) before the row commits, inside
    its transaction: a crash at any point leaves a row with its bytes, or no row (stray bytes
    and temporary files go at the next start). A failure removes what it had written.
    """
    max_bytes = request.app[SETTINGS].max_upload_bytes
    temp = rs.datasets_dir(store) / f".upload-{uuid.uuid4().hex}.part"
    placed: list[Path] = []

    def place(file_pk: int) -> None:
        final = rs.file_path(store, file_pk)
        os.replace(temp, final)
        placed.append(final)
        fsync_path(final.parent)  # the new name itself survives a power loss

    try:
        digest = hashlib.sha256()
        size = await receive_body(request, temp, max_bytes, "file", digest)
        if size == 0:
            raise _empty_file(request)
        await asyncio.to_thread(fsync_path, temp)
        sha256 = digest.hexdigest()
        try:
            return rs.add_file(store, dataset_pk, name, sha256, size, place=place), sha256, size
        except BaseException:
            for path in placed:  # the row did not commit: its bytes must not stay
                path.unlink(missing_ok=True)
            raise
    except Conflict as e:
        raise ApiError(400, str(e)) from None
    except ConnectionResetError:  # the client went away: nothing to answer
        raise
    except OSError as e:
        log.error("dataset file not stored", dataset_pk=dataset_pk, error=str(e))
        raise ApiError(500, f"The file's bytes could not be stored: {e.strerror or type(e).__name__}") \
            from None
    finally:
        temp.unlink(missing_ok=True)


def _empty_file(request: web.Request) -> ApiError:
    """The real server cannot store a 0-byte file: its parser gives the view no file and it
    answers 500 (``KeyError: 'file'``); here a 400 that says so (the 500 with quirks)."""
    if request.app[SETTINGS].real_server_quirks:
        return ApiError(500, "KeyError: 'file'", illegal=True)
    return ApiError(400, "The file is empty: a UFDL server cannot store an empty dataset file")


def _add_file(domain: str | None) -> Handler:
    async def dataset_add_file(request: web.Request) -> web.Response:
        store = store_of(request.app)
        dataset = dataset_to_change(request, domain)
        name = check_file_name(request.match_info["name"])
        if upload_filename(request) is None:
            raise ApiError(400, "Missing filename. Request should include a Content-Disposition header "
                                "with a filename parameter.")
        if rs.dataset_file(store, dataset["pk"], name) is not None:
            raise ApiError(400, f"The dataset already has a file named {name!r}")
        limit = request.app[SETTINGS].max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"The file is larger than the limit of {limit} bytes")
        if request.content_length == 0:
            raise _empty_file(request)
        file_pk, sha256, size = await _store_file(store, dataset["pk"], name, request)
        log.info("dataset file added", dataset_pk=dataset["pk"], file_pk=file_pk, bytes=size)
        return web.json_response(_file_json(name, sha256))
    return dataset_add_file


def _file_or_404(request: web.Request, dataset: Any) -> Any:
    name = check_file_name(request.match_info["name"])
    row = rs.dataset_file(store_of(request.app), dataset["pk"], name)
    if row is None:
        raise ApiError(404, f"Dataset {dataset['pk']} has no file named {name!r}")
    return row


def _get_file(domain: str | None) -> Handler:
    async def dataset_get_file(request: web.Request) -> web.StreamResponse:
        identify(request)
        file = _file_or_404(request, dataset_or_404(request, domain))
        pk = int(file["pk"])
        return await served_file(rs.file_path(store_of(request.app), pk), f"dataset file {pk}", f"file-{pk}")
    return dataset_get_file


def _delete_file(domain: str | None) -> Handler:
    async def dataset_delete_file(request: web.Request) -> web.Response:
        dataset = dataset_to_change(request, domain)
        file = _file_or_404(request, dataset)
        store = store_of(request.app)
        rs.delete_file(store, file["pk"])
        with contextlib.suppress(FileNotFoundError):
            rs.file_path(store, file["pk"]).unlink()
        return web.json_response(_file_json(file["name"], file["sha256"]))
    return dataset_delete_file


# -- the archive ---------------------------------------------------------------------------------


def _download_options(body: dict[str, Any]) -> str:
    """The filetype of a download's body. ``params.annotations_args`` is accepted and ignored,
    as the real server ignores it; any other param is a 422 naming it."""
    unknown = sorted(set(body) - DOWNLOAD_KEYS)
    if unknown:
        raise ApiError(400, f"download: unknown key(s) {unknown}; allowed: {sorted(DOWNLOAD_KEYS)}")
    params = body.get("params", {})
    # As the real server checks them: a mapping from strings to strings or arrays of strings.
    if not isinstance(params, dict) or not all(
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
            for v in params.values()):
        raise ApiError(400, "params: must be a mapping from strings to strings/arrays of strings")
    other = sorted(set(params) - {"annotations_args"})
    if other:
        raise ApiError(422, f"Unknown download parameter(s) {other}: only annotations_args is "
                            "taken (and ignored: the archive holds the raw files)")
    filetype = body.get("filetype", "zip")
    if not isinstance(filetype, str):
        raise ApiError(400, "filetype: must be a string")
    if filetype not in FILETYPES:
        raise ApiError(415, f'Unsupported media type "{filetype[:40]}" in request. '
                            f"Supported: {list(FILETYPES)}")
    return filetype


def _members(store: Store, dataset: Any) -> list[Member]:
    """The archive's members: every file, at its top level."""
    files = rs.dataset_files(store, dataset["pk"])
    missing = [f["name"] for f in files if not rs.file_path(store, f["pk"]).is_file()]
    if missing:
        raise ApiError(500, f"The bytes of {len(missing)} file(s) of dataset {dataset['pk']} are "
                            f"missing from the data directory (first: {missing[0]!r})")
    return [Member(f["name"], rs.file_path(store, f["pk"]), f["size"]) for f in files]


def _archive_name(dataset: Any, filetype: str) -> str:
    # The name goes into a header: anything but printable ASCII (and quotes) becomes "_".
    return _HEADER_UNSAFE.sub("_", f"{dataset['name']}.v{dataset['version']}.{filetype}")


def _download(domain: str | None) -> Handler:
    async def dataset_download(request: web.Request) -> web.StreamResponse:
        identify(request)
        dataset = dataset_or_404(request, domain)
        filetype = _download_options(await read_object(request, required=False))
        members = _members(store_of(request.app), dataset)
        response = web.StreamResponse(headers={
            "Content-Type": "application/data",
            "Content-Disposition": f'attachment; filename="{_archive_name(dataset, filetype)}"'})
        await response.prepare(request)
        # aclosing: a client that goes away mid-download stops the archive thread at once.
        async with contextlib.aclosing(stream_archive(filetype, members)) as chunks:
            try:
                async for chunk in chunks:
                    await response.write(chunk)
            except Exception as e:
                if isinstance(e, ConnectionResetError):  # the client went away
                    raise
                log.error("dataset archive cut short", dataset_pk=dataset["pk"], error=str(e))
                # The status line is gone already: only a broken connection tells the client
                # that the archive is incomplete (aiohttp closes it on this error).
                raise ConnectionResetError("the archive could not be completed") from e
        await response.write_eof()
        return response
    return dataset_download


def _download_get(domain: str | None) -> Handler:
    async def dataset_download_get(request: web.Request) -> web.Response:
        identify(request)
        if request.app[SETTINGS].real_server_quirks:
            raise ApiError(500, "The download is a POST", illegal=True)
        raise web.HTTPMethodNotAllowed("GET", ["POST"])
    return dataset_download_get


# -- routes and startup --------------------------------------------------------------------------


def _routes(prefix: str, domain: str | None) -> list[tuple[str, str, Handler]]:
    pk = prefix + r"/{pk:\d+}"
    # `.+` so that a name with "/" reaches the check (a clear 400) rather than failing to route
    file = pk + "/files/{name:.+}"
    return [("POST", prefix + "/list", _list(domain)), ("POST", prefix + "/create", _create(domain)),
            ("GET", pk, _retrieve(domain)), ("DELETE", pk, _delete(domain)),
            ("DELETE", pk + "/clear", _clear(domain)),
            ("POST", file, _add_file(domain)), ("GET", file, _get_file(domain)),
            ("DELETE", file, _delete_file(domain)),
            ("POST", pk + "/download", _download(domain)), ("GET", pk + "/download", _download_get(domain))]


# Each domain app's prefix on the real server, by the domain's code.
DOMAIN_PREFIXES = {"ic": "/v1/classify/datasets", "od": "/v1/objdet/datasets",
                   "sp": "/v1/speech/datasets", "sc": "/v1/spectra/datasets"}
ROUTES: list[tuple[str, str, Handler]] = [
    *_routes("/v1/datasets", None),
    *(route for code, prefix in DOMAIN_PREFIXES.items() for route in _routes(prefix, code)),
]


async def on_startup(app: web.Application) -> None:
    """Make the dataset directory, and drop what a crash left: uploads cut short, and bytes
    that took their name while their row's transaction was open (it never committed)."""
    store = store_of(app)
    directory = rs.datasets_dir(store)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".upload-*.part"):
        stale.unlink(missing_ok=True)
    known = rs.file_pks(store)
    for path in directory.iterdir():
        # Only names this module gives bytes (digits) are candidates: nothing else is touched.
        if path.name.isascii() and path.name.isdigit() and int(path.name) not in known and path.is_file():
            log.warning("dataset bytes without a row removed", file=path.name)
            path.unlink(missing_ok=True)
