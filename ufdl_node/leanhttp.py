"""Small JSON calls over HTTP/1.1 at half of aiohttp's CPU: kept-alive asyncio connections.

aiohttp's client costs about 190 µs of CPU per request on this project's machines; a protocol
call of a short job is three of them, which was most of what the daemon spent on a job beyond
the bare protocol. :class:`LeanPool` sends a request (its head and a JSON body, written at
once) on an idle kept-alive connection of its own and parses the reply in
``data_received`` (a head, then a body by ``Content-Length``, chunked, or up to the close):
about 90 µs a call. It is what :meth:`ufdl_node.transport.Transport.request` uses for a call
with a JSON body or none, when the transport owns its session; uploads, streamed replies and
web sockets stay aiohttp's.

It decides nothing about the protocol: :meth:`LeanPool.exchange` returns the status, the
reason, the headers and the body, or raises ``OSError`` (the connection failed or was closed
before the reply was whole: the transport's "cannot reach") or :class:`asyncio.TimeoutError`.
A reply it does not read (a ``1xx`` or a redirect, which aiohttp follows) raises
:class:`NotLean`: the server did not act on the request, so the transport sends it again
through aiohttp. A connection whose reply was not read whole (a fault, a cancellation, a
timeout) is closed, never used again.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from yarl import URL

from . import __version__

IDLE_KEPT = 8  # idle connections kept open at most (one per slot or call in flight is the norm)
HEAD_MAX = 64 << 10  # a reply head longer than this is a fault
USER_AGENT = f"ufdl-node/{__version__}"


class NotLean(Exception):
    """A reply this client does not read (an informational status or a redirect)."""


class Headers(dict[str, str]):
    """A reply's headers, by lower-case name (``get`` takes any case)."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    headers: Headers
    body: bytes


