"""The only code of ufdl-node that speaks HTTP to a UFDL job server: one method per call.

:class:`UfdlClient` has one typed method per call of ``UFDL-API.md``, on top of
:class:`~ufdl_node.transport.Transport` (session, tokens, retries, errors).

Calls that are not idempotent (acquire, start, finish, reset, release, an output
upload, creating a node) are never retried blindly: after a transient fault the
client reads the server's state back and decides from it whether the call
landed, may be repeated, or has become illegal (the real server answers some
illegal transitions with 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from .errors import (
    DETAIL_LIMIT,
    BadRequest,
    NotAcceptable,
    NotFound,
    OutputRefused,
    PermissionDenied,
    TransientError,
)
from .logs import get_logger, one_line
from .protocol import Phase, find_work_spec, phase, pk_of
from .transport import NO_BODY, NodeIO, Transport, as_dict, as_list
from .uploadfile import UploadFile

__all__ = ["UfdlClient"]

log = get_logger("ufdl_node.client")

_DOWNLOAD_CHUNK = 1 << 20
_NOTIFY = "none"  # send_notification value of start and finish


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


content_disposition = _content_disposition  # public: other modules upload files with it too

def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)

PROGRESS_RESERVED = frozenset({"node", "progress", "self", "transition"})


class UfdlClient:
    """A client of one UFDL job server, logged in as one user, over a :class:`Transport`.

    Use it as ``async with UfdlClient(url, user, password) as client: ...``; the keyword
    arguments other than `clock_skew_s` are the transport's (timeouts, retries, metrics,
    session). `clock_skew_s`: how far the server's clock may be behind ours when telling
    our upload from an older one.
    Idempotent calls take ``attempts=``: how many tries in all on a transient fault
    (default ``retry_max_attempts``; 1 tries once, for a caller with a backoff of its
    own or a read-back inside another call's retry loop).
    Every method raises a :class:`~ufdl_node.errors.ServerError`:
    :class:`~ufdl_node.errors.TransientError` once retries are spent,
    a :class:`~ufdl_node.errors.RefusedError` subclass for a 4xx, or
    :class:`~ufdl_node.errors.MalformedReply` for a 2xx that is not the expected JSON.
    """

    def __init__(self, base_url: str, username: str, password: str, *, clock_skew_s: float = 300,
                 **transport_options: Any) -> None:
        self.transport = Transport(base_url, username, password, **transport_options)
        self.clock_skew_s = clock_skew_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, user={self.username!r})"

    @property
    def base_url(self) -> str:
        """The server's URL (no trailing slash)."""
        return self.transport.base_url

    @property
    def username(self) -> str:
        """The user the client logs in as."""
        return self.transport.username

    async def __aenter__(self) -> UfdlClient:
        await self.transport.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.transport.close()

    async def close(self) -> None:
        """Close the session (only when the transport created it)."""
        await self.transport.close()

    async def login(self) -> None:
        """Obtain a fresh token pair. Raises AuthenticationFailed on a wrong password."""
        await self.transport.login()

    def node_io(self, node_id: int | None = None, action: str = "handler") -> NodeIO:
        """The work toolkit's ServerIO (one exchange) over this client's transport, as `node_id`."""
        return self.transport.node_io(node_id, action)

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, str] | None = None, node_id: int | None = None,
                      data: bytes | None = None, headers: Mapping[str, str] | None = None) -> Any:
        """A call outside the protocol's list (a dataset's file, a licence), tried once: the
        decoded JSON of a 2xx reply. `data` sends raw bytes instead of `json`, with `headers`."""
        return await self.transport.request(method, path, json=NO_BODY if json is None else json,
                                            params=params, node_id=node_id, headers=headers,
                                            body=None if data is None else (lambda: data), attempts=1)

    async def _call(self, action: str, method: str, path: str, **options: Any) -> Any:
        """An idempotent call of the protocol: retried on transient faults (`attempts`)."""
        return await self.transport.request(method, path, action=action, **options)

    async def _once(self, action: str, method: str, path: str, **options: Any) -> Any:
        """A call that is not idempotent: tried once (its caller settles a fault)."""
        return await self.transport.request(method, path, action=action, attempts=1, **options)

    # -- nodes and hardware --------------------------------------------------------------

    async def list_nodes(self, spec: dict[str, Any], *, attempts: int | None = None) -> list[dict[str, Any]]:
        """Nodes matching a filter spec."""
        return as_list("list_nodes", await self._call("list_nodes", "POST", "/v1/nodes/list",
                                                           json=spec, attempts=attempts))

    async def find_node(self, ip: str, index: int, *, attempts: int | None = None) -> dict[str, Any] | None:
        """The node registered with exactly this ip and GPU index, or None."""
        for node in await self.list_nodes(_node_spec(ip, index), attempts=attempts):
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
        async for attempt in self.transport.retrying(action):
            with attempt:
                if uncertain and isinstance(ip, str) and isinstance(index, int):
                    found = await self.find_node(ip, index, attempts=1)
                    if found is not None:
                        return found  # our create landed; its reply was lost
                try:
                    return as_dict(action, await self._once(action, "POST", "/v1/nodes/create",
                                                                  json=fields))
                except TransientError:
                    uncertain = True
                    raise
                except BadRequest:
                    if not (uncertain and isinstance(ip, str) and isinstance(index, int)):
                        raise
                    found = await self.find_node(ip, index, attempts=1)
                    if found is None:
                        raise
                    return found
        raise AssertionError("unreachable")  # pragma: no cover

    async def update_node(self, pk: int, fields: dict[str, Any]) -> dict[str, Any]:
        """PATCH a node's fields, acting as that node."""
        return as_dict("update_node", await self._call("update_node", "PATCH", f"/v1/nodes/{pk}",
                                                          node_id=pk, json=fields))

    async def get_node(self, pk: int, *, node_id: int | None = None,
                       attempts: int | None = None) -> dict[str, Any]:
        """One node."""
        return as_dict("get_node", await self._call("get_node", "GET", f"/v1/nodes/{pk}",
                                                       node_id=node_id, attempts=attempts))

    async def delete_node(self, pk: int) -> None:
        """DELETE a node, acting as that node. The real server answers 204 but keeps a node
        that jobs refer to: read it back to know."""
        await self._call("delete_node", "DELETE", f"/v1/nodes/{pk}", node_id=pk)

    async def ping(self, node_id: int, *, attempts: int | None = None) -> None:
        """Tell the server the node is alive (updates last_seen)."""
        await self._call("ping", "GET", "/v1/nodes/ping", node_id=node_id, attempts=attempts)

    async def hardware_generations(self) -> list[dict[str, Any]]:
        """The server's GPU generations with their compute-capability ranges."""
        rows = await self._call("hardware_generations", "POST", "/v1/hardware/list", json={})
        return as_list("hardware_generations", rows,
                          ("pk", "generation", "min_compute_capability", "max_compute_capability"))

    # -- templates -------------------------------------------------------------------------

    async def list_templates(self, spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Job templates matching a filter spec (all active ones by default)."""
        return as_list("list_templates", await self._call(
            "list_templates", "POST", "/v1/job-templates/list", json=spec or {}))

    async def get_template(self, pk: int) -> dict[str, Any]:
        """One job template."""
        return as_dict("get_template", await self._call("get_template", "GET",
                                                    f"/v1/job-templates/{pk}"))

    async def import_template(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Import a job template (admin). Not retried: a repeat would import it twice."""
        return as_dict("import_template", await self._once(
            "import_template", "POST", "/v1/job-templates/import", json=spec))

    async def create_job(self, template_pk: int, input_values: dict[str, Any],
                         parameter_values: dict[str, Any], description: str = "",
                         notification_override: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a job from a template. Not retried: a repeat would create a second job."""
        body: dict[str, Any] = {"input_values": input_values,
                                "parameter_values": parameter_values or {}, "description": description}
        if notification_override is not None:
            body["notification_override"] = notification_override
        return as_dict("create_job", await self._once(
            "create_job", "POST", f"/v1/job-templates/{template_pk}/create-job", json=body))

    # -- jobs: reading -----------------------------------------------------------------------

    async def list_jobs(self, spec: dict[str, Any], node_id: int | None = None) -> list[dict[str, Any]]:
        """Jobs matching a filter spec."""
        return as_list("list_jobs", await self._call("list_jobs", "POST", "/v1/jobs/list",
                                                         node_id=node_id, json=spec))

    async def find_work(self, node_id: int | None = None, *, attempts: int | None = None,
                        narrow: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        """Jobs waiting for a worker (not started, not errored, not held, workable), pk ascending.

        ``attempts=1`` tries once: a poller with a backoff of its own wants to know at once.
        ``narrow``: filter expressions ANDed to the find-work filter (template names, pk range).
        """
        spec = find_work_spec()
        spec["expressions"].extend(narrow)
        jobs = await self._call("find_work", "POST", "/v1/jobs/list", node_id=node_id,
                                json=spec, attempts=attempts)
        return sorted(as_list("find_work", jobs), key=lambda j: j["pk"])

    async def get_job(self, pk: int, node_id: int | None = None, *,
                      attempts: int | None = None) -> dict[str, Any]:
        """One job."""
        return as_dict("get_job", await self._call("get_job", "GET", f"/v1/jobs/{pk}",
                                                      node_id=node_id, attempts=attempts))

    # -- jobs: the worker's lifecycle ---------------------------------------------------------

    async def _lifecycle(self, action: str, pk: int, node_id: int, method: str, path: str,
                         settle: Callable[[dict[str, Any]], Awaitable[bool]],
                         json: Any = NO_BODY) -> dict[str, Any]:
        """A call that is not idempotent, made safe by reading the job back.

        After a transient fault nobody knows whether the call landed. Before trying
        again, the job is read back and `settle` decides: True (it landed: return the
        job), False (it did not: call again), or it raises NotAcceptable (the call has
        become illegal; the real server answers such calls with 500, which must not be
        retried forever). A refusal that follows an uncertain attempt is settled the
        same way, since it may be the server refusing to do twice what it did once.
        A read-back tries once: it runs inside the retry loop of the call it settles.
        """
        uncertain = False
        async for attempt in self.transport.retrying(action):
            with attempt:
                if uncertain:
                    job = await self.get_job(pk, node_id, attempts=1)
                    if await settle(job):
                        log.info("api_settled", action=action, job_pk=pk, outcome="landed")
                        return job
                try:
                    return as_dict(action, await self._once(action, method, path, node_id=node_id,
                                                                  json=json))
                except TransientError:
                    uncertain = True
                    raise
                except (NotAcceptable, PermissionDenied, BadRequest):
                    if not uncertain:
                        raise
                    job = await self.get_job(pk, node_id, attempts=1)
                    if await settle(job):
                        return job
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _illegal(action: str, pk: int, job: Mapping[str, Any], why: str) -> NotAcceptable:
        return NotAcceptable(action, f"job {pk} is {phase(job)} "
                             f"(node {pk_of(job.get('node'))}): {why}")

    async def acquire(self, pk: int, node_id: int, *, verify: bool = True) -> dict[str, Any]:
        """Hold a job for a node; the job as a fresh GET shows it.

        The server's acquire reads then writes: two nodes racing can both get 200.
        So the job is read back, and NotAcceptable is raised unless this node holds it
        (the same error as losing the race outright). `verify=False` skips the read-back
        and answers what acquire did: for a caller that starts the job next and checks
        the start's reply instead, which the server reads later than this read-back would
        be (the daemon's slots do; see :meth:`Slot._run`).
        """
        async def settle(job: dict[str, Any]) -> bool:
            holder = pk_of(job.get("node"))
            if holder == node_id:
                return True  # ours: the lost reply was a 200
            if holder is None and job.get("end_time") is None:
                return False  # free and not finalised: the call did not land, acquire again
            raise self._illegal("acquire", pk, job, "held by another node or finalised")

        acquired = await self._lifecycle("acquire", pk, node_id, "GET", f"/v1/jobs/{pk}/acquire", settle)
        if not verify:
            return acquired
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
            if phase(job) is not Phase.CREATED:
                return True  # started and held by us: our start landed
            return False  # still CREATED and ours: start again

        return await self._lifecycle("start", pk, node_id, "POST", f"/v1/jobs/{pk}/start", settle,
                                     json={"send_notification": _NOTIFY})

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
            kwargs["json"] = {(f"data_{k}" if k in PROGRESS_RESERVED else k): v for k, v in data.items()}
        # Progress is best effort (the next report supersedes it): one retry, not a schedule.
        reply = await self._call("progress", "POST", f"/v1/jobs/{pk}/progress/{value}", attempts=2, **kwargs)
        return as_dict("progress", reply) if reply is not None else {"pk": pk}

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
            node = await self.get_node(node_id, node_id=node_id, attempts=1)
            current = pk_of(node.get("current_job"))
            if current == pk:
                return False  # still our current job: finish has not landed, call it again
            if job.get("is_cancelled") or pk_of(job.get("node")) != node_id:
                # Cancelled or aborted: finish only clears current_job, and it is clear.
                return True
            if phase(job) is Phase.CREATED:
                raise self._illegal("finish", pk, job, "never started (the real server answers 500)")
            return False  # STARTED, held by us, but not our current job: let the server decide

        return await self._lifecycle("finish", pk, node_id, "POST", f"/v1/jobs/{pk}/finish", settle,
                                     json=body)

    async def reset(self, pk: int, node_id: int) -> dict[str, Any]:
        """Put an ERRORED job back to CREATED (still held by this node)."""
        async def settle(job: dict[str, Any]) -> bool:
            current = phase(job)
            if pk_of(job.get("node")) != node_id:
                raise self._illegal("reset", pk, job, "not held by this node")
            if current is Phase.CREATED:
                return True  # back to CREATED and still ours: the reset landed
            if current is Phase.ERRORED:
                return False  # not reset yet: reset again
            raise self._illegal("reset", pk, job, "only an ERRORED job can be reset")

        return await self._lifecycle("reset", pk, node_id, "DELETE", f"/v1/jobs/{pk}/reset", settle)

    async def release(self, pk: int, node_id: int) -> dict[str, Any]:
        """Give a held job (CREATED or ERRORED) back to the pool."""
        async def settle(job: dict[str, Any]) -> bool:
            if pk_of(job.get("node")) != node_id:
                return True  # no longer ours (released, or taken by abort): nothing left to do
            if phase(job) in (Phase.CREATED, Phase.ERRORED):
                return False  # still ours: release again
            # STARTED: the real server answers 500; FINISHED: 406. Either way it stays.
            raise self._illegal("release", pk, job, "a started or finished job cannot be released")

        return await self._lifecycle("release", pk, node_id, "DELETE", f"/v1/jobs/{pk}/release", settle)

    async def cancel(self, pk: int) -> dict[str, Any]:
        """Cancel a job (admin). A finalised job is left as it is."""
        return as_dict("cancel", await self._call("cancel", "DELETE", f"/v1/jobs/{pk}/cancel"))

    async def abort(self, pk: int) -> dict[str, Any]:
        """Abort a job back to CREATED, unheld, outputs removed (admin)."""
        return as_dict("abort", await self._call("abort", "DELETE", f"/v1/jobs/{pk}/abort"))

    # -- outputs -----------------------------------------------------------------------------

    @staticmethod
    def _output_path(pk: int, name: str, type_: str) -> str:
        return f"/v1/jobs/{pk}/outputs/{_seg(name)}/{_seg(type_)}"

    async def output_info(self, pk: int, name: str, type_: str, *,
                          attempts: int | None = None) -> dict[str, Any] | None:
        """An output's record (with creation_time and deletion_time), or None when there is none."""
        try:
            info = await self._call("output_info", "GET", self._output_path(pk, name, type_) + "/info",
                                    attempts=attempts)
        except (BadRequest, NotFound):
            return None
        return as_dict("output_info", info, ("name", "type"))

    async def _landed(self, pk: int, name: str, type_: str, began: float) -> dict[str, Any] | None:
        """After an uncertain or refused upload: the output record if our upload landed,
        None if nothing is there; OutputRefused if a record is there that is not ours."""
        info = await self.output_info(pk, name, type_, attempts=1)
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
                # Streamed with a Content-Length, the next chunk read while this one is sent.
                return UploadFile(source)

        began_wall, began = time.time(), time.monotonic()
        uncertain = False

        def done(info: dict[str, Any]) -> dict[str, Any]:
            if self.transport.metrics is not None:
                self.transport.metrics.upload_bytes.inc(size)
                self.transport.metrics.upload_duration.observe(time.monotonic() - began)
            log.info("api_uploaded", job_pk=pk, output=f"{name}/{type_}", bytes=size,
                     duration_s=round(time.monotonic() - began, 3))
            return info

        async for attempt in self.transport.retrying(action):
            with attempt:
                if uncertain:
                    info = await self._landed(pk, name, type_, began_wall)
                    if info is not None:
                        return done(info)
                try:
                    reply = await self._once(action, "POST", path, node_id=node_id, body=body,
                                                headers=headers, transfer=True)
                except TransientError:
                    uncertain = True
                    raise
                except BadRequest:
                    # "already has an output": ours from an attempt whose reply was lost, or not ours.
                    info = await self._landed(pk, name, type_, began_wall)
                    if info is not None:
                        return done(info)
                    raise
                return done(as_dict(action, reply, ("name",)))
        raise AssertionError("unreachable")  # pragma: no cover

    async def download_output(self, pk: int, name: str, type_: str, dest: Path) -> Path:
        """Stream an output's bytes to `dest` (atomically)."""
        return await self._download("download_output", self._output_path(pk, name, type_), Path(dest))

    async def download(self, path: str, dest: Path) -> Path:
        """Stream any authenticated GET under the server to `dest` (temp file, then rename)."""
        return await self._download("download", path, Path(dest))

    async def _download(self, action: str, path: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        async for attempt in self.transport.retrying(action):
            with attempt:
                fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
                try:
                    with os.fdopen(fd, "wb") as f:
                        async with self.transport.stream("GET", path, action=action,
                                                         transfer=True) as resp:
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
        ws = await self.transport.websocket("watch_job", self.job_ws_url(pk))
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
