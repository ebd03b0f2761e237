"""What a handler gets for one job: :class:`JobContext`, over the daemon's :class:`JobIO`."""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import re
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import JobFailed, RetryJob
from ..logs import one_line, scrub
from ..settings import NodeSettings
from .jobio import JobIO, JobLog
from .process import ProcessControl
from .spec import HandlerSpec
from .toolkit import WorkTools, safe_file_name
from .values import Value, resolve_inputs, resolve_parameters

_PLAIN = frozenset({str, int, float, bool, type(None)})  # progress data sent as it is
_INF = float("inf")


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """`data` as JSON can carry it: values JSON cannot hold (numpy scalars, paths) as text,
    and NaN or infinite numbers (a diverging loss) as null: servers refuse them in JSON."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in data.items()}
    try:
        json.dumps(clean, allow_nan=False)
        return clean
    except (TypeError, ValueError):
        return dict(json.loads(json.dumps(clean, default=str), parse_constant=lambda _: None))


class JobContext(ProcessControl, WorkTools):
    """Everything a handler gets for one job.

    Attributes: ``job`` and ``template`` (the server's objects), ``spec`` (this
    handler), ``work_dir`` (private to the job, created), ``cache_dir`` (shared
    between jobs, created), ``log`` (bound to the job, mirrored to the job
    log), ``inputs`` and ``parameters`` (:class:`Value` by name), ``params``
    (plain values by name), ``settings`` (the node's settings, or None),
    ``cancel_event``, ``gpu`` (the slot's GPU: ``index``, ``uuid``, ``name``,
    ``mem_bytes``, ``compute_capability``; None on a CPU slot) and ``env``
    (variables every ``run()`` gets, e.g. ``CUDA_VISIBLE_DEVICES`` naming the
    slot's GPU, so that a subprocess sees only the GPU its node was given).

    The constructor resolves inputs and parameters and raises JobFailed when
    they do not fit the template; it makes ``work_dir`` unless ``work_dir_made``
    says its caller has. What the job works on (``ctx.server``,
    ``ctx.dataset()``, ``ctx.model()``, ...) comes from :class:`~.toolkit.WorkTools`.
    """

    def __init__(self, *, job: dict[str, Any], template: dict[str, Any], spec: HandlerSpec,
                 work_dir: Path, cache_dir: Path, io: JobIO, cancel_event: asyncio.Event,
                 logger: Any, settings: NodeSettings | None = None, cancel_grace_s: float = 10.0,
                 gpu: Any = None, env: dict[str, str] | None = None, work_dir_made: bool = False) -> None:
        self.job = job
        self.template = template
        self.spec = spec
        self.work_dir = Path(work_dir)
        self.cache_dir = Path(cache_dir)
        self.io = io
        self.cancel_event = cancel_event
        self.settings = settings
        self.cancel_grace_s = cancel_grace_s
        self.gpu = gpu
        self.env: dict[str, str] = dict(env or {})
        self.log = JobLog(logger, io)
        self.inputs: dict[str, Value] = resolve_inputs(job.get("input_values"))
        self.parameters: dict[str, Value] = resolve_parameters(template.get("parameters"),
                                                               job.get("parameter_values"))
        self.params: dict[str, Any] = {name: v.value for name, v in self.parameters.items()}
        if not work_dir_made:  # the daemon's slot has just made it: not a system call more per job
            self.work_dir.mkdir(parents=True, exist_ok=True)
        if not self.cache_dir.is_dir():  # shared, made once: one stat (a mkdir that fails costs two)
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    @property
    def pk(self) -> int | None:
        """The job's primary key."""
        return self.job.get("pk")

    @property
    def cancelled(self) -> bool:
        """Whether the job has been cancelled (stop soon; the daemon also cancels the task)."""
        return self.cancel_event.is_set()

    def progress(self, amount: float, **data: Any) -> None:
        """Report progress `amount` in [0, 1] (clamped) with optional data such as ``loss=0.3``.

        Never waits on the network: the daemon sends the latest value in the background.
        Data must be JSON; other values (numpy scalars, paths) are sent as their text.
        The keys ``node``, ``progress``, ``self`` and ``transition`` reach watchers as
        ``data_node`` ... (the real server reserves them).
        """
        # Called in training loops: the common case (a number, plain values) costs ~1 µs.
        value = float(amount)
        if not 0.0 <= value <= 1.0:
            value = 1.0 if value > 1.0 else 0.0  # NaN compares false both ways: 0
        for item in data.values():
            if type(item) not in _PLAIN or (type(item) is float and not -_INF < item < _INF):
                data = _jsonable(data)
                break
        self.io.report_progress(value, data)

    async def upload(self, name: str, type_: str, path_or_bytes: Path | str | bytes) -> None:
        """Upload an output NAME/TYPE from a file (relative paths are in the work directory)
        or from bytes (written to a file in the work directory first)."""
        if isinstance(path_or_bytes, bytes):
            path = self.work_dir / ".outputs" / safe_file_name(name)
            await asyncio.to_thread(_write_new, path, path_or_bytes)
        else:
            path = self.confined(path_or_bytes, f"output {name!r}")
            if not await asyncio.to_thread(path.is_file):
                raise JobFailed(f"output {name!r}: {path} does not exist or is not a file")
        await self.io.upload(name, type_, path)

    async def download(self, path: str, dest: Path | str, *, method: str | None = None,
                       json: Any = None) -> Path:
        """Download server resource `path` to `dest` (relative to the work directory); return it.

        `method` defaults to POST for a ``.../download`` path (a dataset's archive, a job
        output by pk: the real server answers GET there with a 500) and GET otherwise;
        `json` is the request body (``{"filetype": "tar.gz"}``). Transient faults are
        retried for ``handler_io_retry_s``, then the job fails; the file appears only
        when complete.
        """
        target = self.confined(dest, f"download of {path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        verb = method or ("POST" if path.split("?", 1)[0].rstrip("/").endswith("/download") else "GET")
        return await self.server.download(verb.upper(), path, target, json=json)

    async def container(self, image: str | Mapping[str, Any], command: Sequence[str] | str, *,
                        progress_regex: str | re.Pattern[str] | None = None,
                        env: Mapping[str, str] | None = None, binds: Sequence[str] = (),
                        check: bool = True, shm_size_bytes: int | None = None) -> int:
        """Run `command` in a Docker container for the job; its exit code.

        `image` is a plain reference or a docker-image record (``ctx.docker_image(...)``):
        pulled with the record's credentials per the node's ``docker_pull_policy``, pull
        progress shown as job progress. The container gets the slot's GPU only (none on a
        CPU slot or for an image marked ``cpu``), the work directory at ``/workspace`` (its
        working directory) and the cache at ``/.cache``, runs as the node's user, and
        carries labels naming node, slot and job. Its output goes to the job log line by
        line (of a tqdm bar's ``\\r``-joined updates, the last), every update through
        `progress_regex` (as :meth:`run`); `shm_size_bytes` replaces the node's ``docker_shm_size_bytes``. A
        non-zero exit with `check` raises JobFailed with the last lines; a registry refusing
        the credentials hands the job back (RetryJob). Cancellation stops (``cancel_grace_s``) and removes it.
        If the daemon dies, the container keeps running and the restarted daemon's run of
        this handler follows it instead of starting it again.
        """
        runner = getattr(self.io, "containers", None)
        if runner is None:
            raise JobFailed("this node does not run containers for its jobs")
        code: int = await runner.run(self, image, command, progress_regex=progress_regex, env=env,
                                     binds=binds, check=check, shm_size_bytes=shm_size_bytes)
        return code

    def confined(self, path: Path | str, what: str) -> Path:
        """`path` (relative to the work directory) resolved, if it stays inside the work or
        cache directory; JobFailed otherwise. Names that come from a job or a server (a
        dataset's file names, say) must never reach other files of the machine."""
        resolved = (self.work_dir / path).resolve()
        for root in (self.work_dir.resolve(), self.cache_dir.resolve()):
            if resolved == root or resolved.is_relative_to(root):
                return resolved
        raise JobFailed(f"{what}: {path} is outside the job's work and cache directories")


def _write_new(path: Path, data: bytes) -> None:
    """`data` as a new file at `path` (written, then renamed over the name; blocking): the
    daemon stages an output as a link to its file, which must not change once handed over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.part")
    temp.write_bytes(data)
    os.replace(temp, path)


# -- failures -----------------------------------------------------------------------------


def describe_failure(exc: BaseException, handler: str | None = None) -> tuple[str, bool]:
    """The one-line reason a job failed with `exc`, and whether it is worth a retry.

    JobFailed and RetryJob give their reason; anything else gives
    ``"ValueError: bad thing (in handler demo_train at demo_train.py:42)"``. An OSError
    for a full disk (ENOSPC, EDQUOT: the node's work or cache disk) is worth a retry,
    counted against ``max_attempts`` like any other: a job that fills every disk ends
    ERRORED rather than going round the nodes for ever.
    """
    if isinstance(exc, RetryJob):
        return exc.reason, True
    if isinstance(exc, JobFailed):
        return exc.reason, False
    if isinstance(exc, asyncio.CancelledError):
        return "Cancelled", False
    message = one_line(exc, 300)
    where = []
    if handler:
        where.append(f"in handler {handler}")
    frame = _handler_frame(exc)
    if frame is not None:
        where.append(f"at {os.path.basename(frame.filename)}:{frame.lineno}")
    reason = type(exc).__name__ + (f": {message}" if message else "")
    reason = f"{reason} ({' '.join(where)})" if where else reason
    if _disk_full(exc):  # the node's disk, not the job: another node (or this one later) may run it
        return f"the node's disk is full: {reason}", True
    return reason, False


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # ufdl_node/
_SHIPPED_IN_PACKAGE = os.path.join(_PACKAGE_DIR, "builtin_handlers")  # a wheel's built-in handlers
_STDLIB_DIR = os.path.dirname(os.path.abspath(traceback.__file__))


def _internal(filename: str) -> bool:
    """Whether a frame of `filename` is ufdl-node's own or the standard library's (not a handler's)."""
    path = os.path.abspath(filename)
    if path.startswith(_SHIPPED_IN_PACKAGE + os.sep):
        return False
    return path.startswith((_PACKAGE_DIR + os.sep, _STDLIB_DIR + os.sep)) or filename.startswith("<")


def _handler_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The deepest frame of the handler's own code where `exc` passed: the last of the first run of
    frames that are not ufdl-node's or the standard library's (a failure inside ``ctx.download`` is
    the handler's line that called it, not transport.py's); None when the handler's code is not in
    the traceback."""
    chosen = None
    for frame in traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []:
        if _internal(frame.filename):
            if chosen is not None:
                break
            continue
        chosen = frame
    return chosen


def _disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it came from, is ENOSPC or EDQUOT."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        current = current.__cause__ or current.__context__
    return False


def format_traceback(exc: BaseException) -> str:
    """The traceback of `exc` as text for the job log, secrets masked."""
    return scrub("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
