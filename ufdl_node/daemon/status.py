"""The optional status endpoint (`status_listen`): /healthz, /status and /metrics.

A small aiohttp application started on its own runner beside the daemon. It
binds loopback by default: /status shows jobs and errors without any
authentication, so a non-loopback address must be allowed explicitly
(`status_allow_public`), and is logged as a warning even then.

- ``/healthz``: 200 ``{"status": "ok"}`` when ``healthy()`` says so, else 503
  ``{"status": "unhealthy", "reason": ...}``. ``healthy`` returns a bool or a
  ``(bool, reason)`` pair.
- ``/status``: ``status()`` as JSON (slots, current jobs, last errors, uptime).
- ``/metrics``: the Prometheus text format from :class:`~ufdl_node.metrics.Metrics`.

Whether or not the endpoint is on, :class:`SnapshotWriter` keeps the same ``/status``
data in ``<state_dir>/status.json`` (every few seconds, and once more at the stop),
so that ``ufdl-node status`` can answer from the state directory alone.

Both callables may be plain or async; they should only read state the daemon
keeps in memory, since a scraper calls them every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import ConfigError
from ..logs import get_logger, one_line
from ..metrics import Metrics

log = get_logger(__name__)

HealthResult = bool | tuple[bool, str | None]
HealthCheck = Callable[[], HealthResult | Awaitable[HealthResult]]
StatusSource = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


def parse_listen(listen: str) -> tuple[str, int]:
    """("host", port) from "HOST:PORT"; IPv6 may be bracketed ("[::1]:9100")."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"status_listen: {listen!r} is not HOST:PORT, e.g. 127.0.0.1:9100")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost' (no name lookup)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StatusServer:
    """/healthz, /status and /metrics on `listen`; port 0 picks a free port (see :attr:`url`)."""

    def __init__(self, listen: str, *, status: StatusSource, healthy: HealthCheck,
                 metrics: Metrics, allow_public: bool = False) -> None:
        self.host, self._port = parse_listen(listen)
        if not is_loopback(self.host) and not allow_public:
            raise ConfigError(
                f"status_listen: {self.host} is not a loopback address and the status endpoint has "
                f"no authentication; use 127.0.0.1, or set status_allow_public = true")
        self._status = status
        self._healthy = healthy
        self._metrics = metrics
        self._runner: web.AppRunner | None = None

    def create_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._handle_healthz)
        app.router.add_get("/status", self._handle_status)
        app.router.add_get("/metrics", self._handle_metrics)
        return app

    async def start(self) -> None:
        """Bind and serve. Raises ConfigError (one line) when the address cannot be bound."""
        if self._runner is not None:
            return
        # No access log: a scraper every few seconds would drown the daemon's own lines.
        runner = web.AppRunner(self.create_app(), access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except OSError as e:
            await runner.cleanup()
            raise ConfigError(f"status_listen: cannot listen on {self.host}:{self._port}: "
                              f"{e.strerror or e}") from None
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        if not is_loopback(self.host):
            log.warning("status_endpoint_public", url=self.url,
                        hint="anyone who can reach it sees job details")
        # The start itself is logged once, by the daemon ("status endpoint listening").

    async def stop(self) -> None:
        """Close the listener and open connections. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> StatusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one after start() when 0 was asked for)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    # -- handlers ----------------------------------------------------------------

    async def _handle_healthz(self, _request: web.Request) -> web.Response:
        try:
            ok, reason = _health(await _call(self._healthy))
        except Exception as e:
            ok, reason = False, f"health check failed: {type(e).__name__}: {e}"
        if ok:
            return web.json_response({"status": "ok"})
        body = {"status": "unhealthy", "reason": one_line(reason or "unhealthy")}
        return web.json_response(body, status=503)

    async def _handle_status(self, _request: web.Request) -> web.Response:
        try:
            data = await _call(self._status)
        except Exception as e:
            log.warning("status_failed", error=e)
            return web.json_response({"error": one_line(f"{type(e).__name__}: {e}")}, status=500)
        return web.json_response(data, dumps=_dumps)

    async def _handle_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _call(source: Callable[[], Any]) -> Any:
    result = source()
    return await result if inspect.isawaitable(result) else result


def _health(result: object) -> tuple[bool, str | None]:
    if isinstance(result, tuple):
        ok, reason = (*result, None)[:2]
        return bool(ok), None if reason is None else str(reason)
    return bool(result), None


def _dumps(data: Any) -> str:
    # Paths, datetimes and enums in the daemon's state: shown as text, not a 500.
    return json.dumps(data, default=str)


# -- the snapshot in the state directory ------------------------------------------------------

SNAPSHOT_FILE = "status.json"
SNAPSHOT_INTERVAL_S = 2.0


def snapshot_path(state_dir: Path) -> Path:
    """Where the daemon keeps its status snapshot."""
    return state_dir / SNAPSHOT_FILE


def write_snapshot(path: Path, data: Mapping[str, Any], *, running: bool) -> None:
    """Write `data` with the writer's pid and the time, atomically (a crash leaves the old one)."""
    body = {**data, "pid": os.getpid(), "running": running, "written_at": time.time()}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(_dumps(body), encoding="utf-8")
    os.replace(tmp, path)


def read_snapshot(path: Path) -> dict[str, Any] | None:
    """The snapshot a daemon left in its state directory, or None when there is none (or garbage)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class SnapshotWriter:
    """Writes ``status()`` to the snapshot file every `interval_s` while the daemon runs."""

    def __init__(self, path: Path, status: StatusSource, interval_s: float = SNAPSHOT_INTERVAL_S) -> None:
        self.path = path
        self._status = status
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    async def write(self, *, running: bool = True) -> None:
        """One snapshot now; a failure is logged once and never stops the daemon."""
        try:
            write_snapshot(self.path, await _call(self._status), running=running)
            self._failed = False
        except Exception as e:  # a full disk must not take the daemon down
            if not self._failed:
                log.warning("status snapshot not written", path=str(self.path), error=one_line(e))
            self._failed = True

    async def start(self) -> None:
        await self.write()
        self._task = asyncio.create_task(self._loop(), name="status-snapshot")

    async def stop(self) -> None:
        """Stop the loop and leave a last snapshot that says the daemon is not running."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.write(running=False)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.write()