class LeanPool:
    """Kept-alive connections to one server (`base_url`'s scheme, host and port; its path is
    the caller's, in each target)."""

    def __init__(self, base_url: str) -> None:
        url = URL(base_url)
        self.host = url.raw_host or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls: ssl.SSLContext | None = ssl.create_default_context() if url.scheme == "https" else None
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls is not None else 80
        self._head = (f"Host: {name if self.port == default else f'{name}:{self.port}'}\r\n"
                      f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nAccept-Encoding: identity\r\n")
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def exchange(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None,
                       timeout_s: float) -> Reply:
        """One request (`target`: the percent-encoded path and query, from the host's root:
        the server URL's own path included) and its whole reply; see the module's docstring
        for what it raises."""
        lines = [f"{method} {target} HTTP/1.1\r\n", self._head]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        if body is not None or method not in ("GET", "HEAD", "DELETE"):
            lines.append(f"Content-Length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1") + (body or b"")
        loop = asyncio.get_running_loop()
        conn = self._take()
        if conn is None:
            conn = await asyncio.wait_for(self._connect(loop), timeout_s)
        timer = loop.call_later(timeout_s, conn.time_out)
        try:
            reply = await conn.send(data, method == "HEAD")
        except BaseException:
            conn.abort()
            raise
        finally:
            timer.cancel()
        if conn.reusable:
            self._keep(conn)
        else:
            conn.abort()
        if 100 <= reply.status < 200 or reply.status in (301, 302, 303, 307, 308):
            raise NotLean(f"HTTP {reply.status}")
        return reply

    def _take(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            self._open.discard(conn)
        return None

    def _keep(self, conn: _Connection) -> None:
        if len(self._idle) < IDLE_KEPT:
            self._idle.append(conn)
        else:
            conn.abort()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        _transport, conn = await loop.create_connection(
            lambda: _Connection(self._open), self.host, self.port, ssl=self.tls,
            server_hostname=self.host if self.tls is not None else None)
        return conn

    def close(self) -> None:
        """Close every connection (idle or not)."""
        self._idle.clear()
        for conn in list(self._open):
            conn.abort()
        self._open.clear()


class _Connection(asyncio.Protocol):
    """One connection: a request at a time, its reply parsed as it comes."""

    def __init__(self, registry: set[_Connection]) -> None:
        self.registry = registry
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Reply] | None = None
        self.reusable = False
        self.closed = False
        self._head: tuple[int, str, Headers] | None = None
        self._chunks: _Chunks | None = None
        self._no_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.registry.add(self)

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes, no_body: bool) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self._head, self._chunks, self._no_body, self.reusable = None, None, no_body, False
        self.buffer.clear()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            if self.waiter is None:
                self.abort()  # bytes nobody asked for: a server not to trust with the next request
            return
        try:
            reply = self._parse(eof=False)
        except ValueError as e:
            self._fail(OSError(f"malformed reply: {e}"))
            return
        if reply is not None:
            self.waiter.set_result(reply)
            self.waiter = None
            self.buffer = bytearray()  # a large reply's bytes are not kept by an idle connection

    def eof_received(self) -> bool | None:
        self._lost("the server closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.registry.discard(self)
        self._lost(f"the connection was lost: {exc}" if exc else "the server closed the connection")

    def _lost(self, why: str) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            try:
                reply = self._parse(eof=True)
            except ValueError:
                reply = None
            if reply is not None:
                self.waiter.set_result(reply)
            else:
                self.waiter.set_exception(ConnectionResetError(why))
        self.waiter = None

    def time_out(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(asyncio.TimeoutError())
        self.abort()

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        self.registry.discard(self)
        if self.transport is not None:
            self.transport.abort()

    def _parse(self, eof: bool) -> Reply | None:
        """The reply once whole (None: more to come); ValueError when it cannot be one."""
        if self._head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > HEAD_MAX:
                    raise ValueError("a reply head longer than 64 KiB")
                return None
            self._head = parse_head(self.buffer[:end].decode("latin-1"))
            del self.buffer[:end + 4]
        status, reason, headers = self._head
        keep = _value(headers, "connection").lower() != "close"
        length = headers.get("content-length")
        if self._no_body or status in (204, 304) or 100 <= status < 200:
            body: bytes | None = b""
            keep = keep and not self.buffer
        elif "chunked" in _value(headers, "transfer-encoding").lower():
            self._chunks = self._chunks or _Chunks()
            body, extra = self._chunks.body(self.buffer)
            keep = keep and not extra
        elif length is not None:
            if not length.isdigit():
                raise ValueError(f"Content-Length {length[:20]!r}")
            size = int(length)
            body = bytes(self.buffer[:size]) if len(self.buffer) >= size else None
            keep = keep and len(self.buffer) == size  # bytes past the body: nothing more on this one
        else:  # delimited by the close
            body, keep = (bytes(self.buffer) if eof else None), False
        if body is None:
            return None
        self.reusable = keep and not eof and not self.closed
        return Reply(status, reason, headers, _decoded(body, _value(headers, "content-encoding")))


def _value(headers: Headers, name: str) -> str:
    return headers.get(name) or ""


def parse_head(text: str) -> tuple[int, str, Headers]:
    """A reply head's status, reason and headers (repeated ones joined by commas; an
    HTTP/1.0 reply not kept alive says ``connection: close``); ValueError when malformed."""
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not (len(code) == 3 and code.isdigit()):
        raise ValueError(f"status line {lines[0][:60]!r}")
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError("a malformed header line")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    if version == "HTTP/1.0" and _value(headers, "connection").lower() != "keep-alive":
        headers["connection"] = "close"
    return int(code), reason, headers


class _Chunks:
    """A chunked body read as it comes: where the next chunk's size line starts, and the chunks
    so far (each byte looked at once, however many pieces the body arrives in)."""

    def __init__(self) -> None:
        self.at = 0
        self.parts: list[bytes] = []

    def body(self, buffer: bytearray) -> tuple[bytes | None, bool]:
        """The body once its last chunk and trailer are in `buffer` (None: not yet), and
        whether bytes follow it."""
        while True:
            line_end = buffer.find(b"\r\n", self.at)
            if line_end < 0:
                return None, False
            size_text = bytes(buffer[self.at:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ValueError(f"chunk size {size_text[:20]!r}") from None
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None, False
                return b"".join(self.parts), len(buffer) > trailer_end + 4
            start = line_end + 2
            if len(buffer) < start + size + 2:
                return None, False
            self.parts.append(bytes(buffer[start:start + size]))
            self.at = start + size + 2


def _decoded(body: bytes, coding: str) -> bytes:
    """The body without its content coding (asked for none; gzip and deflate are undone)."""
    coding = coding.lower().strip()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip", "deflate"):
        for wbits in ((47,) if coding != "deflate" else (15, -15)):  # deflate: zlib-wrapped, or raw
            try:
                return zlib.decompress(body, wbits)
            except zlib.error as e:
                error = e
        raise ValueError(f"a {coding} body that does not decompress: {error}")
    raise ValueError(f"a body in the content coding {coding!r}")
