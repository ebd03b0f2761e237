"""The only code of ufdl-node that speaks HTTP to a UFDL job server.

:class:`UfdlClient` has one typed method per call of ``UFDL-API.md``. It holds
one aiohttp session, obtains a JWT lazily, refreshes it on 401 (and logs in
again when the refresh is refused), sends ``Node-Id`` where a call acts for a
node, and maps every reply that is not what the protocol promises to the
exception tree of :mod:`ufdl_node.errors`.

Retries (tenacity, exponential backoff with jitter) cover transient faults
only: connection errors, timeouts, 5xx and 429 (Retry-After honoured, capped by
``retry_max_delay_s``). A refusal (4xx) is never retried. Calls that are not
idempotent (acquire, start, finish, reset, release, an output upload) are never
retried blindly: after a transient fault the client reads the server's state
back and decides from it whether the call landed, may be repeated, or has
become illegal (the real server answers some illegal transitions with 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from yarl import URL

from .errors import (
    AuthenticationFailed,
    BadRequest,
    ExpectationFailed,
    MalformedReply,
    NotAcceptable,
    NotFound,
    OutputRefused,
    PayloadTooLarge,
    PermissionDenied,
    RefusedError,
    ServerError,
    ServerFault,
    ServerUnavailable,
    TransientError,
    WebSocketRefused,
)
from .logs import get_logger, one_line, register_secret
from .metrics import Metrics

__all__ = ["DETAIL_LIMIT", "UfdlClient", "find_work_spec", "job_phase"]

log = get_logger("ufdl_node.client")

DETAIL_LIMIT = 300  # characters of a server's reason kept in an exception message
_ERROR_BODY_LIMIT = 64 * 1024  # bytes of an error body read at most (the rest is dropped)
_DOWNLOAD_CHUNK = 1 << 20
_NOTIFY = "none"  # send_notification value of start and finish

_REFUSALS: dict[int, type[RefusedError]] = {
    400: BadRequest, 401: AuthenticationFailed, 403: PermissionDenied, 404: NotFound,
    406: NotAcceptable, 413: PayloadTooLarge, 417: ExpectationFailed,
}
_TRANSIENT_4XX = frozenset({408, 425, 429})
_NO_BODY: Any = object()
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HTML_DROP = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]+>")


# -- pure helpers ------------------------------------------------------------------


def job_phase(job: Mapping[str, Any]) -> str:
    """The lifecycle phase of a job from its fields (UFDL-API.md section 3).

    One of CREATED, STARTED, FINISHED, ERRORED, CANCELLED.
    """
    started, ended, reason = job.get("start_time"), job.get("end_time"), job.get("error_reason")
    if started is None:
        return "CREATED"
    if ended is None:
        return "STARTED" if reason is None else "CANCELLED"
    return "FINISHED" if reason is None else "ERRORED"


def find_work_spec() -> dict[str, Any]:
    """The filter that finds jobs waiting for a worker, oldest first (UFDL-API.md section 5)."""
    return {
        "expressions": [
            {"type": "isnull", "field": "start_time"},
            {"type": "isnull", "field": "error_reason"},
            {"type": "isnull", "field": "node"},
            {"type": "isnull", "field": "template.workabletemplate", "invert": True},
        ],
        "order_by": [{"field": "pk", "ascending": True}],
    }


def _node_spec(ip: str, index: int) -> dict[str, Any]:
    return {"expressions": [{"type": "exact", "field": "ip", "value": ip},
                            {"type": "exact", "field": "index", "value": index}],
            "order_by": [{"field": "pk", "ascending": True}]}


def _seg(text: str) -> str:
    """One percent-encoded path segment (output NAME or TYPE: ``PK<Dataset<...>>``)."""
    return urllib.parse.quote(text, safe="")


def _content_disposition(name: str) -> str:
    """``attachment; filename="NAME"``, quoted per RFC 6266, with filename* when not ASCII."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    if escaped.isascii() and escaped.isprintable():
        return f'attachment; filename="{escaped}"'
    fallback = "".join(c if c.isascii() and c.isprintable() else "_" for c in escaped)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{_seg(name)}"


