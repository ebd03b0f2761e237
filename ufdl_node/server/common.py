"""What every route of the embedded server shares: app keys, errors, request bodies, the caller.

Routes never build an error response themselves: they raise :class:`ApiError`
and the error middleware in ``app.py`` renders it, so every error is JSON
``{"detail": ...}`` (or, with ``real_server_quirks``, the real server's 500
HTML page for an illegal transition).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sqlite3
from collections.abc import Awaitable
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import http_exceptions, web

from ..logs import get_logger
from ..settings import ServerSettings
from .auth import TokenInvalid, TokenIssuer
from .store import Store

log = get_logger("ufdl_node.server")
_R = TypeVar("_R")

SETTINGS = web.AppKey("settings", ServerSettings)


@dataclass
class Runtime:
    """What the startup context opens: filled in once the application starts."""

    store: Store | None = None
    tokens: TokenIssuer | None = None


RUNTIME = web.AppKey("runtime", Runtime)


def store_of(app: web.Application) -> Store:
    store = app[RUNTIME].store
    if store is None:
        raise RuntimeError("the embedded server has not started")
    return store


def tokens_of(app: web.Application) -> TokenIssuer:
    tokens = app[RUNTIME].tokens
    if tokens is None:
        raise RuntimeError("the embedded server has not started")
    return tokens

MAX_PK = 2**63 - 1
# ASCII only: \d alone also matches other scripts' digits, which int() would read as a pk.
_DIGITS = re.compile(r"[0-9]{1,19}")
HTML_500 = "<!doctype html>\n<html><head><title>Server Error (500)</title></head>" \
           "<body><h1>Server Error (500)</h1></body></html>\n"
HTML_404 = "<!doctype html>\n<html><head><title>Not Found</title></head>" \
           "<body><h1>Not Found</h1><p>The requested resource was not found on this server.</p>" \
           "</body></html>\n"


class ApiError(Exception):
    """An error answer: `status`, a one-line `detail`, and optional extra JSON keys.

    `illegal` marks an illegal lifecycle transition (the real server's 500).
    `challenge` adds ``WWW-Authenticate: Bearer`` (a 401).
    """

    def __init__(self, status: int, detail: str, *, code: str | None = None,
                 extra: dict[str, Any] | None = None, challenge: bool = False,
                 illegal: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.extra = extra or {}
        self.challenge = challenge
        self.illegal = illegal
        self.field_errors = False

    def response(self, quirks: bool) -> web.Response:
        if self.illegal and quirks:
            return web.Response(status=500, text=HTML_500, content_type="text/html")
        if quirks and self.field_errors and self.extra:
            # The real server's node serializer errors: keyed by field, without "detail".
            return web.json_response(self.extra, status=400)
        body: dict[str, Any] = dict(self.extra)
        body["detail"] = self.detail
        if self.code is not None:
            body["code"] = self.code
        headers = {"WWW-Authenticate": 'Bearer realm="api"'} if self.challenge else None
        return web.json_response(body, status=self.status, headers=headers)


def conflict(e: Exception) -> ApiError:
    """The 400 for a create that breaks a uniqueness rule (`e` says which), as the real
    server's serializers word it: the reason under ``non_field_errors`` too."""
    return ApiError(400, str(e), extra={"non_field_errors": [str(e)]})


def stored_file(path: Path, what: str, filename: str,
                content_type: str = "application/data") -> web.FileResponse:
    """The file at `path` as an attachment called `filename`; 404 naming `what` (``output 3``)
    when its bytes are missing from the data directory."""
    if not path.is_file():
        raise ApiError(404, f"The bytes of {what} are missing from the data directory")
    # FileResponse streams the file (sendfile where it can): memory stays flat for any size.
    return web.FileResponse(path, headers={"Content-Type": content_type,
                                           "Content-Disposition": f'attachment; filename="{filename}"'})


WHOLE_FILE_BYTES = 1 << 20  # a file up to this size is read whole and sent in one write


async def served_file(path: Path, what: str, filename: str,
                      content_type: str = "application/data") -> web.StreamResponse:
    """:func:`stored_file`, cheaper for a small file (a dataset's image): opened, measured
    and read whole in one thread call and sent in one write, where ``FileResponse`` takes
    two thread calls and sets up a ``sendfile`` for each request. Larger files stream."""
    def read() -> bytes | None:
        try:
            with path.open("rb") as f:
                if os.fstat(f.fileno()).st_size > WHOLE_FILE_BYTES:
                    return None
                return f.read(WHOLE_FILE_BYTES + 1)
        except (FileNotFoundError, IsADirectoryError):
            raise ApiError(404, f"The bytes of {what} are missing from the data directory") from None

    body = await asyncio.to_thread(read)
    if body is None or len(body) > WHOLE_FILE_BYTES:  # grown since: stream it
        return stored_file(path, what, filename, content_type)
    return web.Response(body=body, headers={"Content-Type": content_type,
                                            "Content-Disposition": f'attachment; filename="{filename}"'})


# What the HTTP parser refused, in words that never repeat the request's bytes (a header can
# carry a token). Most specific class first: BadHttpMethod is a BadStatusLine.
_PARSE_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.BadHttpMethod, "Unknown HTTP method (or not HTTP, such as HTTPS sent to an HTTP port)"),
    (http_exceptions.BadStatusLine, "Malformed HTTP request line"),
    (http_exceptions.LineTooLong, "A request line or header is too long"),
    (http_exceptions.InvalidHeader, "Malformed HTTP header"),
    (http_exceptions.InvalidURLError, "Malformed URL"),
)


