"""The handler plugin API: the only module a handler imports.

A handler is an ``async def`` that takes a :class:`JobContext`, registered for
one or more job-template names with :func:`handler`::

    from ufdl_node.api import JobContext, JobFailed, handler

    @handler("my_train", versions=">=1,<3")
    async def run(ctx: JobContext) -> None:
        epochs = ctx.params["epochs"]
        ...
        ctx.progress(0.5, loss=0.3)
        await ctx.upload("model", "Blob", ctx.work_dir / "model.bin")

Handlers report failure by raising: :class:`JobFailed` for a clean error,
:class:`RetryJob` for a transient one (the job is handed back and runs again);
any other exception fails the job with a one-line reason and the traceback in
the job log.

Where handlers come from (see :mod:`ufdl_node.registry`): every ``*.py`` file
(not starting with ``_``) in a handler directory, and entry points in the group
``ufdl_node.handlers``. A module is scanned for :class:`HandlerSpec` objects
(what :func:`handler` returns); a module may also define
``def handlers(settings) -> Iterable[HandlerSpec]`` to make handlers from the
node's settings at load time (the built-in ``command`` handler does this).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import shlex
import signal
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import JobFailed, PluginError, RetryJob
from ..logs import one_line, scrub
from .values import Value, parse_value, resolve_inputs, resolve_parameters

__all__ = [
    "MISSING",
    "HandlerFunc",
    "HandlerSpec",
    "JobContext",
    "JobFailed",
    "JobIO",
    "Needs",
    "Parameter",
    "PluginError",
    "RetryJob",
    "TemplateDescription",
    "Value",
    "VersionRange",
    "describe_failure",
    "format_traceback",
    "handler",
    "parse_value",
    "replace_spec",
    "resolve_inputs",
    "resolve_parameters",
    "safe_file_name",
]


class _Missing:
    """Type of :data:`MISSING`: no default was given."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
"""A parameter without a default: the job must give a value."""


# -- what a handler declares ------------------------------------------------------


@dataclass(frozen=True)
class Needs:
    """What a handler needs from the machine; the daemon offers a job only to a slot that has it."""

    gpu: bool = False
    min_gpu_mem_bytes: int = 0
    min_compute_capability: float | None = None
    min_free_disk_bytes: int = 0

    def summary(self) -> str:
        """One short line, e.g. ``"gpu, >=8.0 GiB GPU memory"`` or ``"cpu"``."""
        parts = ["gpu" if self.gpu else "cpu"]
        if self.min_gpu_mem_bytes:
            parts.append(f">={self.min_gpu_mem_bytes / 2**30:.1f} GiB GPU memory")
        if self.min_compute_capability is not None:
            parts.append(f"compute capability >={self.min_compute_capability}")
        if self.min_free_disk_bytes:
            parts.append(f">={self.min_free_disk_bytes / 2**30:.1f} GiB free disk")
        return ", ".join(parts)


@dataclass(frozen=True)
class Parameter:
    """A parameter of a job template: its name, allowed UFDL types, default and help.

    ``const`` parameters keep their default: a job that sets another value fails.
    """

    name: str
    types: tuple[str, ...]
    default: Any = MISSING
    help: str = ""
    const: bool = False

    def _default_type(self) -> str:
        """The first of the types the default fits (0.5 is a Float even where Integer comes first)."""
        for type_ in self.types:
            try:
                parse_value(self.name, type_, self.default)
            except JobFailed:
                continue
            return type_
        return self.types[0]

    def to_template(self) -> dict[str, Any]:
        """This parameter as an entry of a template's ``parameters`` object."""
        entry: dict[str, Any] = {"types": list(self.types), "help": self.help}
        if self.default is not MISSING:
            entry["default"] = self.default
            entry["default_type"] = self._default_type()
        if self.const:
            entry["const"] = True
        return entry


