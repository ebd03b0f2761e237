"""How ufdl-node exchanges one request with a UFDL job server.

:class:`Transport` holds one aiohttp session, obtains a JWT lazily, refreshes it
on 401 (and logs in again when the refresh is refused), sends ``Node-Id`` where a
call acts for a node, and maps every reply that is not what the protocol
promises to the exception tree of :mod:`ufdl_node.errors` with a short one-line
detail (the real server's HTML pages and 400 details of tens of KB are cut).

Every HTTP call of the node goes through one path: :meth:`Transport.request` (a
JSON reply) and :meth:`Transport.stream` (a reply the caller streams), under one
retry policy (:meth:`Transport.retrying`): transient faults only (connection
errors, timeouts, 5xx, 408, 425, 429), waiting the server's ``Retry-After``
(seconds or an HTTP date, :func:`parse_retry_after`) or else the one backoff of
:mod:`ufdl_node.backoff`, both capped by ``retry_max_delay_s``. A refusal
(4xx) is never retried. :class:`NodeIO` is the one adapter that gives handlers'
code (:mod:`ufdl_node.work`) this path. The calls of the protocol, and how
non-idempotent ones are settled after a fault, are in :mod:`ufdl_node.client`,
which is composed over a Transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, NoReturn, TypeVar

import aiohttp
from yarl import URL

from .backoff import Backoff, Retrying, retry_delay
from .errors import (
    DETAIL_LIMIT,
    AuthenticationFailed,
    BadRequest,
    ClientClosed,
    MalformedReply,
    ServerError,
    ServerFault,
    ServerUnavailable,
    TransientError,
    WebSocketRefused,
    error_for_status,
)
from .leanhttp import LeanPool, NotLean
from .logs import get_logger, one_line, register_secret
from .metrics import Metrics

log = get_logger("ufdl_node.client")
T = TypeVar("T", bound="Transport")

_ERROR_BODY_LIMIT = 64 * 1024  # bytes of an error body read at most (the rest is dropped)

NO_BODY: Any = object()  # a request without a body (None would be JSON null)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HTML_DROP = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]+>")


def error_detail(body: bytes, content_type: str = "") -> str:
    """The server's reason from an error body, on one line and cut to DETAIL_LIMIT: a JSON
    ``detail``, an HTML page's title, or the text."""
    text = body.decode("utf-8", "replace")
    if "json" in content_type or text[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(data, dict) and isinstance(data.get("detail"), str):
                return one_line(data["detail"], DETAIL_LIMIT)
            return one_line(json.dumps(data, separators=(",", ":")), DETAIL_LIMIT)
    if "html" in content_type or text.lstrip()[:1] == "<":
        # A Django error page is many KB of markup; its title says what happened.
        title = _HTML_TITLE.search(text)
        if title and title.group(1).strip():
            return one_line("HTML page: " + title.group(1), DETAIL_LIMIT)
        text = _HTML_TAG.sub(" ", _HTML_DROP.sub(" ", text))
    return one_line(text, DETAIL_LIMIT)


_DELTA_SECONDS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 10.2.3): delta-seconds (digits
    only) or an HTTP date (a date in the past: 0). None when absent or not one of the two."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    if not value or value[:1].isdigit() or value[:1] in "+-.":
        return None  # "1.5", "-3", "5s": not delta-seconds, and no date starts so
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _with_query(path: str, params: Mapping[str, str] | None) -> str:
    return f"{path}?{urllib.parse.urlencode(params)}" if params else path


def _close(data: Any) -> None:
    if hasattr(data, "close"):
        with contextlib.suppress(OSError):
            data.close()