def parse_error_detail(status: int, exc: BaseException | None) -> str:
    """A one-line JSON detail for a request aiohttp answered itself, without echoing the request."""
    for cls, text in _PARSE_ERRORS:
        if isinstance(exc, cls):
            return f"Bad request: {text}"
    if isinstance(exc, http_exceptions.HttpProcessingError) and exc.message:
        # llhttp's reason is the first line; the request bytes follow on later lines.
        reason = exc.message.splitlines()[0].rstrip(":").strip()[:120]
        return f"Bad request: {reason}"
    if status >= 500:
        return "Internal server error"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Bad request"


def token_not_valid(detail: str = "Given token not valid for any token type") -> ApiError:
    return ApiError(401, detail, code="token_not_valid", challenge=True)


def _may_act_for(user: sqlite3.Row, node: sqlite3.Row) -> bool:
    """Only a node's creator (or staff, checked by the caller) may act as it: a node that staff
    created is not open to every user, or any account could drive a provisioned worker's jobs.
    A node from before creators were recorded (no creator) stays open."""
    return node["creator"] is None or node["creator"] == user["pk"]


def pk_of(request: web.Request, name: str = "pk") -> int:
    """A primary key from the path; too large to be one is a 404, never an SQLite overflow
    (nor Python's refusal to parse thousands of digits)."""
    text = request.match_info[name]
    if not _DIGITS.fullmatch(text) or int(text) > MAX_PK:
        raise ApiError(404, "Not found.")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:30]} is out of range")
    return value


async def read_json(request: web.Request) -> Any:
    """The decoded JSON body, or None when there is none. Malformed JSON is a 400.

    Strict, as the real server's parser is: NaN, Infinity and numbers beyond a float are
    refused, since whatever is stored is sent back, and a strict client cannot read them.
    """
    raw = await _in_time(request, request.read())
    if not raw.strip():
        return None
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"JSON parse error - {e}") from None
    except RecursionError:
        raise ApiError(400, "JSON parse error - nested too deeply") from None
    try:
        # JSON may carry lone surrogates (\ud800) that no text column can store
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "JSON parse error - the text is not valid Unicode") from None
    except RecursionError:
        raise ApiError(400, "JSON parse error - nested too deeply") from None
    return value