@dataclass(frozen=True)
class TemplateDescription:
    """The job template a handler serves, so that the embedded server and ``dry-run``
    can create a matching template and jobs without hand-written JSON.

    ``job_type`` is the contract (``"Train"``, ``"Predict"``, ``"Export"``) or a
    full contract type; ``domain`` and ``framework`` (``"name"`` or
    ``"name:version"``) become its type arguments. ``inputs`` maps input names
    to UFDL types (a ``Train`` contract has ``{"dataset": "PK<Dataset<...>>"}``).
    """

    job_type: str = "Export"
    domain: str | None = None
    framework: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    parameters: tuple[Parameter, ...] = ()
    description: str = ""

    def contract_type(self) -> str:
        """The contract as a UFDL type: ``Train<Domain<'Image Classification'>, Framework<'x', '1'>>``."""
        if "<" in self.job_type or (self.domain is None and self.framework is None):
            return self.job_type
        args = []
        if self.domain is not None:
            args.append(f"Domain<'{self.domain}'>")
        if self.framework is not None:
            fname, _, fversion = self.framework.partition(":")
            args.append(f"Framework<'{fname}', '{fversion or '1'}'>")
        return f"{self.job_type}<{', '.join(args)}>"

    def template_parameters(self) -> dict[str, dict[str, Any]]:
        """The ``parameters`` object of the template, as the server shows it."""
        return {p.name: p.to_template() for p in self.parameters}

    def import_spec(self, name: str, version: int = 1) -> dict[str, Any]:
        """The body for ``POST /v1/job-templates/import`` (the real server's format)."""
        spec: dict[str, Any] = {
            "name": name,
            "version": version,
            "description": self.description or f"{name} (ufdl-node handler)",
            "scope": "public",
            "licence": "Apache 2.0",
            "specific": {
                "job_type": self.contract_type(),
                "executor_class": f"ufdl_node.handler.{name}",
                "required_packages": "",
                "parameters": self.template_parameters(),
            },
        }
        if self.domain is not None:
            spec["domain"] = self.domain
        return spec


# -- version ranges -------------------------------------------------------------------

_CONSTRAINT_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+)\s*$")
_OPS: dict[str, Callable[[int, int], bool]] = {
    ">=": lambda v, n: v >= n, "<=": lambda v, n: v <= n, ">": lambda v, n: v > n,
    "<": lambda v, n: v < n, "==": lambda v, n: v == n, "!=": lambda v, n: v != n,
}


@dataclass(frozen=True)
class VersionRange:
    """A range of template versions such as ``">=1,<3"`` or ``"==2"`` (integers only).

    Comma-separated constraints with ``>=``, ``<=``, ``>``, ``<``, ``==``, ``!=``;
    all must hold. A bare number means ``==``. ``None`` or ``""`` means any version.
    """

    constraints: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> VersionRange:
        """Parse `text`; raise ValueError with the offending part on a bad range."""
        if text is None or not text.strip():
            return cls()
        parts = []
        for raw in text.split(","):
            part = raw.strip()
            if part.lstrip("-").isdigit():
                part = "==" + part
            match = _CONSTRAINT_RE.match(part)
            if match is None:
                raise ValueError(f"bad version constraint {raw.strip()!r} in {text!r} "
                                 "(expected e.g. '>=1,<3')")
            parts.append((match.group(1), int(match.group(2))))
        return cls(tuple(parts))

    def __contains__(self, version: int) -> bool:
        return all(_OPS[op](version, n) for op, n in self.constraints)

    def overlaps(self, other: VersionRange) -> bool:
        """Whether some version >= 0 lies in both ranges."""
        lo, hi = 0, math.inf
        exact: set[int] = set()
        excluded: set[int] = set()
        for op, n in (*self.constraints, *other.constraints):
            if op == ">=":
                lo = max(lo, n)
            elif op == ">":
                lo = max(lo, n + 1)
            elif op == "<=":
                hi = min(hi, n)
            elif op == "<":
                hi = min(hi, n - 1)
            elif op == "==":
                exact.add(n)
            else:
                excluded.add(n)
        if exact:
            return len(exact) == 1 and all(lo <= n <= hi and n not in excluded for n in exact)
        if hi == math.inf:
            return True
        return any(v not in excluded for v in range(lo, int(hi) + 1))

    def __str__(self) -> str:
        return ",".join(f"{op}{n}" for op, n in self.constraints) or "any"


