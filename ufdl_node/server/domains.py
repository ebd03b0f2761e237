"""Routes of the object-detection and speech domain apps (UFDL-API.md section 8).

Object detection (``/v1/objdet/datasets``, the backend's ufdl-object-detection-app). A
file's annotations live in a container that its file type makes: ``POST
.../file-type/{file}`` ``{"format", "dimensions": [w, h], "length"?}`` (once: a second is a 400),
``GET`` of it (400 before). Per file, ``POST .../annotations/{file}`` replaces the list,
``PATCH`` appends to it, ``DELETE`` empties it (each answers ``{}``; 400 before the file
has a type) and ``GET`` reads it (``[]`` before). For all files, ``POST .../annotations``
``{file: {"format"?, "dimensions"?, "length"?, "annotations": [...]}}`` sets the named files'
(every other file's are emptied; a type given for a file that has one is ignored, as the real
server does), ``GET`` answers that shape for every file with a type, ``DELETE`` empties them
all. ``GET .../file-types`` answers every
file's type; ``GET .../labels`` and ``.../prefixes`` list what the annotations use. An
annotation is ``{x, y, width, height, label, prefix ("Object" when left out), polygon?}``.

Videos (the real server's ``Video`` and ``VideoAnnotation``): a file type with ``length``
(seconds, a number >= 0) makes a video's container; each of its annotations carries
``time`` (seconds >= 0, not checked against the length), an image's none. An annotation
that does not fit its file's kind is a 400, as on the real server, which has by then
emptied the file's list (its adds are not one transaction); here nothing changes.

Speech (``/v1/speech/datasets``, ufdl-speech-app): ``POST .../transcriptions/{file}``
``{"transcription"}`` sets it and echoes it, ``GET`` of it answers it (``{}`` before), ``GET
.../transcriptions`` → ``{file: {"transcription"}}``. A file the dataset lacks is a 400.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..logs import get_logger
from . import domain_store as ds
from .common import ApiError, identify, read_json, store_of
from .datasets import DOMAIN_PREFIXES, Handler, dataset_or_404, dataset_to_change, no_file

log = get_logger("ufdl_node.server.domains")

OD, SP = "od", "sp"
BOX_KEYS = ("x", "y", "width", "height")
ANNOTATION_KEYS = frozenset({*BOX_KEYS, "label", "prefix", "polygon", "time"})
DEFAULT_PREFIX = "Object"
_EMPTY: dict[str, Any] = {}


def _bad(detail: str, field: str = "annotations") -> ApiError:
    return ApiError(400, detail, extra={field: [detail]})


def _int(value: Any, minimum: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53 \
        and (minimum is None or value >= minimum)


def _seconds(value: Any) -> bool:
    """A JSON number >= 0 (a video's length, an annotation's time), not a bool or a text."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")


def _polygon(value: Any) -> dict[str, Any]:
    points = value.get("points") if isinstance(value, dict) and set(value) == {"points"} else None
    if not isinstance(points, list) or len(points) < 3 or not all(
            isinstance(p, list) and len(p) == 2 and all(_int(c) for c in p) for p in points):
        raise _bad('polygon: must be {"points": [[x, y], ...]} with at least 3 points of integers')
    return {"points": points}


def annotation(value: Any) -> dict[str, Any]:
    """One checked annotation, its prefix filled in; a 400 naming what is wrong."""
    if not isinstance(value, dict):
        raise _bad("an annotation must be an object {x, y, width, height, label, prefix?, polygon?}")
    unknown = sorted(set(value) - ANNOTATION_KEYS)
    missing = [k for k in (*BOX_KEYS, "label") if k not in value]
    if unknown or missing:
        raise _bad(f"annotation: unknown key(s) {unknown}, missing {missing}")
    if not all(_int(value[k]) for k in ("x", "y")) or not all(_int(value[k], 0) for k in ("width", "height")):
        raise _bad("annotation: x and y must be integers, width and height integers >= 0")
    result = {k: value[k] for k in BOX_KEYS}
    for key in ("label", "prefix"):
        text = value.get(key, DEFAULT_PREFIX)
        if not isinstance(text, str) or not text.strip():
            raise _bad(f"annotation: {key} must be non-empty text")
        result[key] = text
    if "polygon" in value and value["polygon"] is not None:
        result["polygon"] = _polygon(value["polygon"])
    if "time" in value:  # a video's annotation: seconds into it, stored as the real server's float
        if not _seconds(value["time"]):
            raise _bad("annotation: time must be a number of seconds >= 0")
        result["time"] = float(value["time"])
    return result