async def read_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The JSON body as an object; a missing one is a 400 when `required`, else {}."""
    body = await read_json(request)
    if body is None:
        if required:
            raise ApiError(400, "A JSON object body is required")
        return {}
    if not isinstance(body, dict):
        raise ApiError(400, f"Invalid data. Expected a dictionary, but got {type(body).__name__}.",
                       extra={"non_field_errors": ["Invalid data. Expected a dictionary."]})
    return body


def want_str(body: dict[str, Any], key: str, *, required: bool = True, nullable: bool = False,
             default: Any = None) -> Any:
    if key not in body:
        if required:
            raise ApiError(400, f"{key}: This field is required.", extra={key: ["This field is required."]})
        return default
    value = body[key]
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{key}: must be a string", extra={key: ["Not a valid string."]})
    return value


def want_int(body: dict[str, Any], key: str, *, required: bool = True, nullable: bool = False,
             minimum: int | None = 0) -> Any:
    if key not in body:
        if required:
            raise ApiError(400, f"{key}: This field is required.", extra={key: ["This field is required."]})
        return None
    value = body[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_PK <= value <= MAX_PK \
            or (minimum is not None and value < minimum):
        raise ApiError(400, f"{key}: A valid integer is required.",
                       extra={key: ["A valid integer is required."]})
    return value


def want_bool(body: dict[str, Any], key: str) -> bool:
    if key not in body:
        raise ApiError(400, f"{key}: This field is required.", extra={key: ["This field is required."]})
    value = body[key]
    if not isinstance(value, bool):
        raise ApiError(400, f"{key}: Must be a valid boolean.", extra={key: ["Must be a valid boolean."]})
    return value


@dataclass(frozen=True)
class Caller:
    """Who makes the request: a user (None only for a quirks-mode bare Node-Id) and a node."""

    user: sqlite3.Row | None
    node: int | None

    @property
    def is_staff(self) -> bool:
        return self.user is not None and bool(self.user["is_staff"])

    @property
    def user_pk(self) -> int | None:
        return None if self.user is None else int(self.user["pk"])

    def require_node(self) -> int:
        if self.node is None:
            raise ApiError(403, "This action is for a node: send its Node-Id header")
        return self.node

    def require_staff(self) -> None:
        if not self.is_staff:
            raise ApiError(403, "You do not have permission to perform this action.")


def identify(request: web.Request, *, node_action: bool = False) -> Caller:
    """Authenticate the request and read its Node-Id (which refreshes the node's last_seen).

    With ``real_server_quirks`` a node action may come with a bare Node-Id and
    no token, as the real server allows.
    """
    app = request.app
    store = store_of(app)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    user = None
    if scheme.lower() != "bearer":
        bare_node = node_action and app[SETTINGS].real_server_quirks and "Node-Id" in request.headers
        if not bare_node:
            raise ApiError(401, "Authentication credentials were not provided.", challenge=True)
    else:
        if not token.isascii():  # a JWT is ASCII; anything else is not one
            raise token_not_valid()
        try:
            user_pk = tokens_of(app).verify(token.strip(), "access")
        except TokenInvalid:
            raise token_not_valid() from None
        user = store.user(user_pk)
        if user is None:
            raise token_not_valid("User not found")
    node = None
    raw = request.headers.get("Node-Id")
    if raw is not None:
        raw = raw.strip()
        row = store.node(int(raw)) if _DIGITS.fullmatch(raw) and int(raw) <= MAX_PK else None
        if row is None:
            raise ApiError(400, "Bad Node-Id header")
        if user is not None and not user["is_staff"] and not _may_act_for(user, row):
            raise ApiError(403, "This Node-Id belongs to another user")
        node = int(raw)
        store.touch_node(node)
    return Caller(user=user, node=node)


BODY_CHUNK_BYTES = 1 << 20  # uploads are written to disk in 1 MiB pieces, by a thread


def upload_filename(request: web.Request) -> str | None:
    """The file name of an upload's ``Content-Disposition`` (the real server requires one);
    None without it, a 400 for a malformed header. Only checked, never used as a path."""
    header = request.headers.get("Content-Disposition")
    if not header:
        return None
    parsed = Message()
    parsed["content-disposition"] = header
    try:
        filename = parsed.get_filename()
    except (TypeError, ValueError, LookupError):  # malformed RFC 2231 parameters
        raise ApiError(400, "Malformed Content-Disposition header") from None
    return filename or None


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


async def _in_time(request: web.Request, read: Awaitable[_R]) -> _R:
    """`read` (of the request's body), or a 408 when no byte came for body_timeout_s: a client
    that declares a body and never sends it must not hold its connection and handler forever."""
    timeout = request.app[SETTINGS].body_timeout_s
    try:
        return await asyncio.wait_for(read, timeout)
    except asyncio.TimeoutError:
        log.info("request body timed out", method=request.method, path=request.path, timeout_s=timeout)
        raise ApiError(408, f"The request body did not arrive within {timeout:g} seconds") from None


class UploadCutShort(ConnectionResetError):
    """The client went away before its body was complete (the bytes so far: `received`)."""

    def __init__(self, received: int) -> None:
        super().__init__(f"upload cut short by the client after {received} bytes")
        self.received = received


async def receive_body(request: web.Request, temp: Path, limit: int, what: str,
                       digest: _Digest | None = None) -> int:
    """Stream the request body into `temp` (the loop reads, a thread writes), feeding `digest`
    where given; its size. Above `limit` bytes a 413 naming `what` (the caller removes temp);
    a client that goes away first raises UploadCutShort."""
    size, buffer = 0, bytearray()

    def write(f: Any, data: bytes) -> None:
        if digest is not None:
            digest.update(data)
        f.write(data)

    with temp.open("wb") as f:
        chunks = aiter(request.content.iter_chunked(BODY_CHUNK_BYTES))
        while True:
            try:
                chunk = await _in_time(request, anext(chunks))
            except StopAsyncIteration:
                break
            except ConnectionResetError:
                raise UploadCutShort(size) from None
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"The {what} is larger than the limit of {limit} bytes")
            buffer += chunk
            if len(buffer) >= BODY_CHUNK_BYTES:
                await asyncio.to_thread(write, f, bytes(buffer))
                buffer.clear()
        if buffer:
            await asyncio.to_thread(write, f, bytes(buffer))
    return size
