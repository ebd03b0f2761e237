"""The one exception tree of ufdl-node.

Every error the project raises on purpose derives from :class:`UfdlNodeError`.
Talking to a job server splits into :class:`TransientError` (worth a retry:
connection faults, timeouts, 5xx, 429) and :class:`RefusedError` (the server
said no: never retried blindly). Handlers raise :class:`JobFailed` for a clean
error and :class:`RetryJob` for a transient one.

Messages are one line and never carry a password or a token.
"""

from __future__ import annotations

import enum


class UfdlNodeError(Exception):
    """Root of every error ufdl-node raises on purpose."""


class ConfigError(UfdlNodeError):
    """The settings are not usable. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


# -- talking to a job server ---------------------------------------------------

DETAIL_LIMIT = 300  # characters of a server's reason kept in a message (one line)


class ServerError(UfdlNodeError):
    """A call to the job server did not give what was asked for.

    ``action`` names the call (``"acquire"``, ``"finish"``, ...), ``status`` is
    the HTTP status when one came back, ``detail`` the server's reason
    (truncated: the real server sends parse errors tens of KB long).
    """

    def __init__(self, action: str, message: str, *, status: int | None = None,
                 detail: str | None = None) -> None:
        self.action = action
        self.status = status
        self.detail = detail
        super().__init__(f"{action}: {message}")


class TransientError(ServerError):
    """A fault that may go away: worth retrying with backoff."""


class ServerUnavailable(TransientError):
    """The server could not be reached, or did not answer in time."""


class ServerFault(TransientError):
    """The server answered 5xx or 429. ``retry_after_s`` comes from Retry-After."""

    def __init__(self, action: str, message: str, *, status: int | None = None,
                 detail: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(action, message, status=status, detail=detail)
        self.retry_after_s = retry_after_s


class RefusedError(ServerError):
    """The server refused the call (4xx). Retrying the same call will not help."""


class BadRequest(RefusedError):
    """400: the request was malformed, or a rule of the server refused it."""


class AuthenticationFailed(RefusedError):
    """401 that survived a token refresh and a fresh login: wrong credentials."""


class PermissionDenied(RefusedError):
    """403: this user or node may not do that."""


class NotFound(RefusedError):
    """404: no such object (or a URL that does not route)."""


class NotAcceptable(RefusedError):
    """406: the transition is illegal in the job's phase, or another node holds it."""


class ExpectationFailed(RefusedError):
    """417: e.g. an output added to a job that has not started."""


class PayloadTooLarge(RefusedError):
    """413: an upload above the server's limit."""


class WebSocketRefused(RefusedError):
    """The server refused a job's web-socket handshake (the real server does unless the
    job asked for web-socket notifications): poll the job instead."""


class ClientClosed(ServerError):
    """A call after the client was closed (a task outliving its daemon's shutdown): refused
    here, so that it cannot open a new connection pool that nobody would close."""


class MalformedReply(ServerError):
    """The server answered 2xx with a body that is not what the protocol says."""


class OutputRefused(ServerError):
    """An output could not be stored for good.

    The real server keeps outputs soft-deleted after a reset, and refuses a
    re-upload of the same NAME/TYPE: a retried job cannot upload it again.
    """


_REFUSALS: dict[int, type[RefusedError]] = {
    400: BadRequest, 401: AuthenticationFailed, 403: PermissionDenied, 404: NotFound,
    406: NotAcceptable, 413: PayloadTooLarge, 417: ExpectationFailed,
}
_TRANSIENT_4XX = frozenset({408, 425, 429})


def error_for_status(action: str, status: int, message: str, *, detail: str | None,
                     retry_after_s: float | None) -> ServerFault | RefusedError:
    """The error a non-2xx reply with `status` means: a ServerFault (5xx, 408, 425, 429: worth a
    retry, after `retry_after_s` when the server said so), else the RefusedError of that status."""
    if status >= 500 or status in _TRANSIENT_4XX:
        return ServerFault(action, message, status=status, detail=detail, retry_after_s=retry_after_s)
    return _REFUSALS.get(status, RefusedError)(action, message, status=status, detail=detail)


# -- handlers --------------------------------------------------------------------


class JobFailed(UfdlNodeError):
    """Raised by a handler: the job failed, with a readable one-line reason."""

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(str(reason).split()) or "job failed"
        super().__init__(self.reason)


class RetryJob(JobFailed):
    """Raised by a handler: a transient failure; hand the job back to run again.

    The node retries a job up to ``max_attempts`` times, then leaves it ERRORED
    with this reason.
    """


class PluginError(UfdlNodeError):
    """A handler plugin could not be loaded, or two claim one template."""


class ExitCode(enum.IntEnum):
    """What the ``ufdl-node`` command exits with (the README lists them)."""

    OK = 0  # done; for `run`: stopped cleanly, every job finished or was handed back
    FAILURE = 1  # an unexpected error, or a command that could not do what it was asked
    CONFIG = 2  # bad settings or handlers
    AUTH = 3  # the server refused the credentials
    FORCED = 4  # a second signal: stopped at once; the next start recovers
    INTERRUPTED = 130  # Ctrl-C outside the daemon's own signal handling (128 + SIGINT)
