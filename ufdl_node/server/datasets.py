"""Routes for datasets: list, create, get, files, the archive download, image-classification categories.

Same wire format as the real server (UFDL-API.md section 8):

- ``POST /v1/datasets/list`` (filter spec), ``POST /v1/datasets/create``,
  ``GET /v1/datasets/{pk}`` with ``files: {name: sha256}``, ``DELETE`` of it
  (a soft delete by its creator or staff, 204), ``DELETE .../clear`` (its
  annotations go, its files stay; answers the record: the backend's
  ``ClearDatasetViewSet``, which stock predict executors call before labelling);
- ``POST /v1/datasets/{pk}/files/{name}`` (raw body, ``Content-Disposition``
  filename required as for outputs) → ``{"filename", "handle"}``; ``GET`` of
  the same path → the bytes; ``DELETE`` → the removed file's record. The bytes are
  fsynced under their final name before the file's row commits: a crash never leaves a
  row without bytes, and what it leaves without a row goes at the next start;
- ``POST /v1/datasets/{pk}/download`` ``{"filetype": "zip"|"tar.gz", "params":
  {...}}`` → the files at the archive's top level, streamed; with
  ``params.annotations_args`` (a wai.annotations command line), converted as the
  real server converts them, for the subset in ``annotations.py`` (image
  classification: ``write-labels``, ``to-subdir-ic`` with splits, ``to-images-ic``),
  and a 400 naming what is outside it (another stage or option, another domain);
- under ``/v1/classify/datasets`` the same calls for image-classification
  datasets only, plus ``GET .../categories`` → ``{file: [category, ...]}`` and
  ``PATCH .../categories`` ``{"method": "add"|"remove", "images": [...],
  "categories": [...]}`` → just the changes made (the current backend's
  ``CategoriesViewSet.modify_categories``, which the TypeScript client calls).
  The Python client (``add_categories``/``remove_categories``, used by the
  stock job launcher) sends ``{"images", "categories"}`` with POST to add and
  DELETE to remove: both are accepted too, with the same answer.

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
from .annotations import UnsupportedAnnotations, plan
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
    store_of,
    stored_file,
    upload_filename,
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
IC = "ic"
CREATE_KEYS = frozenset({"name", "version", "description", "project", "licence", "is_public", "domain",
                         "tags"})
DOWNLOAD_KEYS = frozenset({"filetype", "params"})
CATEGORY_KEYS = frozenset({"method", "images", "categories"})
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


def _dataset_or_404(request: web.Request, domain: str | None) -> Any:
    row = rs.dataset(store_of(request.app), pk_of(request))
    if row is None or (domain is not None and row["domain"] != domain):
        raise ApiError(404, "Not found.")
    return row


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


def _dataset_to_change(request: web.Request, domain: str | None) -> Any:
    """The request's dataset, when its caller may change it: 404 without one, 403 when
    it is another user's (staff, or a node working on a job of one who may, may change it)."""
    caller = identify(request)
    dataset = _dataset_or_404(request, domain)
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


def _licence(store: Store, raw: Any) -> int | None:
    if raw is None:
        return None
    rows = list(store.db.execute("SELECT pk, name FROM licences ORDER BY pk"))
    for pk, name in rows:
        if (raw == pk and not isinstance(raw, bool)) \
                or (isinstance(raw, str) and raw.lower() == name.lower()):
            return int(pk)
    raise ApiError(400, f"licence: unknown licence {raw!r}; known: {[r[1] for r in rows]}",
                   extra={"licence": ["Unknown licence."]})


def _domain(store: Store, body: dict[str, Any], fixed: str | None) -> str:
    domains = store.domain_names()
    raw = body.get("domain", fixed)
    code = next((c for c, name in domains.items() if raw in (c, name)), None)
    if code is None or (fixed is not None and code != fixed):
        allowed = [fixed] if fixed is not None else sorted(domains)
        raise ApiError(400, f"domain: must be one of {allowed} (or its full name), not {raw!r}",
                       extra={"domain": ["Unknown domain."]})
    return code