class Transport:
    """One session with one UFDL server, logged in as one user: requests, tokens, retries."""

    def __init__(self, base_url: str, username: str, password: str, *, request_timeout_s: float = 30,
                 upload_timeout_s: float = 3600, retry_max_attempts: int = 6,
                 retry_max_delay_s: float = 30, retry_initial_delay_s: float = 0.5,
                 metrics: Metrics | None = None, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.strip().rstrip("/")
        self.username = username
        self._password = password
        register_secret(password, public=username)
        self.request_timeout_s = request_timeout_s
        self.upload_timeout_s = upload_timeout_s
        self.retry_max_attempts = max(1, retry_max_attempts)
        self.retry_max_delay_s = retry_max_delay_s
        self.retry_initial_delay_s = min(retry_initial_delay_s, retry_max_delay_s)
        self.metrics = metrics
        self._session = session
        self._own_session = session is None
        self._closed = False  # by close(): no call opens a new session after it
        self._lean: LeanPool | None = None  # JSON calls' connections (only with a session of its own)
        self._access: str | None = None
        self._refresh: str | None = None
        self._auth_lock = asyncio.Lock()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        # Transfers: a long total, but a stalled socket is noticed within request_timeout_s.
        # (aiohttp starts sock_read only once the request body is sent.)
        self._transfer_timeout = aiohttp.ClientTimeout(total=upload_timeout_s,
                                                       sock_connect=request_timeout_s,
                                                       sock_read=request_timeout_s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, user={self.username!r})"

    async def __aenter__(self: T) -> T:
        self._closed = False
        self._get_session()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session (only when the transport created it); a call after this is
        refused (ClientClosed) until the transport is entered again."""
        self._closed = True
        if self._lean is not None:
            self._lean.close()
            self._lean = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._closed:
                raise ClientClosed("request", f"the client of {self.base_url} is closed")
            if not self._own_session:
                raise RuntimeError("the aiohttp session given to the transport is closed")
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        # aiohttp silently resends a GET or DELETE once when a kept-alive connection drops.
        # acquire (GET), reset and release (DELETE) are not idempotent on a UFDL server: a
        # silent resend turns a landed reset into a 406 that looks like a refusal. Retries
        # are this client's business, where the read-back can settle them. (Private flag of
        # aiohttp >= 3.10; absent elsewhere.)
        if getattr(self._session, "_retry_connection", False):
            self._session._retry_connection = False
        return self._session

    def _url(self, path: str) -> URL:
        if path.startswith(("http://", "https://")):
            if not path.startswith(self.base_url + "/"):
                raise ValueError(f"{path} is not under the server {self.base_url}")
            path = path[len(self.base_url):]
        # Our paths are percent-encoded already (NAME/TYPE segments); encoded=True keeps yarl
        # from re-encoding them. A caller's path gets what is missing (spaces ...) encoded,
        # with any %XX left alone.
        path = urllib.parse.quote("/" + path.lstrip("/"), safe="/%:@!$&'()*+,;=-._~?#[]")
        return URL(self.base_url + path, encoded=True)

    def node_io(self, node_id: int | None = None, action: str = "handler") -> NodeIO:
        """The work toolkit's ServerIO over this transport, acting as node `node_id` if given."""
        return NodeIO(self, node_id, action)

    # -- authentication ------------------------------------------------------------

    async def login(self) -> None:
        """Obtain a fresh token pair. Raises AuthenticationFailed on a wrong password."""
        async for attempt in self.retrying("obtain"):
            with attempt:
                async with self._auth_lock:
                    await self._obtain()

    async def _obtain(self) -> None:
        try:
            reply = await self.request("POST", "/v1/auth/obtain", action="obtain", auth=False, attempts=1,
                                       json={"username": self.username, "password": self._password})
        except AuthenticationFailed as e:
            raise AuthenticationFailed("obtain", f"the server refused the password of user "
                                       f"{self.username!r}", status=e.status, detail=e.detail) from None
        body = _tokens("obtain", reply, ("access", "refresh"))
        register_secret(body["access"])
        register_secret(body["refresh"])
        self._access, self._refresh = body["access"], body["refresh"]
        log.debug("api_login", user=self.username)

    async def _access_token(self) -> str:
        if self._access is None:
            async with self._auth_lock:
                if self._access is None:
                    await self._obtain()
        assert self._access is not None
        return self._access

    async def _renew(self, used: str | None) -> None:
        """After a 401: refresh the access token; log in again when the refresh is refused."""
        async with self._auth_lock:
            if self._access is not None and self._access != used:
                return  # another call renewed it while this one waited
            if self._refresh is not None:
                try:
                    reply = await self.request("POST", "/v1/auth/refresh", action="refresh", auth=False,
                                               attempts=1, json={"refresh": self._refresh})
                    body = _tokens("refresh", reply, ("access",))
                    register_secret(body["access"])
                    self._access = body["access"]
                    if isinstance(body.get("refresh"), str):  # a rotating server sends a new one
                        register_secret(body["refresh"])
                        self._refresh = body["refresh"]
                    return
                except (AuthenticationFailed, BadRequest):
                    log.info("api_refresh_refused", user=self.username)
            self._access = self._refresh = None
            await self._obtain()

    # -- one exchange ----------------------------------------------------------------

    def count(self, action: str, status: int | str | None, error: BaseException | None = None,
              calls: int = 1) -> None:
        """Count `calls` calls by action and status (None: counted already), and an error by kind."""
        if self.metrics is None:
            return
        if status is not None:
            self.metrics.api_calls.labels(action=action, status=str(status)).inc(calls)
        if error is not None:
            self.metrics.api_errors.labels(action=action, kind=type(error).__name__).inc()

    def unavailable(self, action: str, error: BaseException, *, cut: bool = False) -> ServerUnavailable:
        """The ServerUnavailable a connection fault or a timeout means (`cut`: while the
        reply's body was read)."""
        if isinstance(error, asyncio.TimeoutError):
            what = "no reply in time" if not cut else "the reply stalled"
        else:
            what = one_line(f"{type(error).__name__}: {error}", DETAIL_LIMIT)
        if cut:
            return ServerUnavailable(action, f"reply from {self.base_url} cut off: {what}")
        return ServerUnavailable(action, f"cannot reach {self.base_url}: {what}")

    async def _error_from(self, action: str, resp: aiohttp.ClientResponse) -> ServerError:
        body = b""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            while len(body) < _ERROR_BODY_LIMIT:
                chunk = await resp.content.read(_ERROR_BODY_LIMIT - len(body))
                if not chunk:
                    break
                body += chunk
        return _error_of(action, resp.status, resp.reason or "", resp.headers, body)

    async def _send(self, action: str, method: str, url: URL, kwargs: dict[str, Any],
                    data: Any) -> aiohttp.ClientResponse:
        try:
            return await self._get_session().request(method, url, **kwargs)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            _close(data)
            unavailable = self.unavailable(action, e)
            self.count(action, "error", unavailable)
            raise unavailable from e

    @asynccontextmanager
    async def stream(self, method: str, path: str, *, action: str = "request", json: Any = NO_BODY,
                     params: Mapping[str, str] | None = None, node_id: int | None = None,
                     body: Callable[[], Any] | None = None, headers: Mapping[str, str] | None = None,
                     transfer: bool = False, auth: bool = True) -> AsyncIterator[aiohttp.ClientResponse]:
        """One exchange, no retries: yields a 2xx response; raises the mapped error otherwise.

        A 401 renews the token and repeats the call once; a second 401 is AuthenticationFailed.
        `json` is the body (NO_BODY: none), or `body` makes it afresh for each send (an upload
        reopens its file). `transfer`: a long total time, a stalled socket still noticed within
        request_timeout_s. A body cut off while the caller reads it is ServerUnavailable.
        """
        url = self._url(_with_query(path, params))
        for repeat in (False, True):
            hdrs, token = await self._headers(headers, node_id, auth)
            kwargs: dict[str, Any] = {"headers": hdrs,
                                      "timeout": self._transfer_timeout if transfer else self._timeout}
            data: Any = None
            if json is not NO_BODY:
                kwargs["json"] = json
            elif body is not None:
                data = kwargs["data"] = body()
            resp = await self._send(action, method, url, kwargs, data)
            try:
                if await self._renewed(action, resp.status, token, auth and not repeat):
                    continue
                if not 200 <= resp.status < 300:
                    await self._raise_for(action, resp)
                try:
                    yield resp
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    unavailable = self.unavailable(action, e, cut=True)
                    self.count(action, None, unavailable)
                    raise unavailable from e
                return
            finally:
                resp.release()
                _close(data)  # aiohttp closes a file it streamed; this covers early replies

    async def _headers(self, headers: Mapping[str, str] | None, node_id: int | None,
                       auth: bool) -> tuple[dict[str, str], str | None]:
        """A request's headers (the caller's, the token when `auth`, the node) and the token."""
        hdrs = dict(headers or {})
        token: str | None = None
        if auth:
            token = await self._access_token()
            hdrs["Authorization"] = f"Bearer {token}"
        if node_id is not None:
            hdrs["Node-Id"] = str(int(node_id))
        return hdrs, token

    async def _renewed(self, action: str, status: int, token: str | None, may_renew: bool) -> bool:
        """Count a reply; True when it is a 401 that `may_renew` (a first send with a token)
        answers with a renewed token: the caller sends the call once more."""
        self.count(action, status)
        if status != 401 or not may_renew:
            return False
        log.info("api_token_renew", action=action)
        await self._renew(token)
        return True

    async def _raise_for(self, action: str, resp: aiohttp.ClientResponse) -> None:
        self._refuse(action, await self._error_from(action, resp))

    def _refuse(self, action: str, error: ServerError) -> NoReturn:
        if isinstance(error, AuthenticationFailed):
            error = AuthenticationFailed(action, "the server refused the token even after a "
                                         "fresh login", status=401, detail=error.detail)
        self.count(action, None, error)
        raise error

    async def request(self, method: str, path: str, *, action: str = "request", json: Any = NO_BODY,
                      params: Mapping[str, str] | None = None, node_id: int | None = None,
                      body: Callable[[], Any] | None = None, headers: Mapping[str, str] | None = None,
                      transfer: bool = False, auth: bool = True, attempts: int | None = None) -> Any:
        """One call, its transient faults retried (`attempts` tries in all, default
        retry_max_attempts; 1 for a call that is not idempotent): the decoded JSON body
        (None when the body is empty). The arguments are :meth:`stream`'s."""
        lean = self._lean_pool() if body is None and not transfer else None
        async for attempt in self.retrying(action, attempts):
            with attempt:
                if lean is not None:
                    try:
                        return await self._lean_call(lean, action, method, path, json, params, node_id,
                                                     headers, auth)
                    except NotLean:
                        pass  # a redirect, which the server did not act on: aiohttp follows it
                async with self.stream(method, path, action=action, json=json, params=params,
                                       node_id=node_id, body=body, headers=headers, transfer=transfer,
                                       auth=auth) as resp:
                    raw = await resp.read()
                return _decoded(action, resp.status, raw)
        raise AssertionError("unreachable")  # pragma: no cover

    def _lean_pool(self) -> LeanPool | None:
        """The lean JSON calls' connections (:mod:`.leanhttp`); None when the transport was
        given an aiohttp session (it is then used for everything)."""
        if not self._own_session:
            return None
        if self._closed:
            raise ClientClosed("request", f"the client of {self.base_url} is closed")
        if self._lean is None:
            self._lean = LeanPool(self.base_url)
        return self._lean

    async def _lean_call(self, pool: LeanPool, action: str, method: str, path: str, body_json: Any,
                         params: Mapping[str, str] | None, node_id: int | None,
                         headers: Mapping[str, str] | None, auth: bool) -> Any:
        """:meth:`request`'s one exchange over :class:`.leanhttp.LeanPool`, as :meth:`stream`
        makes it: the token (renewed once on a 401), the node, the errors mapped alike."""
        target = self._url(_with_query(path, params)).raw_path_qs
        data = None if body_json is NO_BODY else json.dumps(body_json).encode()
        for repeat in (False, True):
            hdrs, token = await self._headers(headers, node_id, auth)
            if data is not None:
                hdrs["Content-Type"] = "application/json"
            try:
                reply = await pool.exchange(method, target, hdrs, data, self.request_timeout_s)
            except (OSError, asyncio.TimeoutError) as e:
                unavailable = self.unavailable(action, e)
                self.count(action, "error", unavailable)
                raise unavailable from e
            if await self._renewed(action, reply.status, token, auth and not repeat):
                continue
            if not 200 <= reply.status < 300:
                self._refuse(action, _error_of(action, reply.status, reply.reason, reply.headers,
                                               reply.body[:_ERROR_BODY_LIMIT]))
            return _decoded(action, reply.status, reply.body)
        raise AssertionError("unreachable")  # pragma: no cover

    async def websocket(self, action: str, url: str) -> aiohttp.ClientWebSocketResponse[bool]:
        """A web socket opened on `url`; WebSocketRefused for a 4xx handshake, ServerFault for
        another status, ServerUnavailable when the server cannot be reached."""
        try:
            ws = await asyncio.wait_for(self._get_session().ws_connect(url, heartbeat=30),
                                        self.request_timeout_s)
        except aiohttp.WSServerHandshakeError as e:
            error: ServerError
            if 400 <= e.status < 500:
                error = WebSocketRefused(action, f"the server refused the web socket {url} "
                                         f"(HTTP {e.status})", status=e.status)
            else:
                error = ServerFault(action, f"web socket {url}: HTTP {e.status}", status=e.status)
            self.count(action, e.status, error)
            raise error from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            unavailable = self.unavailable(action, e)
            self.count(action, "error", unavailable)
            raise unavailable from e
        self.count(action, 101)
        return ws

    # -- the one retry policy ------------------------------------------------------------

    def retrying(self, action: str, attempts: int | None = None) -> Retrying:
        """The retry loop of every call (``async for attempt in ...: with attempt: ...``):
        TransientError retried, `attempts` tries in all (default retry_max_attempts), each
        wait the server's Retry-After or the next backoff delay, capped at retry_max_delay_s."""
        backoff: Backoff | None = None  # made at the first fault: most calls have none

        def wait(error: BaseException) -> float:
            nonlocal backoff
            if backoff is None:
                backoff = Backoff(self.retry_initial_delay_s, self.retry_max_delay_s)
            delay = retry_delay(error, backoff)
            return self.retry_max_delay_s if delay is None else delay  # no deadline: never None

        def before_sleep(number: int, error: BaseException, delay: float) -> None:
            if self.metrics is not None:
                self.metrics.api_retries.labels(action=action).inc()
            log.warning("api_retry", action=action, attempt=number, delay_s=round(delay, 3),
                        error=one_line(error, DETAIL_LIMIT))

        return Retrying(attempts or self.retry_max_attempts, TransientError, wait, before_sleep)


class NodeIO:
    """The one adapter giving the work toolkit (:class:`ufdl_node.work.ServerIO`) the transport:
    one exchange (no retries here: ServerAccess retries within its own budget), sent as node
    `node_id` when one is given."""

    def __init__(self, transport: Transport, node_id: int | None = None, action: str = "handler") -> None:
        self.transport = transport
        self.node_id = node_id
        self.action = action

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, str] | None = None) -> Any:
        """See :meth:`ufdl_node.work.ServerIO.request`."""
        return await self.transport.request(method, path, action=self.action, attempts=1,
                                            json=NO_BODY if json is None else json, params=params,
                                            node_id=self.node_id)

    def stream(self, method: str, path: str, *, json: Any = None,
               params: Mapping[str, str] | None = None) -> AbstractAsyncContextManager[Any]:
        """See :meth:`ufdl_node.work.ServerIO.stream` (a stalled body is noticed within
        request_timeout_s)."""
        return self.transport.stream(method, path, action=self.action, json=NO_BODY if json is None else json,
                                     params=params, node_id=self.node_id, transfer=True)

    # -- plain GETs in threads (ufdl_node.work.plainget.PlainSource) --

    @property
    def timeout_s(self) -> float:
        """How long a plain GET's socket may wait (the transport's request timeout)."""
        return self.transport.request_timeout_s

    def address(self) -> tuple[str, str, int, str]:
        """The server's scheme, host, port and path prefix (a plain GET's target is the prefix
        and the item's percent-encoded path)."""
        url = URL(self.transport.base_url)
        return url.scheme, url.raw_host or "", url.port or 80, url.raw_path.rstrip("/")

    async def plain_headers(self, stale: Mapping[str, str] | None = None) -> dict[str, str]:
        """A plain GET's headers: the token (renewed first when `stale` carries the current
        one, which a 401 refused). No Node-Id: a dataset's files are the user's to read, and
        a request with one makes the server write the node's last_seen (thousands of writes
        for one dataset; the job's pings keep it fresh meanwhile)."""
        if stale is not None:
            used = stale.get("Authorization", "").removeprefix("Bearer ")
            await self.transport._renew(used or None)
        return {"Authorization": f"Bearer {await self.transport._access_token()}"}

    def count_plain(self, status: int, calls: int) -> None:
        """Plain GETs by status, in the transport's call metrics."""
        self.transport.count(self.action, status, calls=calls)