# -- the handler spec and decorator ---------------------------------------------------

HandlerFunc = Callable[["JobContext"], Awaitable[None]]


@dataclass(frozen=True)
class HandlerSpec:
    """A registered handler: what :func:`handler` returns and the registry collects.

    Calling the spec calls the handler function, so a decorated ``run`` stays
    callable as ``await run(ctx)``.
    """

    name: str
    templates: tuple[str, ...]
    func: HandlerFunc
    needs: Needs = Needs()
    versions: str | None = None
    description: TemplateDescription | None = None
    source: str = ""
    version_range: VersionRange = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "version_range", VersionRange.parse(self.versions))

    def serves(self, template_name: str, version: int) -> bool:
        """Whether this handler runs jobs of template `template_name` at `version`."""
        return template_name in self.templates and version in self.version_range

    def conflicts_with(self, other: HandlerSpec) -> str | None:
        """The first template name both claim for overlapping versions, or None."""
        for name in self.templates:
            if name in other.templates and self.version_range.overlaps(other.version_range):
                return name
        return None

    def __call__(self, ctx: JobContext) -> Awaitable[None]:
        return self.func(ctx)


def handler(*templates: str, versions: str | None = None, needs: Needs = Needs(),
            description: TemplateDescription | None = None,
            name: str | None = None) -> Callable[[HandlerFunc], HandlerSpec]:
    """Register ``async def run(ctx: JobContext) -> None`` for job templates `templates`.

    `versions` limits it to a range of template versions (``">=1,<3"``); `needs`
    says what the machine must have; `description` describes the template so
    that it can be created on a server; `name` defaults to the first template.
    The decorated name becomes a :class:`HandlerSpec` (still awaitable with a
    context), which the registry finds by scanning the module.
    """
    if not templates or not all(isinstance(t, str) and t for t in templates):
        raise ValueError("@handler needs at least one job-template name")
    VersionRange.parse(versions)  # fail at import time, where the plugin is named

    def decorate(func: HandlerFunc) -> HandlerSpec:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@handler({templates[0]!r}): {getattr(func, '__qualname__', func)!r} "
                            "must be an async function taking a JobContext")
        code = getattr(func, "__code__", None)
        return HandlerSpec(name=name or templates[0], templates=tuple(templates), func=func,
                           needs=needs, versions=versions, description=description,
                           source=code.co_filename if code is not None else repr(func))

    return decorate


# -- what the daemon gives a handler ----------------------------------------------------


class JobIO(Protocol):
    """The daemon's side of a running job (implemented by its slot; tests use a fake)."""

    def report_progress(self, amount: float, data: dict[str, Any]) -> None:
        """Report progress in [0, 1]; never blocks (the daemon coalesces and sends later)."""

    async def upload(self, name: str, type_: str, path: Path) -> None:
        """Upload the file at `path` as output NAME/TYPE of the job."""

    async def download(self, path: str, dest: Path) -> Path:
        """Stream the server resource `path` (e.g. ``/v1/datasets/3/files/x``) to `dest`."""

    def write_log(self, line: str) -> None:
        """Append one line to the job log (uploaded as the output ``log``)."""