def _create_fields(request: web.Request, body: dict[str, Any], caller: Caller,
                   domain: str | None) -> dict[str, Any]:
    unknown = sorted(set(body) - CREATE_KEYS)
    if unknown:
        raise ApiError(400, f"create: unknown key(s) {unknown}; allowed: {sorted(CREATE_KEYS)}",
                       extra={k: ["Unknown field."] for k in unknown})
    store = store_of(request.app)
    is_public = body.get("is_public", False)
    if not isinstance(is_public, bool):
        raise ApiError(400, "is_public: Must be a valid boolean.",
                       extra={"is_public": ["Must be a valid boolean."]})
    return {"name": _want_text(body, "name", blank=False, max_chars=MAX_DATASET_NAME),
            "version": want_int(body, "version", required=False, minimum=1) or 1,
            "description": _want_text(body, "description", default="", multiline=True),
            "project": want_int(body, "project", required=False, nullable=True),
            "licence": _licence(store, body.get("licence")), "is_public": int(is_public),
            "domain": _domain(store, body, domain), "tags": _want_text(body, "tags", default=""),
            "creator": caller.user_pk}


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
        return web.json_response(rs.dataset_json(_dataset_or_404(request, domain)))
    return dataset_retrieve


def _delete(domain: str | None) -> Handler:
    async def dataset_delete(request: web.Request) -> web.Response:
        """A soft delete, as on the real server: the dataset leaves lists unless include_inactive."""
        caller = identify(request)
        dataset = _dataset_or_404(request, domain)
        if not (caller.is_staff or caller.user_pk == dataset["creator"]):
            raise ApiError(403, "You do not have permission to delete this dataset: "
                                "it belongs to another user")
        rs.soft_delete_dataset(store_of(request.app), dataset["pk"])
        return web.Response(status=204)
    return dataset_delete


def _clear(domain: str | None) -> Handler:
    async def dataset_clear(request: web.Request) -> web.Response:
        """DELETE .../clear: remove the dataset's annotations (its categories), keep its files."""
        dataset = _dataset_to_change(request, domain)
        store = store_of(request.app)
        rs.clear_categories(store, dataset["pk"])
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


def _add_file(domain: str | None) -> Handler:
    async def dataset_add_file(request: web.Request) -> web.Response:
        store = store_of(request.app)
        dataset = _dataset_to_change(request, domain)
        name = check_file_name(request.match_info["name"])
        if upload_filename(request) is None:
            raise ApiError(400, "Missing filename. Request should include a Content-Disposition header "
                                "with a filename parameter.")
        if rs.dataset_file(store, dataset["pk"], name) is not None:
            raise ApiError(400, f"The dataset already has a file named {name!r}")
        limit = request.app[SETTINGS].max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"The file is larger than the limit of {limit} bytes")
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
        file = _file_or_404(request, _dataset_or_404(request, domain))
        pk = int(file["pk"])
        return stored_file(rs.file_path(store_of(request.app), pk), f"dataset file {pk}", f"file-{pk}")
    return dataset_get_file


def _delete_file(domain: str | None) -> Handler:
    async def dataset_delete_file(request: web.Request) -> web.Response:
        dataset = _dataset_to_change(request, domain)
        file = _file_or_404(request, dataset)
        store = store_of(request.app)
        rs.delete_file(store, file["pk"])
        with contextlib.suppress(FileNotFoundError):
            rs.file_path(store, file["pk"]).unlink()
        return web.json_response(_file_json(file["name"], file["sha256"]))
    return dataset_delete_file


# -- the archive ---------------------------------------------------------------------------------


def _download_options(body: dict[str, Any]) -> tuple[str, list[str]]:
    """The filetype and the annotations_args of a download's body."""
    unknown = sorted(set(body) - DOWNLOAD_KEYS)
    if unknown:
        raise ApiError(400, f"download: unknown key(s) {unknown}; allowed: {sorted(DOWNLOAD_KEYS)}")
    params = body.get("params", {})
    # As the real server checks them: a mapping from strings to strings or arrays of strings.
    if not isinstance(params, dict) or not all(
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
            for v in params.values()):
        raise ApiError(400, "params: must be a mapping from strings to strings/arrays of strings")
    args = params.get("annotations_args", [])
    if not isinstance(args, list):
        raise ApiError(400, "params: annotations_args must be an array of strings (a wai.annotations "
                            "command line, one argument each)")
    filetype = body.get("filetype", "zip")
    if not isinstance(filetype, str):
        raise ApiError(400, "filetype: must be a string")
    if filetype not in FILETYPES:
        raise ApiError(415, f'Unsupported media type "{filetype[:40]}" in request. '
                            f"Supported: {list(FILETYPES)}")
    return filetype, args


