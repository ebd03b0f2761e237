"""Structured logging: structlog, console on a TTY, JSON lines otherwise.

Per-job context (``job_pk``, ``template``, ``slot``, ``node``) is bound through
contextvars (``bind_job``), so every line a job's code logs carries it. A
redaction processor masks secret-looking keys, every JWT, and each value registered
with ``register_secret`` wherever it stands whole (not inside a longer word or name),
so passwords and tokens never reach a log line while names that merely contain one
stay readable. A user name is not a secret: a password equal to its user's name is
not registered (it would mask the name everywhere, e.g. the stock records' ``public``).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

SECRET_KEYS = frozenset({"password", "token", "access", "refresh", "authorization",
                         "secret", "admin", "worker_password", "admin_password"})
REDACTED = "***"

# Every JWT (access and refresh tokens, whoever issued them) is masked by its shape, so
# tokens need no registering: a daemon refreshing every few minutes for weeks would
# otherwise grow the registry, and the cost of rebuilding its pattern, without bound.
JWT_RE = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*")
MAX_SECRETS = 64  # passwords and other registered values; the oldest are dropped first

_secrets: dict[str, None] = {}  # insertion-ordered
_secrets_lock = threading.Lock()
_secret_re: re.Pattern[str] | None = None


def register_secret(value: str | None, *, public: str | None = None) -> None:
    """Mask `value` in every log line from now on (passwords; tokens are masked by shape), where
    it stands whole. `public`: the name the value belongs to (a user name, which logs show);
    a value equal to it is no secret and is not registered."""
    global _secret_re
    if not value or len(value) < 4 or JWT_RE.fullmatch(value) or value == public:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets[value] = None
        while len(_secrets) > MAX_SECRETS:
            del _secrets[next(iter(_secrets))]
        # longest first, so that a secret containing another is masked whole
        ordered = sorted(_secrets, key=len, reverse=True)
        # whole values only: not inside a longer run of letters and digits (an image name that
        # contains a password of four letters keeps its name)
        _secret_re = re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(re.escape(s) for s in ordered)
                                + r")(?![A-Za-z0-9_])")


def scrub(text: str) -> str:
    """`text` with every JWT and every registered secret replaced by '***'."""
    text = JWT_RE.sub(REDACTED, text)
    pattern = _secret_re
    return pattern.sub(REDACTED, text) if pattern is not None else text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: (REDACTED if str(k).lower() in SECRET_KEYS else _scrub_value(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v) for v in value)
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    return value


def redact_processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) \
        -> MutableMapping[str, Any]:
    """structlog processor: mask secret keys and registered secret values."""
    for key in list(event_dict):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub_value(event_dict[key])
    return event_dict


def _scrub_rendered(_logger: Any, _name: str, event_dict: Any) -> Any:
    # After rendering (exception tracebacks are text by now): one last pass.
    return scrub(event_dict) if isinstance(event_dict, str) else event_dict


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog (and the stdlib root logger) once, for the whole process.

    `fmt` is "console", "json" or "auto" (console on a TTY, JSON otherwise).
    """
    stream = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
    ]
    renderer: Any
    if fmt == "json":
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        # A plain traceback: rich's default shows the frames' local variables, and those
        # can hold a password or a request body.
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)(),
                                                 exception_formatter=structlog.dev.plain_traceback)
    structlog.configure(
        processors=[*shared, renderer, _scrub_rendered],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the stdlib (aiohttp.access, asyncio) go to the same stream.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_ufdl_node", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler._ufdl_node = True  # type: ignore[attr-defined]
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer,
                    _scrub_rendered],
        foreign_pre_chain=shared))
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.INFO) if numeric < logging.INFO else numeric)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger; `initial` values are bound to every line it writes."""
    logger = structlog.get_logger(name) if name else structlog.get_logger()
    return logger.bind(**initial) if initial else logger


@contextmanager
def bind_job(**values: Any) -> Iterator[None]:
    """Bind `values` (job_pk, template, slot, node) to every line logged inside."""
    with structlog.contextvars.bound_contextvars(**values):
        yield


def one_line(text: object, limit: int = 500) -> str:
    """`text` on one line, secrets masked, cut to `limit` characters."""
    flat = scrub(" ".join(str(text).split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