class _JobLog:
    """A structlog logger bound to the job whose lines are also written to the job log."""

    def __init__(self, logger: Any, io: JobIO) -> None:
        self._logger = logger
        self._io = io

    def bind(self, **values: Any) -> _JobLog:
        """A logger with `values` bound to every line."""
        return _JobLog(self._logger.bind(**values), self._io)

    def _emit(self, level: str, event: str, values: dict[str, Any]) -> None:
        getattr(self._logger, level)(event, **values)
        extra = " ".join(f"{k}={v}" for k, v in values.items() if k != "exc_info")
        self._io.write_log(scrub(f"{level.upper()} {event}" + (f" {extra}" if extra else "")))

    def debug(self, event: str, **values: Any) -> None:
        """Log at debug level."""
        self._emit("debug", event, values)

    def info(self, event: str, **values: Any) -> None:
        """Log at info level."""
        self._emit("info", event, values)

    def warning(self, event: str, **values: Any) -> None:
        """Log at warning level."""
        self._emit("warning", event, values)

    def error(self, event: str, **values: Any) -> None:
        """Log at error level."""
        self._emit("error", event, values)

    def exception(self, event: str, **values: Any) -> None:
        """Log at error level with the current exception's traceback."""
        self._logger.exception(event, **values)
        self._io.write_log(scrub(f"ERROR {event}"))
        for line in traceback.format_exc().rstrip().splitlines():
            self._io.write_log(scrub(line))