def _error_of(action: str, status: int, reason: str, headers: Mapping[str, str], body: bytes) -> ServerError:
    """The error a reply that is not 2xx means (its detail from `body`)."""
    detail = error_detail(body, headers.get("Content-Type", "") or "")
    message = f"HTTP {status} {reason}".rstrip() + (f": {detail}" if detail else "")
    return error_for_status(action, status, message, detail=detail,
                            retry_after_s=parse_retry_after(headers.get("Retry-After")))


def _decoded(action: str, status: int, raw: bytes) -> Any:
    """The JSON of a 2xx body (None when empty); MalformedReply when it is not JSON."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise MalformedReply(action, f"HTTP {status} with a body that is not JSON: "
                             f"{one_line(raw.decode('utf-8', 'replace'), 100)}", status=status) from None


def as_dict(action: str, value: Any, keys: tuple[str, ...] = ("pk",)) -> dict[str, Any]:
    """`value` if it is a JSON object with `keys`; MalformedReply otherwise."""
    if not isinstance(value, dict):
        raise MalformedReply(action, f"expected a JSON object, got {one_line(repr(value), 100)}",
                             status=200)
    missing = [k for k in keys if k not in value]
    if missing:
        raise MalformedReply(action, f"the reply lacks {', '.join(missing)}: "
                             f"{one_line(json.dumps(value), 100)}", status=200)
    return value


def as_list(action: str, value: Any, keys: tuple[str, ...] = ("pk",)) -> list[dict[str, Any]]:
    """`value` if it is a JSON list of objects with `keys`; MalformedReply otherwise."""
    if not isinstance(value, list):
        raise MalformedReply(action, f"expected a JSON list, got {one_line(repr(value), 100)}",
                             status=200)
    return [as_dict(action, item, keys) for item in value]


def _tokens(action: str, value: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """A token reply: a JSON object whose `keys` are strings."""
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in keys):
        raise MalformedReply(action, f"expected tokens {', '.join(keys)}, got "
                             f"{one_line(repr(value), 100)}", status=200)
    return value
