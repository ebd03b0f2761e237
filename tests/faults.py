"""A fault-injecting HTTP proxy for tests: the network and server faults a worker meets.

``FaultProxy`` listens on a free loopback port and forwards every request to an
upstream server (the embedded server, or a small fake one), except where a rule
says otherwise. A rule matches a method and a path regex and does one thing:

- ``respond``: answer with a status and body (503, 500 HTML, 429 with
  Retry-After ...), either instead of forwarding, or *after* forwarding (the
  request reached the upstream and changed its state, but the client sees an
  error: the real server's 500 on a transition it did perform, a lost reply).
- ``drop``: close the connection without a reply, before or after forwarding.
- ``delay``: wait, then go on (forward, or let a later rule decide).

``times`` limits a rule to its first N matches. Every request is logged in
``proxy.seen``. Web-socket upgrades are relayed to the upstream as well.

    async with FaultProxy(upstream.url) as proxy:
        proxy.fail("POST", r"/v1/jobs/\\d+/start", status=503, times=2)
        proxy.drop("POST", r"/finish$", after_forward=True, times=1)
        client = UfdlClient(proxy.url, ...)

The proxy reads whole bodies into memory: it is for tests, not for big files.
Without an upstream, unmatched requests get 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import aiohttp
from aiohttp import web
from yarl import URL

Action = Literal["respond", "drop", "delay"]

# Headers that belong to one connection, not to the message, and those aiohttp recomputes.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailers", "transfer-encoding", "upgrade", "host", "content-length",
                         "content-encoding"})

HTML_500 = ("<!DOCTYPE html><html lang=\"en\"><head><title>Server Error (500)</title>"
            "<style>" + "body { font-family: sans-serif; } " * 200 + "</style></head>"
            "<body><h1>Server Error (500)</h1>" + "<p>trace line</p>" * 500 + "</body></html>")


def _payload(body: bytes) -> bytes | io.BytesIO | None:
    # aiohttp warns (an error under pytest) about big raw bytes bodies; a BytesIO streams.
    if not body:
        return None
    return io.BytesIO(body) if len(body) > 2**20 else body


@dataclass
class Rule:
    """What to do with requests whose method and path match."""

    method: str | None  # None: any method
    path: str  # a regex searched in the request path (not the query)
    action: Action
    status: int = 503
    body: bytes | str = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    after_forward: bool = False  # respond/drop only: forward first, then answer/drop
    delay_s: float = 0.0
    times: int | None = None  # the first N matches only; None: every match
    hits: int = 0
    # delay only: set by release(), it ends the delays under way and to come (a test that holds a
    # request until it has looked, rather than for a time a loaded machine may outlast)
    released: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    def release(self) -> None:
        """A delay rule: let the held requests (and later ones) go on now."""
        self.released.set()

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return re.search(self.path, path) is not None


@dataclass
class Seen:
    """One request the proxy received, and what it did with it."""

    method: str
    path: str  # decoded
    raw_path: str  # as sent, percent-encoding kept
    headers: Mapping[str, str]
    body_size: int
    outcome: str  # "forwarded", "respond 503", "drop", "drop after forward", ...
    upstream_status: int | None = None


class FaultProxy:
    """A reverse proxy on a free loopback port that applies fault rules."""

    def __init__(self, upstream_url: str | None = None, *, host: str = "127.0.0.1") -> None:
        self.upstream_url = upstream_url.rstrip("/") if upstream_url else None
        self.host = host
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port: int | None = None

    # -- lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return f"http://{self.host}:{self._port}"

    # -- rules

    def add_rule(self, rule: Rule) -> Rule:
        """Add a rule; rules are tried in the order they were added, the first match wins."""
        self.rules.append(rule)
        return rule

    def fail(self, method: str | None, path: str, *, status: int = 503, body: bytes | str = b"",
             headers: Mapping[str, str] | None = None, times: int | None = None,
             after_forward: bool = False) -> Rule:
        """Answer `status` (instead of forwarding, or after forwarding)."""
        if not body:
            body = HTML_500 if status == 500 else f'{{"detail": "fault injected: HTTP {status}"}}'
        hdrs = dict(headers or {})
        if "Content-Type" not in hdrs:
            text = body if isinstance(body, str) else body.decode("utf-8", "replace")
            hdrs["Content-Type"] = "text/html" if text.lstrip().startswith("<") else "application/json"
        return self.add_rule(Rule(method, path, "respond", status=status, body=body, headers=hdrs,
                                  times=times, after_forward=after_forward))

    def throttle(self, method: str | None, path: str, *, retry_after: str = "0",
                 times: int | None = None) -> Rule:
        """Answer 429 with a Retry-After header."""
        return self.fail(method, path, status=429, headers={"Retry-After": retry_after}, times=times)

    def drop(self, method: str | None, path: str, *, after_forward: bool = False,
             times: int | None = None) -> Rule:
        """Close the connection without a reply (after forwarding: the upstream did the work)."""
        return self.add_rule(Rule(method, path, "drop", after_forward=after_forward, times=times))

    def delay(self, method: str | None, path: str, seconds: float, *, times: int | None = None) -> Rule:
        """Wait `seconds` before handling the request."""
        return self.add_rule(Rule(method, path, "delay", delay_s=seconds, times=times))

    def clear(self) -> None:
        """Remove every rule (the log of seen requests stays)."""
        self.rules.clear()

    def count(self, method: str | None = None, path: str = "") -> int:
        """How many requests matching `method` and the `path` regex the proxy received."""
        return sum(1 for s in self.seen
                   if (method is None or s.method == method.upper()) and re.search(path, s.path))

    # -- handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(request.method, request.path, request.raw_path, dict(request.headers), len(body),
                    "forwarded")
        self.seen.append(seen)
        rule: Rule | None = None
        for candidate in self.rules:
            if candidate.matches(request.method, request.path):
                candidate.hits += 1
                if candidate.action == "delay":
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(candidate.released.wait(), candidate.delay_s)
                    continue  # a delay lets later rules (or forwarding) decide
                rule = candidate
                break

        if rule is not None and not rule.after_forward:
            return self._apply(request, rule, seen)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._relay_ws(request, seen)
        reply = await self._forward(request, body, seen)
        if rule is not None:
            return self._apply(request, rule, seen, after=True)
        return reply

    def _apply(self, request: web.Request, rule: Rule, seen: Seen, after: bool = False) -> web.Response:
        suffix = " after forward" if after else ""
        if rule.action == "drop":
            seen.outcome = "drop" + suffix
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=599)  # never reaches the client
        seen.outcome = f"respond {rule.status}{suffix}"
        return web.Response(status=rule.status, body=rule.body if isinstance(rule.body, bytes)
                            else rule.body.encode(), headers=dict(rule.headers))

    async def _forward(self, request: web.Request, body: bytes, seen: Seen) -> web.Response:
        if self.upstream_url is None or self._session is None:
            seen.outcome = "no upstream"
            return web.json_response({"detail": "FaultProxy has no upstream"}, status=502)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            async with self._session.request(request.method, URL(self.upstream_url + request.raw_path,
                                                                 encoded=True),
                                             headers=headers, data=_payload(body),
                                             allow_redirects=False) as resp:
                data = await resp.read()
                seen.upstream_status = resp.status
                out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}
                if "Content-Encoding" in resp.headers:
                    out_headers["Content-Encoding"] = resp.headers["Content-Encoding"]
                return web.Response(status=resp.status, body=data, headers=out_headers)
        except aiohttp.ClientError as e:
            seen.outcome = f"upstream error {type(e).__name__}"
            return web.json_response({"detail": f"FaultProxy: upstream failed: {e}"}, status=502)

    async def _relay_ws(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        assert self.upstream_url is not None and self._session is not None
        url = URL(self.upstream_url.replace("http", "ws", 1) + request.raw_path, encoded=True)
        try:
            upstream = await self._session.ws_connect(url)
        except aiohttp.WSServerHandshakeError as e:
            seen.upstream_status = e.status
            return web.json_response({"detail": "web socket refused upstream"}, status=e.status)
        seen.upstream_status = 101
        client = web.WebSocketResponse()
        await client.prepare(request)

        async def pump_up() -> None:
            async for msg in client:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await upstream.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await upstream.send_bytes(msg.data)
            await upstream.close()

        up = asyncio.create_task(pump_up())
        try:
            async for msg in upstream:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await client.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await client.send_bytes(msg.data)
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            await upstream.close()
            await client.close()
        return client