class JobContext:
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
    they do not fit the template.
    """

    def __init__(self, *, job: dict[str, Any], template: dict[str, Any], spec: HandlerSpec,
                 work_dir: Path, cache_dir: Path, io: JobIO, cancel_event: asyncio.Event,
                 logger: Any, settings: Any = None, cancel_grace_s: float = 10.0,
                 gpu: Any = None, env: dict[str, str] | None = None) -> None:
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
        self.log = _JobLog(logger, io)
        self.inputs: dict[str, Value] = resolve_inputs(job.get("input_values"))
        self.parameters: dict[str, Value] = resolve_parameters(template.get("parameters"),
                                                               job.get("parameter_values"))
        self.params: dict[str, Any] = {name: v.value for name, v in self.parameters.items()}
        self.work_dir.mkdir(parents=True, exist_ok=True)
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
        value = float(amount)
        value = 0.0 if math.isnan(value) else min(1.0, max(0.0, value))
        try:
            json.dumps(data)
        except (TypeError, ValueError):  # numpy scalars, paths, ...: send their text
            data = json.loads(json.dumps(data, default=str))
        self.io.report_progress(value, data)

    async def upload(self, name: str, type_: str, path_or_bytes: Path | str | bytes) -> None:
        """Upload an output NAME/TYPE from a file (relative paths are in the work directory)
        or from bytes (written to a file in the work directory first)."""
        if isinstance(path_or_bytes, bytes):
            path = self.work_dir / ".outputs" / safe_file_name(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(path_or_bytes)
        else:
            path = self.confined(path_or_bytes, f"output {name!r}")
            if not path.is_file():
                raise JobFailed(f"output {name!r}: {path} does not exist or is not a file")
        await self.io.upload(name, type_, path)

    async def download(self, path: str, dest: Path | str) -> Path:
        """Download server resource `path` to `dest` (relative to the work directory); return it."""
        target = self.confined(dest, f"download of {path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        return await self.io.download(path, target)

    def confined(self, path: Path | str, what: str) -> Path:
        """`path` (relative to the work directory) resolved, if it stays inside the work or
        cache directory; JobFailed otherwise. Names that come from a job or a server (a
        dataset's file names, say) must never reach other files of the machine."""
        resolved = (self.work_dir / path).resolve()
        for root in (self.work_dir.resolve(), self.cache_dir.resolve()):
            if resolved == root or resolved.is_relative_to(root):
                return resolved
        raise JobFailed(f"{what}: {path} is outside the job's work and cache directories")

    async def run(self, cmd: Sequence[str] | str, *, cwd: Path | str | None = None,
                  env: dict[str, str] | None = None,
                  progress_regex: str | re.Pattern[str] | None = None,
                  check: bool = True, timeout_s: float | None = None) -> int:
        """Run a subprocess for the job and return its exit status.

        `cmd` is an argument list, or a string run by ``/bin/sh -c``. It runs in
        its own process group in `cwd` (default: the work directory) with the
        node's environment plus `env`. Its stdout and stderr go to the job log
        line by line. With `progress_regex`, each output line is searched: a
        named group ``progress`` (0..1), ``percent`` (0..100) or ``step`` and
        ``total`` give the progress; other named groups are sent as progress data.

        On cancellation (the cancel event or the task being cancelled) and on
        `timeout_s`, the process group gets SIGTERM, then SIGKILL after
        ``cancel_grace_s``; cancellation raises asyncio.CancelledError, a timeout
        JobFailed. What the command leaves running in its group when it exits is
        killed. A nonzero exit with `check` raises JobFailed naming the command,
        the status and its last line on stderr.
        """
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
        if not argv:
            raise ValueError("run: empty command")
        label = one_line(cmd if isinstance(cmd, str) else shlex.join(argv), 120)
        pattern = re.compile(progress_regex) if isinstance(progress_regex, str) else progress_regex
        full_env = {**_child_environ(), "PYTHONUNBUFFERED": "1", **self.env, **(env or {})}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=str(self.work_dir / cwd) if cwd is not None else str(self.work_dir),
                env=full_env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except FileNotFoundError as e:
            raise JobFailed(f"command {label}: {e.filename or argv[0]} not found") from None
        except PermissionError:
            raise JobFailed(f"command {label}: {argv[0]} is not executable") from None
        self.log.info("command started", command=label, pid=proc.pid)
        last_stderr: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        readers = [asyncio.ensure_future(self._pump(proc.stdout, pattern, None)),
                   asyncio.ensure_future(self._pump(proc.stderr, pattern, last_stderr))]
        waiter = asyncio.ensure_future(_exited(proc))
        cancel_waiter = asyncio.ensure_future(self.cancel_event.wait())
        try:
            done, _ = await asyncio.wait({waiter, cancel_waiter}, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                await self._stop(proc)
                if cancel_waiter in done:
                    raise asyncio.CancelledError(f"job cancelled while running {label}")
                raise JobFailed(f"command {label} timed out after {timeout_s:g} s")
        except asyncio.CancelledError:
            await asyncio.shield(self._stop(proc))
            raise
        finally:
            cancel_waiter.cancel()
            _killpg(proc.pid, signal.SIGKILL)  # whatever it left running in its group
            await _until_group_gone(proc.pid, 2.0)
            # Readers end once every holder of the pipes is gone; never hang on them.
            _, pending = await asyncio.wait(readers, timeout=5)
            for task in pending:
                task.cancel()
        rc = proc.returncode if proc.returncode is not None else await waiter
        self.log.info("command exited", command=label, returncode=rc)
        if rc != 0 and check:
            how = f"was killed by {_signal_name(-rc)}" if rc < 0 else f"exited with {rc}"
            tail = f": {last_stderr[0]}" if last_stderr else ""
            raise JobFailed(f"command {label} {how}{tail}")
        return rc

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the process group; SIGKILL after the grace period."""
        if proc.returncode is not None:
            return
        self.log.info("stopping command", pid=proc.pid, grace_s=self.cancel_grace_s)
        _killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(_exited(proc), timeout=self.cancel_grace_s)
        except asyncio.TimeoutError:
            self.log.warning("command ignored SIGTERM; killing it", pid=proc.pid)
        _killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_exited(proc), timeout=5)

    async def _pump(self, stream: asyncio.StreamReader, pattern: re.Pattern[str] | None,
                    last: list[str] | None) -> None:
        """Copy a stream to the job log line by line; parse progress from each line.

        A carriage return (progress bars) ends a piece that is parsed for
        progress but not logged; the piece visible when the newline comes is.
        """
        buffer = b""
        visible = ""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            buffer += chunk
            pos = 0  # scan with an offset and trim once per read: slicing per line is quadratic
            while True:
                match = _LINE_END.search(buffer, pos)
                if match is not None:
                    piece, sep, pos = buffer[pos:match.start()], match.group(), match.end()
                elif len(buffer) - pos > 65536:  # a very long line: log it in pieces
                    piece, sep, pos = buffer[pos:], b"\n", len(buffer)
                else:
                    break
                text = piece.decode("utf-8", errors="replace").rstrip()
                if text:
                    visible = text
                    if pattern is not None:
                        self._parse_progress(pattern, text)
                if sep == b"\n":
                    if visible:
                        self.io.write_log(scrub(visible[:10000]))
                        if last is not None:
                            last[:] = [one_line(visible, 300)]
                    visible = ""
            buffer = buffer[pos:]
        text = buffer.decode("utf-8", errors="replace").rstrip() or visible
        if text:
            if pattern is not None:
                self._parse_progress(pattern, text)
            self.io.write_log(scrub(text[:10000]))
            if last is not None:
                last[:] = [one_line(text, 300)]

    def _parse_progress(self, pattern: re.Pattern[str], line: str) -> None:
        match = pattern.search(line)
        if match is None:
            return
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        try:
            if "progress" in groups:
                amount = float(groups.pop("progress"))
            elif "percent" in groups:
                amount = float(groups.pop("percent")) / 100
            elif "step" in groups and "total" in groups:
                step, total = float(groups.pop("step")), float(groups.pop("total"))
                amount = step / total if total > 0 else 0.0
            else:
                return
        except ValueError:
            return
        self.progress(amount, **{k: _number_or_text(v) for k, v in groups.items()})


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The exit status once the process has exited.

    Not ``proc.wait()``: before Python 3.12 it also waits for the pipes to
    close, which a child left running in the background can hold open forever.
    """
    while proc.returncode is None:  # noqa: ASYNC110 - the transport offers no earlier signal
        await asyncio.sleep(0.05)
    return proc.returncode


def _number_or_text(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() \
        else number


_SECRET_ENV = re.compile(r"^UFDL_NODE_.*(PASSWORD|SECRET|TOKEN|ADMIN|WORKER)", re.IGNORECASE)


# systemd's credentials (the node's password file) and notify socket are the daemon's alone.
_DAEMON_ENV = frozenset({"CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


def _child_environ() -> dict[str, str]:
    """The node's environment without its own credentials: a job's script has no use for them."""
    return {k: v for k, v in os.environ.items() if not _SECRET_ENV.match(k) and k not in _DAEMON_ENV}


_LINE_END = re.compile(rb"[\r\n]")


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (a zombie awaiting its reaper does not)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        import psutil  # a dependency of the daemon; imported here to keep api light
    except ImportError:  # pragma: no cover
        return True
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


async def _until_group_gone(pgid: int, timeout_s: float) -> None:
    """Wait (bounded) until a killed process group has died: the job's end means its processes' end."""
    for _ in range(max(1, int(timeout_s / 0.02))):  # no event tells of a grandchild's death: poll
        if not _group_alive(pgid):
            return
        await asyncio.sleep(0.02)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def safe_file_name(name: str) -> str:
    """A file name made from a name a job or a server gave: no separators, no dot-dot,
    never empty, at most 120 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned[:120] or "output"


# -- failures -----------------------------------------------------------------------------


def describe_failure(exc: BaseException, handler: str | None = None) -> tuple[str, bool]:
    """The one-line reason a job failed with `exc`, and whether it is worth a retry.

    JobFailed and RetryJob give their reason; anything else gives
    ``"ValueError: bad thing (in handler demo_train at demo_train.py:42)"``.
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
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if frames:
        where.append(f"at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}")
    reason = type(exc).__name__ + (f": {message}" if message else "")
    return (f"{reason} ({' '.join(where)})" if where else reason), False


def format_traceback(exc: BaseException) -> str:
    """The traceback of `exc` as text for the job log, secrets masked."""
    return scrub("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def replace_spec(spec: HandlerSpec, **changes: Any) -> HandlerSpec:
    """A copy of `spec` with `changes` (e.g. ``source=...``), for plugin hooks."""
    return dataclasses.replace(spec, **changes)