def annotation_list(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad("annotations: the body must be a list of annotations")
    return [annotation(item) for item in value]


def _file_type(value: Any, *, required: bool = True) -> dict[str, Any]:
    """{"format": str, "dimensions": [w, h], "length"?: seconds (a video)} checked (format and
    dimensions may be left out when not `required`)."""
    if isinstance(value, dict) and "length" in value and not _seconds(value["length"]):
        raise _bad("file type: length must be a number of seconds >= 0 (a video's)", "length")
    length = {"length": float(value["length"])} if isinstance(value, dict) and "length" in value else {}
    if not required and isinstance(value, dict) and "format" not in value and "dimensions" not in value:
        return length
    fmt = value.get("format") if isinstance(value, dict) else None
    dims = value.get("dimensions") if isinstance(value, dict) else None
    if not isinstance(fmt, str) or not fmt.strip() or not isinstance(dims, list) or len(dims) != 2 \
            or not all(_int(d, 1) for d in dims):
        raise _bad('file type: must be {"format": "<png, jpg, ...>", "dimensions": [width, height], '
                   '"length"?: <seconds, a video\'s>}', "format")
    return {"format": fmt, "dimensions": dims, **length}


def _wrong_kind(error: ds.WrongKind) -> ApiError:
    name, video = error.args
    if video:
        return _bad(f"File {name!r} is a video (its file type has a length): each of its annotations "
                    "needs its time")
    return _bad(f"File {name!r} is an image: its annotations have no time (a video's file type has a length)")


def _no_type(name: str) -> ApiError:
    return ApiError(400, f"File {name!r} has no file type yet: POST .../file-type/{{file}} "
                         '{"format", "dimensions"} first, or set it with the annotations of all files')


# -- object detection, per file -----------------------------------------------------------


async def file_type_get(request: web.Request) -> web.Response:
    identify(request)
    dataset = dataset_or_404(request, OD)
    name = request.match_info["name"]
    try:
        found = ds.file_type(store_of(request.app), dataset["pk"], name)
    except ds.NoSuchFile as e:
        raise no_file(dataset, e) from None
    if found is None:
        raise _no_type(name)
    return web.json_response(found)


async def file_type_set(request: web.Request) -> web.Response:
    dataset = dataset_to_change(request, OD)
    wanted = _file_type(await read_json(request))
    name = request.match_info["name"]
    try:
        width, height = wanted["dimensions"]
        made = ds.set_file_type(store_of(request.app), dataset["pk"], name, wanted["format"], width, height,
                                wanted.get("length"))
    except ds.NoSuchFile as e:
        raise no_file(dataset, e) from None
    if not made:
        raise ApiError(400, f"File {name!r} has its file type already")
    return web.json_response(_EMPTY)


async def annotations_get(request: web.Request) -> web.Response:
    identify(request)
    dataset = dataset_or_404(request, OD)
    try:
        return web.json_response(ds.annotations_of(store_of(request.app), dataset["pk"],
                                                   request.match_info["name"]))
    except ds.NoSuchFile as e:
        raise no_file(dataset, e) from None


async def _write(request: web.Request, *, append: bool, body: bool = True) -> web.Response:
    dataset = dataset_to_change(request, OD)
    items = annotation_list(await read_json(request)) if body else []
    name = request.match_info["name"]
    try:
        ds.write_annotations(store_of(request.app), dataset["pk"], name, items, append=append)
    except ds.NoSuchFile as e:
        raise no_file(dataset, e) from None
    except ds.NoFileType:
        raise _no_type(name) from None
    except ds.WrongKind as e:
        raise _wrong_kind(e) from None
    return web.json_response(_EMPTY)


async def annotations_set(request: web.Request) -> web.Response:
    return await _write(request, append=False)


async def annotations_append(request: web.Request) -> web.Response:
    return await _write(request, append=True)


async def annotations_delete(request: web.Request) -> web.Response:
    return await _write(request, append=False, body=False)


# -- object detection, every file ------------------------------------------------------------


async def all_get(request: web.Request) -> web.Response:
    identify(request)
    dataset = dataset_or_404(request, OD)
    return web.json_response(ds.all_annotations(store_of(request.app), dataset["pk"]))


def _all_body(body: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(body, dict):
        raise _bad("annotations: the body must be {file: {format?, dimensions?, annotations: [...]}}")
    wanted: dict[str, dict[str, Any]] = {}
    for name, entry in body.items():
        if not isinstance(entry, dict) or "annotations" not in entry \
                or set(entry) - {"format", "dimensions", "length", "annotations"}:
            raise _bad(f"annotations of {name!r}: must be "
                       "{format?, dimensions?, length?, annotations: [...]}")
        wanted[name] = {**_file_type(entry, required=False),
                        "annotations": annotation_list(entry["annotations"])}
        if any(("time" in a) != ("length" in entry) for a in wanted[name]["annotations"]):
            raise _bad(f"annotations of {name!r}: a video's (with a length) each need their time, "
                       "an image's have none")
    return wanted


async def all_set(request: web.Request) -> web.Response:
    dataset = dataset_to_change(request, OD)
    wanted = _all_body(await read_json(request))
    try:
        ds.set_all_annotations(store_of(request.app), dataset["pk"], wanted)
    except ds.NoSuchFile as e:
        raise no_file(dataset, e) from None
    except ds.NoFileType as e:
        raise _no_type(str(e.args[0])) from None
    except ds.WrongKind as e:
        raise _wrong_kind(e) from None
    log.info("annotations set", dataset_pk=dataset["pk"], files=len(wanted))
    return web.json_response(_EMPTY)


async def file_types_get(request: web.Request) -> web.Response:
    identify(request)
    dataset = dataset_or_404(request, OD)
    return web.json_response(ds.file_types(store_of(request.app), dataset["pk"]))


async def all_delete(request: web.Request) -> web.Response:
    dataset = dataset_to_change(request, OD)
    ds.clear_od_annotations(store_of(request.app), dataset["pk"])
    return web.json_response(_EMPTY)


def _distinct(key: str) -> Handler:
    async def distinct(request: web.Request) -> web.Response:
        """The sorted distinct labels (or prefixes) that the dataset's annotations use."""
        identify(request)
        dataset = dataset_or_404(request, OD)
        found = ds.all_annotations(store_of(request.app), dataset["pk"]).values()
        return web.json_response(sorted({a[key] for entry in found for a in entry["annotations"]}))
    return distinct


# -- speech -----------------------------------------------------------------------------------


async def transcription_get(request: web.Request) -> web.Response:
    identify(request)
    dataset = dataset_or_404(request, SP)
    try:
        text = ds.transcription_of(store_of(request.app), dataset["pk"], request.match_info["name"])
    except ds.NoSuchFile as e:
        raise no_file(dataset, e) from None
    return web.json_response(_EMPTY if text is None else {"transcription": text})


async def transcription_set(request: web.Request) -> web.Response:
    dataset = dataset_to_change(request, SP)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"transcription"} \
            or not isinstance(body["transcription"], str):
        raise ApiError(400, 'transcription: the body must be {"transcription": "<text>"}',
                       extra={"transcription": ["This field is required."]})
    try:
        ds.set_transcription(store_of(request.app), dataset["pk"], request.match_info["name"],
                             body["transcription"])
    except ds.NoSuchFile as e:
        raise no_file(dataset, e) from None
    return web.json_response({"transcription": body["transcription"]})


async def transcriptions_get(request: web.Request) -> web.Response:
    identify(request)
    dataset = dataset_or_404(request, SP)
    found = ds.transcriptions(store_of(request.app), dataset["pk"])
    return web.json_response({name: {"transcription": text} for name, text in found.items()})


_OD = DOMAIN_PREFIXES[OD] + r"/{pk:\d+}"
_SP = DOMAIN_PREFIXES[SP] + r"/{pk:\d+}/transcriptions"
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", _OD + "/file-type/{name:.+}", file_type_get),
    ("POST", _OD + "/file-type/{name:.+}", file_type_set),
    ("GET", _OD + "/file-types", file_types_get),
    ("GET", _OD + "/annotations", all_get), ("POST", _OD + "/annotations", all_set),
    ("DELETE", _OD + "/annotations", all_delete),
    ("GET", _OD + "/annotations/{name:.+}", annotations_get),
    ("POST", _OD + "/annotations/{name:.+}", annotations_set),
    ("PATCH", _OD + "/annotations/{name:.+}", annotations_append),
    ("DELETE", _OD + "/annotations/{name:.+}", annotations_delete),
    ("GET", _OD + "/labels", _distinct("label")), ("GET", _OD + "/prefixes", _distinct("prefix")),
    ("GET", _SP, transcriptions_get),
    ("GET", _SP + "/{name:.+}", transcription_get), ("POST", _SP + "/{name:.+}", transcription_set),
]