def _detail(body: bytes, content_type: str) -> str:
    """The server's reason from an error body, on one line and cut to DETAIL_LIMIT."""
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


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _close(data: Any) -> None:
    if hasattr(data, "close"):
        with contextlib.suppress(OSError):
            data.close()


PROGRESS_RESERVED = frozenset({"node", "progress", "self", "transition"})


def pk_of(value: Any) -> Any:
    """A relation's pk: the real server nests some relations; the embedded one sends pks."""
    return value.get("pk") if isinstance(value, dict) else value


# -- the client ----------------------------------------------------------------------


class UfdlClient:
    """A client of one UFDL job server, logged in as one user.

    Use it as ``async with UfdlClient(url, user, password) as client: ...``.
    Every method raises a :class:`~ufdl_node.errors.ServerError`:
    :class:`~ufdl_node.errors.TransientError` once retries are spent,
    a :class:`~ufdl_node.errors.RefusedError` subclass for a 4xx, or
    :class:`~ufdl_node.errors.MalformedReply` for a 2xx that is not the expected JSON.
    """

    def __init__(self, base_url: str, username: str, password: str, *, request_timeout_s: float = 30,
                 upload_timeout_s: float = 3600, retry_max_attempts: int = 6,
                 retry_max_delay_s: float = 30, retry_initial_delay_s: float = 0.5,
                 clock_skew_s: float = 300, metrics: Metrics | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.strip().rstrip("/")
        self.username = username
        self._password = password
        register_secret(password)
        self.request_timeout_s = request_timeout_s
        self.upload_timeout_s = upload_timeout_s
        self.retry_max_attempts = max(1, retry_max_attempts)
        self.retry_max_delay_s = retry_max_delay_s
        self.retry_initial_delay_s = min(retry_initial_delay_s, retry_max_delay_s)
        # How far the server's clock may be behind ours when telling our upload from an older one.
        self.clock_skew_s = clock_skew_s
        self.metrics = metrics
        self._session = session
        self._own_session = session is None
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
        return f"UfdlClient({self.base_url!r}, user={self.username!r})"

    async def __aenter__(self) -> UfdlClient:
        self._get_session()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session (only when the client created it)."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._own_session:
                raise RuntimeError("the aiohttp session given to UfdlClient is closed")
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

    # -- authentication ------------------------------------------------------------

    async def login(self) -> None:
        """Obtain a fresh token pair. Raises AuthenticationFailed on a wrong password."""
        async for attempt in self._retrying("obtain"):
            with attempt:
                async with self._auth_lock:
                    await self._obtain()

    async def _obtain(self) -> None:
        try:
            reply = await self._request("obtain", "POST", "/v1/auth/obtain", auth=False,
                                        json_body={"username": self.username, "password": self._password})
        except AuthenticationFailed as e:
            raise AuthenticationFailed("obtain", f"the server refused the password of user "
                                       f"{self.username!r}", status=e.status, detail=e.detail) from None
        body = self._dict("obtain", reply, ("access", "refresh"))
        if not isinstance(body["access"], str) or not isinstance(body["refresh"], str):
            raise MalformedReply("obtain", "tokens are not strings", status=200)
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
                    reply = await self._request("refresh", "POST", "/v1/auth/refresh", auth=False,
                                                json_body={"refresh": self._refresh})
                    body = self._dict("refresh", reply, ("access",))
                    if isinstance(body["access"], str):
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

    def _count(self, action: str, status: int | str) -> None:
        if self.metrics is not None:
            self.metrics.api_calls.labels(action=action, status=str(status)).inc()

    def _count_error(self, action: str, error: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.api_errors.labels(action=action, kind=type(error).__name__).inc()

    def _unavailable(self, action: str, error: BaseException) -> ServerUnavailable:
        if isinstance(error, asyncio.TimeoutError):
            what = "no reply in time"
        else:
            what = one_line(f"{type(error).__name__}: {error}", DETAIL_LIMIT)
        return ServerUnavailable(action, f"cannot reach {self.base_url}: {what}")

    async def _error_from(self, action: str, resp: aiohttp.ClientResponse) -> ServerError:
        body = b""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            while len(body) < _ERROR_BODY_LIMIT:
                chunk = await resp.content.read(_ERROR_BODY_LIMIT - len(body))
                if not chunk:
                    break
                body += chunk
        status = resp.status
        detail = _detail(body, resp.headers.get("Content-Type", ""))
        message = f"HTTP {status} {resp.reason or ''}".rstrip() + (f": {detail}" if detail else "")
        if status >= 500 or status in _TRANSIENT_4XX:
            return ServerFault(action, message, status=status, detail=detail,
                               retry_after_s=_retry_after_s(resp.headers.get("Retry-After")))
        cls = _REFUSALS.get(status, RefusedError)
        return cls(action, message, status=status, detail=detail)

    @asynccontextmanager
    async def _response(self, action: str, method: str, path: str, *, node_id: int | None = None,
                        json_body: Any = _NO_BODY, body: Callable[[], Any] | None = None,
                        headers: Mapping[str, str] | None = None,
                        timeout: aiohttp.ClientTimeout | None = None,
                        auth: bool = True) -> AsyncIterator[aiohttp.ClientResponse]:
        """One call, no retries: yields a 2xx response; raises the mapped error otherwise.

        A 401 renews the token and repeats the call once; a second 401 is AuthenticationFailed.
        `body` makes the request body afresh for each send (an upload reopens its file).
        """
        session = self._get_session()
        url = self._url(path)
        for repeat in (False, True):
            hdrs = dict(headers or {})
            token: str | None = None
            if auth:
                token = await self._access_token()
                hdrs["Authorization"] = f"Bearer {token}"
            if node_id is not None:
                hdrs["Node-Id"] = str(int(node_id))
            kwargs: dict[str, Any] = {"headers": hdrs, "timeout": timeout or self._timeout}
            data: Any = None
            if json_body is not _NO_BODY:
                kwargs["json"] = json_body
            elif body is not None:
                data = kwargs["data"] = body()
            try:
                resp = await session.request(method, url, **kwargs)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                _close(data)
                self._count(action, "error")
                unavailable = self._unavailable(action, e)
                self._count_error(action, unavailable)
                raise unavailable from e
            try:
                self._count(action, resp.status)
                if resp.status == 401 and auth and not repeat:
                    log.info("api_token_renew", action=action)
                    await self._renew(token)
                    continue
                if not 200 <= resp.status < 300:
                    error = await self._error_from(action, resp)
                    if isinstance(error, AuthenticationFailed):
                        error = AuthenticationFailed(action, "the server refused the token even after a "
                                                     "fresh login", status=401, detail=error.detail)
                    self._count_error(action, error)
                    raise error
                try:
                    yield resp
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    unavailable = self._unavailable(action, e)
                    self._count_error(action, unavailable)
                    raise unavailable from e
                return
            finally:
                resp.release()
                _close(data)  # aiohttp closes a file it streamed; this covers early replies

    async def _request(self, action: str, method: str, path: str, **kwargs: Any) -> Any:
        """One call, no retries: the decoded JSON body (None when the body is empty)."""
        async with self._response(action, method, path, **kwargs) as resp:
            raw = await resp.read()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise MalformedReply(action, f"HTTP {resp.status} with a body that is not JSON: "
                                 f"{one_line(raw.decode('utf-8', 'replace'), 100)}",
                                 status=resp.status) from None

    # -- reply shapes ------------------------------------------------------------------

    @staticmethod
    def _dict(action: str, value: Any, keys: tuple[str, ...] = ("pk",)) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise MalformedReply(action, f"expected a JSON object, got {one_line(repr(value), 100)}",
                                 status=200)
        missing = [k for k in keys if k not in value]
        if missing:
            raise MalformedReply(action, f"the reply lacks {', '.join(missing)}: "
                                 f"{one_line(json.dumps(value), 100)}", status=200)
        return value

    @staticmethod
    def _list(action: str, value: Any, keys: tuple[str, ...] = ("pk",)) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise MalformedReply(action, f"expected a JSON list, got {one_line(repr(value), 100)}",
                                 status=200)
        return [UfdlClient._dict(action, item, keys) for item in value]

    # -- retries -------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, ServerFault) and error.retry_after_s is not None:
            return min(error.retry_after_s, self.retry_max_delay_s)
        # exponential backoff plus random jitter (spelled so that tenacity 8 and 9 agree)
        backoff = wait_exponential(multiplier=self.retry_initial_delay_s, max=self.retry_max_delay_s) \
            + wait_random(0, self.retry_initial_delay_s)
        return min(backoff(state), self.retry_max_delay_s)

    def _retrying(self, action: str, attempts: int | None = None) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            if self.metrics is not None:
                self.metrics.api_retries.labels(action=action).inc()
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning("api_retry", action=action, attempt=state.attempt_number,
                        delay_s=round(delay, 3), error=one_line(error, DETAIL_LIMIT))

        return AsyncRetrying(stop=stop_after_attempt(attempts or self.retry_max_attempts), wait=self._wait,
                             retry=retry_if_exception_type(TransientError), reraise=True,
                             before_sleep=before_sleep)

    async def _call(self, action: str, method: str, path: str, *, attempts: int | None = None,
                    **kwargs: Any) -> Any:
        """An idempotent call: retried on transient faults (`attempts` tries in all, default
        retry_max_attempts). The decoded JSON body."""
        async for attempt in self._retrying(action, attempts):
            with attempt:
                return await self._request(action, method, path, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- nodes and hardware --------------------------------------------------------------

    async def list_nodes(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        """Nodes matching a filter spec."""
        return self._list("list_nodes", await self._call("list_nodes", "POST", "/v1/nodes/list",
                                                           json_body=spec))

    async def find_node(self, ip: str, index: int) -> dict[str, Any] | None:
        """The node registered with exactly this ip and GPU index, or None."""
        for node in await self.list_nodes(_node_spec(ip, index)):
            if node.get("ip") == ip and node.get("index") == index:
                return node
        return None

    async def create_node(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Register a node (201).

        Not idempotent, but (ip, index) is unique: after a transient fault the node is
        looked up by ip and index, and created again only when it is not there. A 400
        after an uncertain attempt (the duplicate) is settled the same way.
        """
        action = "create_node"
        ip, index = fields.get("ip"), fields.get("index")
        uncertain = False
        async for attempt in self._retrying(action):
            with attempt:
                if uncertain and isinstance(ip, str) and isinstance(index, int):
                    found = await self._find_node_once(ip, index)
                    if found is not None:
                        return found  # our create landed; its reply was lost
                try:
                    return self._dict(action, await self._request(action, "POST", "/v1/nodes/create",
                                                                  json_body=fields))
                except TransientError:
                    uncertain = True
                    raise
                except BadRequest:
                    if not (uncertain and isinstance(ip, str) and isinstance(index, int)):
                        raise
                    found = await self._find_node_once(ip, index)
                    if found is None:
                        raise
                    return found
        raise AssertionError("unreachable")  # pragma: no cover

    async def _find_node_once(self, ip: str, index: int) -> dict[str, Any] | None:
        nodes = self._list("list_nodes", await self._request("list_nodes", "POST", "/v1/nodes/list",
                                                               json_body=_node_spec(ip, index)))
        return next((n for n in nodes if n.get("ip") == ip and n.get("index") == index), None)

    async def update_node(self, pk: int, fields: dict[str, Any]) -> dict[str, Any]:
        """PATCH a node's fields, acting as that node."""
        return self._dict("update_node", await self._call("update_node", "PATCH", f"/v1/nodes/{pk}",
                                                          node_id=pk, json_body=fields))

    async def get_node(self, pk: int) -> dict[str, Any]:
        """One node."""
        return self._dict("get_node", await self._call("get_node", "GET", f"/v1/nodes/{pk}"))

    async def ping(self, node_id: int, *, retry: bool = True) -> None:
        """Tell the server the node is alive (updates last_seen); `retry=False` tries once."""
        await self._call("ping", "GET", "/v1/nodes/ping", node_id=node_id, attempts=None if retry else 1)

    async def hardware_generations(self) -> list[dict[str, Any]]:
        """The server's GPU generations with their compute-capability ranges."""
        rows = await self._call("hardware_generations", "POST", "/v1/hardware/list", json_body={})
        return self._list("hardware_generations", rows,
                          ("pk", "generation", "min_compute_capability", "max_compute_capability"))

    # -- templates -------------------------------------------------------------------------

    async def list_templates(self, spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Job templates matching a filter spec (all active ones by default)."""
        return self._list("list_templates", await self._call(
            "list_templates", "POST", "/v1/job-templates/list", json_body=spec or {}))

    async def get_template(self, pk: int) -> dict[str, Any]:
        """One job template."""
        return self._dict("get_template", await self._call("get_template", "GET",
                                                           f"/v1/job-templates/{pk}"))

    async def import_template(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Import a job template (admin). Not retried: a repeat would import it twice."""
        return self._dict("import_template", await self._request(
            "import_template", "POST", "/v1/job-templates/import", json_body=spec))

    async def create_job(self, template_pk: int, input_values: dict[str, Any],
                         parameter_values: dict[str, Any], description: str = "",
                         notification_override: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a job from a template. Not retried: a repeat would create a second job."""
        body: dict[str, Any] = {"input_values": input_values,
                                "parameter_values": parameter_values or {}, "description": description}
        if notification_override is not None:
            body["notification_override"] = notification_override
        return self._dict("create_job", await self._request(
            "create_job", "POST", f"/v1/job-templates/{template_pk}/create-job", json_body=body))

    # -- jobs: reading -----------------------------------------------------------------------

    async def list_jobs(self, spec: dict[str, Any], node_id: int | None = None) -> list[dict[str, Any]]:
        """Jobs matching a filter spec."""
        return self._list("list_jobs", await self._call("list_jobs", "POST", "/v1/jobs/list",
                                                         node_id=node_id, json_body=spec))

    async def find_work(self, node_id: int | None = None, *, retry: bool = True) -> list[dict[str, Any]]:
        """Jobs waiting for a worker (not started, not errored, not held, workable), pk ascending.

        `retry=False` tries once: a poller with a backoff of its own wants to know at once.
        """
        jobs = await self._call("find_work", "POST", "/v1/jobs/list", node_id=node_id,
                                json_body=find_work_spec(), attempts=None if retry else 1)
        return sorted(self._list("find_work", jobs), key=lambda j: j["pk"])

    async def get_job(self, pk: int, node_id: int | None = None) -> dict[str, Any]:
        """One job."""
        return self._dict("get_job", await self._call("get_job", "GET", f"/v1/jobs/{pk}",
                                                      node_id=node_id))

    async def _read_job(self, pk: int, node_id: int) -> dict[str, Any]:
        # One try: a read-back runs inside the retry loop of the call it settles.
        return self._dict("get_job", await self._request("get_job", "GET", f"/v1/jobs/{pk}",
                                                         node_id=node_id))

    # -- jobs: the worker's lifecycle ---------------------------------------------------------

    async def _lifecycle(self, action: str, pk: int, node_id: int, method: str, path: str,
                         settle: Callable[[dict[str, Any]], Awaitable[bool]],
                         json_body: Any = _NO_BODY) -> dict[str, Any]:
        """A call that is not idempotent, made safe by reading the job back.

        After a transient fault nobody knows whether the call landed. Before trying
        again, the job is read back and `settle` decides: True (it landed: return the
        job), False (it did not: call again), or it raises NotAcceptable (the call has
        become illegal; the real server answers such calls with 500, which must not be
        retried forever). A refusal that follows an uncertain attempt is settled the
        same way, since it may be the server refusing to do twice what it did once.
        """
        uncertain = False
        async for attempt in self._retrying(action):
            with attempt:
                if uncertain:
                    job = await self._read_job(pk, node_id)
                    if await settle(job):
                        log.info("api_settled", action=action, job_pk=pk, outcome="landed")
                        return job
                try:
                    return self._dict(action, await self._request(action, method, path, node_id=node_id,
                                                                  json_body=json_body))
                except TransientError:
                    uncertain = True
                    raise
                except (NotAcceptable, PermissionDenied, BadRequest):
                    if not uncertain:
                        raise
                    job = await self._read_job(pk, node_id)
                    if await settle(job):
                        return job
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _illegal(action: str, pk: int, job: Mapping[str, Any], why: str) -> NotAcceptable:
        return NotAcceptable(action, f"job {pk} is {job_phase(job)} "
                             f"(node {pk_of(job.get('node'))}): {why}")

    async def acquire(self, pk: int, node_id: int) -> dict[str, Any]:
        """Hold a job for a node; the job as a fresh GET shows it.

        The server's acquire reads then writes: two nodes racing can both get 200.
        So the job is always read back, and NotAcceptable is raised unless this node
        holds it (the same error as losing the race outright).
        """
        async def settle(job: dict[str, Any]) -> bool:
            holder = pk_of(job.get("node"))
            if holder == node_id:
                return True  # ours: the lost reply was a 200
            if holder is None and job.get("end_time") is None:
                return False  # free and not finalised: the call did not land, acquire again
            raise self._illegal("acquire", pk, job, "held by another node or finalised")

        acquired = await self._lifecycle("acquire", pk, node_id, "GET", f"/v1/jobs/{pk}/acquire", settle)
        try:
            job = await self.get_job(pk, node_id)
        except TransientError as e:
            # The server said the job is ours; raising now would leave it held with nobody
            # knowing. Hand back what acquire answered, and let the caller's start decide.
            log.warning("api_acquire_unverified", job_pk=pk, error=one_line(e, DETAIL_LIMIT))
            return acquired
        if pk_of(job.get("node")) != node_id:
            raise self._illegal("acquire", pk, job, "another node won the race to acquire it")
        return job

    async def start(self, pk: int, node_id: int) -> dict[str, Any]:
        """Start a held job (start_time := now; the node's current_job := the job)."""
        async def settle(job: dict[str, Any]) -> bool:
            holder = pk_of(job.get("node"))
            if holder != node_id:
                raise self._illegal("start", pk, job, "no longer held by this node")
            if job.get("start_time") is not None:
                return True  # started and held by us: our start landed
            return False  # still CREATED and ours: start again

        return await self._lifecycle("start", pk, node_id, "POST", f"/v1/jobs/{pk}/start", settle,
                                     json_body={"send_notification": _NOTIFY})

    async def progress(self, pk: int, node_id: int, amount: float,
                       data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Report progress in [0, 1] (clamped), with an optional JSON body for watchers.

        Idempotent (it stores the latest amount), so retried on transient faults.
        """
        # Only 0.<digits> or 1.<zeros> route on the real server: "0", "1", "1e-05" give 404.
        value = f"{min(max(float(amount), 0.0), 1.0):.4f}"
        kwargs: dict[str, Any] = {"node_id": node_id}
        if data is not None:
            # The real server passes the body on as keyword arguments next to its own
            # (node, progress, self, transition): such a key makes it answer 500.
            kwargs["json_body"] = {(f"data_{k}" if k in PROGRESS_RESERVED else k): v for k, v in data.items()}
        # Progress is best effort (the next report supersedes it): one retry, not a schedule.
        reply = await self._call("progress", "POST", f"/v1/jobs/{pk}/progress/{value}", attempts=2, **kwargs)
        return self._dict("progress", reply) if reply is not None else {"pk": pk}

    async def finish(self, pk: int, node_id: int, error: str | None = None) -> dict[str, Any]:
        """Finish a job: success when `error` is None, else ERRORED with `error` as reason.

        Always owed once the handler stopped, cancelled jobs included: it is what clears
        the node's current_job.
        """
        body: dict[str, Any] = {"success": error is None, "send_notification": _NOTIFY}
        if error is not None:
            body["error"] = error

        async def settle(job: dict[str, Any]) -> bool:
            if job.get("end_time") is not None:
                return True  # FINISHED or ERRORED: our finish landed (or an earlier one did)
            node = await self._node_once(node_id)
            current = pk_of(node.get("current_job"))
            if current == pk:
                return False  # still our current job: finish has not landed, call it again
            if job.get("is_cancelled") or pk_of(job.get("node")) != node_id:
                # Cancelled or aborted: finish only clears current_job, and it is clear.
                return True
            if job.get("start_time") is None:
                raise self._illegal("finish", pk, job, "never started (the real server answers 500)")
            return False  # STARTED, held by us, but not our current job: let the server decide

        return await self._lifecycle("finish", pk, node_id, "POST", f"/v1/jobs/{pk}/finish", settle,
                                     json_body=body)

    async def _node_once(self, node_id: int) -> dict[str, Any]:
        return self._dict("get_node", await self._request("get_node", "GET", f"/v1/nodes/{node_id}",
                                                          node_id=node_id))

    async def reset(self, pk: int, node_id: int) -> dict[str, Any]:
        """Put an ERRORED job back to CREATED (still held by this node)."""
        async def settle(job: dict[str, Any]) -> bool:
            phase = job_phase(job)
            if pk_of(job.get("node")) != node_id:
                raise self._illegal("reset", pk, job, "not held by this node")
            if phase == "CREATED":
                return True  # back to CREATED and still ours: the reset landed
            if phase == "ERRORED":
                return False  # not reset yet: reset again
            raise self._illegal("reset", pk, job, "only an ERRORED job can be reset")

        return await self._lifecycle("reset", pk, node_id, "DELETE", f"/v1/jobs/{pk}/reset", settle)

    async def release(self, pk: int, node_id: int) -> dict[str, Any]:
        """Give a held job (CREATED or ERRORED) back to the pool."""
        async def settle(job: dict[str, Any]) -> bool:
            if pk_of(job.get("node")) != node_id:
                return True  # no longer ours (released, or taken by abort): nothing left to do
            phase = job_phase(job)
            if phase in ("CREATED", "ERRORED"):
                return False  # still ours: release again
            # STARTED: the real server answers 500; FINISHED: 406. Either way it stays.
            raise self._illegal("release", pk, job, "a started or finished job cannot be released")

        return await self._lifecycle("release", pk, node_id, "DELETE", f"/v1/jobs/{pk}/release", settle)

    async def cancel(self, pk: int) -> dict[str, Any]:
        """Cancel a job (admin). A finalised job is left as it is."""
        return self._dict("cancel", await self._call("cancel", "DELETE", f"/v1/jobs/{pk}/cancel"))

    async def abort(self, pk: int) -> dict[str, Any]:
        """Abort a job back to CREATED, unheld, outputs removed (admin)."""
        return self._dict("abort", await self._call("abort", "DELETE", f"/v1/jobs/{pk}/abort"))

    # -- outputs -----------------------------------------------------------------------------

    @staticmethod
    def _output_path(pk: int, name: str, type_: str) -> str:
        return f"/v1/jobs/{pk}/outputs/{_seg(name)}/{_seg(type_)}"

    async def output_info(self, pk: int, name: str, type_: str) -> dict[str, Any] | None:
        """An output's record (with creation_time and deletion_time), or None when there is none."""
        try:
            info = await self._call("output_info", "GET", self._output_path(pk, name, type_) + "/info")
        except (BadRequest, NotFound):
            return None
        return self._dict("output_info", info, ("name", "type"))

    async def _output_info_once(self, pk: int, name: str, type_: str) -> dict[str, Any] | None:
        try:
            info = await self._request("output_info", "GET", self._output_path(pk, name, type_) + "/info")
        except (BadRequest, NotFound):
            return None
        return self._dict("output_info", info, ("name", "type"))

    async def _landed(self, pk: int, name: str, type_: str, began: float) -> dict[str, Any] | None:
        """After an uncertain or refused upload: the output record if our upload landed,
        None if nothing is there; OutputRefused if a record is there that is not ours."""
        info = await self._output_info_once(pk, name, type_)
        if info is None:
            return None
        if info.get("deletion_time") is not None:
            # The real server soft-deletes outputs on reset but keeps their NAME/TYPE taken.
            raise OutputRefused("upload_output", f"output {name}/{type_} of job {pk} was kept by the "
                                "server after a reset and cannot be uploaded again")
        created = _parse_time(info.get("creation_time"))
        if created is None or created.timestamp() >= began - self.clock_skew_s:
            return info
        raise OutputRefused("upload_output", f"output {name}/{type_} of job {pk} already exists, "
                            f"created at {info.get('creation_time')} before this upload began")

    async def upload_output(self, pk: int, node_id: int, name: str, type_: str,
                            source: Path | bytes) -> dict[str, Any]:
        """Upload an output, streamed from disk (a Path) or from memory (bytes).

        Safe to retry: after a transient fault, and when the server says the output
        exists already, its info tells whether this upload landed (a live record
        created since the upload began: success) or the name is taken for good
        (OutputRefused).
        """
        action = "upload_output"
        path = self._output_path(pk, name, type_)
        headers = {"Content-Disposition": _content_disposition(name),
                   "Content-Type": "application/octet-stream"}
        if isinstance(source, (bytes, bytearray, memoryview)):
            payload = bytes(source)
            size = len(payload)

            def body() -> Any:
                # aiohttp warns that a big raw bytes body blocks the loop; a BytesIO streams.
                return io.BytesIO(payload) if size > 2**20 else payload
        else:
            source = Path(source)
            size = source.stat().st_size

            def body() -> Any:
                # An open file: aiohttp streams it in chunks, with a Content-Length.
                return source.open("rb")

        began_wall, began = time.time(), time.monotonic()
        uncertain = False

        def done(info: dict[str, Any]) -> dict[str, Any]:
            if self.metrics is not None:
                self.metrics.upload_bytes.inc(size)
                self.metrics.upload_duration.observe(time.monotonic() - began)
            log.info("api_uploaded", job_pk=pk, output=f"{name}/{type_}", bytes=size,
                     duration_s=round(time.monotonic() - began, 3))
            return info

        async for attempt in self._retrying(action):
            with attempt:
                if uncertain:
                    info = await self._landed(pk, name, type_, began_wall)
                    if info is not None:
                        return done(info)
                try:
                    reply = await self._request(action, "POST", path, node_id=node_id, body=body,
                                                headers=headers, timeout=self._transfer_timeout)
                except TransientError:
                    uncertain = True
                    raise
                except BadRequest:
                    # "already has an output": ours from an attempt whose reply was lost, or not ours.
                    info = await self._landed(pk, name, type_, began_wall)
                    if info is not None:
                        return done(info)
                    raise
                return done(self._dict(action, reply, ("name",)))
        raise AssertionError("unreachable")  # pragma: no cover

    async def download_output(self, pk: int, name: str, type_: str, dest: Path) -> Path:
        """Stream an output's bytes to `dest` (atomically)."""
        return await self._download("download_output", self._output_path(pk, name, type_), Path(dest))

    async def download(self, path: str, dest: Path) -> Path:
        """Stream any authenticated GET under the server to `dest` (temp file, then rename)."""
        return await self._download("download", path, Path(dest))

    async def _download(self, action: str, path: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        async for attempt in self._retrying(action):
            with attempt:
                fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
                try:
                    with os.fdopen(fd, "wb") as f:
                        async with self._response(action, "GET", path,
                                                  timeout=self._transfer_timeout) as resp:
                            async for chunk in resp.content.iter_chunked(_DOWNLOAD_CHUNK):
                                await asyncio.to_thread(f.write, chunk)
                    os.replace(tmp, dest)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
                return dest
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the web socket -----------------------------------------------------------------------

    def job_ws_url(self, pk: int) -> str:
        """The web socket of a job: ws(s)://<server>/v1/jobs/{pk}."""
        parts = urllib.parse.urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + f"/v1/jobs/{pk}",
                                        "", ""))

    async def watch_job(self, pk: int) -> AsyncIterator[dict[str, Any]]:
        """The messages of a job's web socket, as dicts, until the server closes it.

        Raises WebSocketRefused when the server refuses the handshake (the real
        server does, unless the job was created with web-socket notifications):
        the caller then polls get_job instead.
        """
        action = "watch_job"
        url = self.job_ws_url(pk)
        try:
            ws = await asyncio.wait_for(self._get_session().ws_connect(url, heartbeat=30),
                                        self.request_timeout_s)
        except aiohttp.WSServerHandshakeError as e:
            self._count(action, e.status)
            error: ServerError
            if 400 <= e.status < 500:
                error = WebSocketRefused(action, f"the server refused the web socket of job {pk} "
                                         f"(HTTP {e.status})", status=e.status)
            else:
                error = ServerFault(action, f"web socket of job {pk}: HTTP {e.status}", status=e.status)
            self._count_error(action, error)
            raise error from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            self._count(action, "error")
            error = self._unavailable(action, e)
            self._count_error(action, error)
            raise error from e
        self._count(action, 101)
        async with ws:
            async for msg in ws:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    log.warning("api_ws_garbage", job_pk=pk, message=one_line(msg.data, 100))
                    continue
                yield data
