"""Starting and stopping the embedded server: in-process (`EmbeddedServer`) or as a command (`serve`).

Modelled on aiohttp's ``AppRunner``/``TCPSite`` examples: port 0 binds a free
port, and ``url`` says which one. ``serve`` is the foreground command: it runs
until SIGTERM or SIGINT, then stops cleanly.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import signal
import socket
import sys
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from ..logs import get_logger
from ..settings import ServerSettings
from .app import create_app
from .common import parse_error_detail

log = get_logger("ufdl_node.server")
SHUTDOWN_TIMEOUT_S = 5.0


class _JsonErrorProtocol(web.RequestHandler):
    """A connection whose own error answers (HTTP parse errors, timeouts) are JSON, as
    UFDL-API.md section 7 promises for every error, instead of aiohttp's text/plain."""

    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As the parent does: half a response is out, so the connection is broken.
            raise ConnectionError("Response is sent already, cannot send another response")
        detail = parse_error_detail(status, exc)
        if status >= 500:
            log.error("unhandled error", status=status, exc_info=exc)
        else:
            # One line, never the request's bytes: a scanner's garbage must not flood the log
            # with tracebacks, nor copy a token into it.
            log.info("request refused by the HTTP parser", status=status, detail=detail)
        response = web.json_response({"detail": detail}, status=status)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    """aiohttp's low-level server, making connections of `_JsonErrorProtocol`, at most
    `max_connections` of them.

    aiohttp offers no switch for the class of its connections; this override of the
    protocol factory uses the same arguments the parent's does.
    """

    max_connections = 1000
    evicted = 0

    def __call__(self) -> web.RequestHandler:
        return _JsonErrorProtocol(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        """Above the cap, close the oldest connection that is not in a request (an idle or
        half-sent one costs its client nothing to reopen), or else the new one: a flood of
        idle sockets cannot keep a login out, nor run the process out of descriptors."""
        super().connection_made(handler, transport)
        if len(self._connections) <= self.max_connections:
            return
        victim = next((h for h in self._connections
                       if h is not handler and not getattr(h, "_request_in_progress", True)), handler)
        victim.force_close()
        self._connections.pop(victim, None)
        if self.evicted % 1000 == 0:
            log.warning("too many connections: the oldest idle ones are closed",
                        max_connections=self.max_connections, closed_so_far=self.evicted + 1)
        self.evicted += 1


class _AppRunner(web.AppRunner):
    def __init__(self, app: web.Application, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application built the server; only the class of its connections changes.
        server.__class__ = _JsonErrorServer
        server.max_connections = self._max_connections  # type: ignore[attr-defined]
        return server


class EmbeddedServer:
    """The embedded UFDL job server on `settings.host`:`settings.port` (0: a free port).

    Usable as ``await srv.start()`` / ``await srv.stop()`` or as an async context manager.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the embedded server is not running")
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen, then open the data directory and create the users; raises `CannotListen`."""
        if self._runner is not None:
            raise RuntimeError("the embedded server is already running")
        # Listen before the application starts up: start-up creates the admin and prints
        # a generated password "shown only this once", which a busy port must not waste.
        sockets = await asyncio.to_thread(_listen, self.settings.host, self.settings.port)
        self.app = create_app(self.settings)
        settings = self.settings
        # keepalive_timeout closes a connection that has not sent a whole request that long
        # (aiohttp arms it at connect), as well as an idle keep-alive one
        runner = _AppRunner(self.app, settings.max_connections, access_log=None, handle_signals=False,
                            shutdown_timeout=SHUTDOWN_TIMEOUT_S, keepalive_timeout=settings.idle_timeout_s)
        try:
            await runner.setup()
            for sock in sockets:
                await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            for sock in sockets:
                sock.close()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("embedded server listening", url=self.url, data_dir=str(self.settings.data_dir),
                 real_server_quirks=self.settings.real_server_quirks)
        if not _is_loopback(self.settings.host):
            log.warning("the embedded server is reachable from other machines; it is meant for one "
                        "machine (demos, tests, dry-runs): keep it behind a firewall",
                        host=self.settings.host)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("embedded server stopped", url=self.url)
        self.port = None

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


class CannotListen(OSError):
    """The server cannot listen on its address; `hint` says which option changes it."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        super().__init__(error.errno, error.strerror or str(error))
        self.host, self.port = host, port
        if error.errno == errno.EADDRINUSE:
            self.hint = "choose another port with --port (0 picks a free one)"
        elif error.errno == errno.EACCES:
            self.hint = "ports below 1024 need privileges: choose another with --port"
        else:
            self.hint = "choose another address with --host (default 127.0.0.1)"

    def __str__(self) -> str:
        return f"cannot listen on {self.host}:{self.port}: {self.strerror}; {self.hint}"


def _listen(host: str, port: int) -> list[socket.socket]:
    """Bound, listening sockets for every address of `host`, as asyncio's create_server makes."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            # Listening now, not at site start: two sockets with SO_REUSEADDR may both
            # bind a port that nobody listens on yet.
            sock.listen(128)
            sock.setblocking(False)
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise CannotListen(host, port, e) from e
    return sockets


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def serve(settings: ServerSettings) -> int:
    """Run the server in the foreground until SIGTERM/SIGINT; returns the exit code.

    2 when it cannot listen (a busy port: one line on stderr naming the port and --port),
    1 when it cannot start otherwise (e.g. an unusable data directory), 0 after a signal.
    """
    server = EmbeddedServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    # Before start: the port accepts connections while the users are still being
    # created, and a SIGTERM then must still stop cleanly.
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await server.start()
        except CannotListen as e:
            print(f"ufdl-node server: {e}", file=sys.stderr, flush=True)
            return 2
        except OSError as e:
            log.error("cannot start the embedded server", host=settings.host, port=settings.port,
                      error=e.strerror or str(e))
            return 1
        await stop.wait()
        log.info("signal received, stopping")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.stop()
    return 0