async def _members(store: Store, dataset: Any, args: list[str]) -> list[Member]:
    """The archive's members: the files at its top level, or where annotations_args put them."""
    files = rs.dataset_files(store, dataset["pk"])
    missing = [f["name"] for f in files if not rs.file_path(store, f["pk"]).is_file()]
    if missing:
        raise ApiError(500, f"The bytes of {len(missing)} file(s) of dataset {dataset['pk']} are "
                            f"missing from the data directory (first: {missing[0]!r})")
    if not args:
        return [Member(f["name"], rs.file_path(store, f["pk"]), f["size"]) for f in files]
    try:
        # Pure work over every file name: in a thread, so that a big dataset leaves the loop free.
        layout = await asyncio.to_thread(
            plan, args, dataset["domain"], store.domain_names().get(dataset["domain"], "?"),
            [f["name"] for f in files], rs.categories(store, dataset["pk"]))
    except UnsupportedAnnotations as e:
        raise ApiError(400, str(e)) from None
    placed = [Member(layout.paths[f["name"]], rs.file_path(store, f["pk"]), f["size"])
              for f in files if f["name"] in layout.paths]
    return [*placed, *(Member.made(name, data) for name, data in layout.generated.items())]


def _archive_name(dataset: Any, filetype: str) -> str:
    # The name goes into a header: anything but printable ASCII (and quotes) becomes "_".
    return _HEADER_UNSAFE.sub("_", f"{dataset['name']}.v{dataset['version']}.{filetype}")


def _download(domain: str | None) -> Handler:
    async def dataset_download(request: web.Request) -> web.StreamResponse:
        identify(request)
        dataset = _dataset_or_404(request, domain)
        filetype, args = _download_options(await read_object(request, required=False))
        members = await _members(store_of(request.app), dataset, args)
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


# -- image-classification categories ----------------------------------------------------------


def _string_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and s for s in value) \
            or len(set(value)) != len(value):
        raise ApiError(400, f"{key}: must be a non-empty list of distinct non-empty strings",
                       extra={key: ["Not a valid list."]})
    return value


async def categories_get(request: web.Request) -> web.Response:
    identify(request)
    dataset = _dataset_or_404(request, IC)
    return web.json_response(rs.categories(store_of(request.app), dataset["pk"]))


def _categories_change(fixed: str | None) -> Handler:
    """PATCH {"method", "images", "categories"} (the backend's current form), or the python
    client's older calls: POST {"images", "categories"} adds, DELETE with that body removes."""
    allowed = CATEGORY_KEYS if fixed is None else CATEGORY_KEYS - {"method"}

    async def categories_modify(request: web.Request) -> web.Response:
        dataset = _dataset_to_change(request, IC)
        body = await read_object(request)
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ApiError(400, f"categories: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        method = fixed or body.get("method")
        if method not in ("add", "remove"):
            raise ApiError(400, 'method: must be "add" or "remove"',
                           extra={"method": ["Not a valid choice."]})
        images, labels = _string_list(body, "images"), _string_list(body, "categories")
        try:
            changes = rs.modify_categories(store_of(request.app), dataset["pk"], images, labels,
                                           add=method == "add")
        except KeyError as e:
            raise ApiError(400, f"Data-set has no image with this name: {e.args[0]!r}") from None
        log.info("categories changed", dataset_pk=dataset["pk"], method=method,
                 files=len(changes))
        return web.json_response(changes)
    return categories_modify


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


_CATEGORIES = r"/v1/classify/datasets/{pk:\d+}/categories"
ROUTES: list[tuple[str, str, Handler]] = [
    *_routes("/v1/datasets", None),
    *_routes("/v1/classify/datasets", IC),
    ("GET", _CATEGORIES, categories_get),
    ("PATCH", _CATEGORIES, _categories_change(None)),
    ("POST", _CATEGORIES, _categories_change("add")),
    ("DELETE", _CATEGORIES, _categories_change("remove")),
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
