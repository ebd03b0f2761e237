"""A raw HTTP/1.1 server on loopback for the clients' tests: each request is answered with the
bytes a test gives (any framing, a fault, a close at any point), which no server library would
send on purpose."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

S = TypeVar("S", bound="RawHTTP")


@dataclass(frozen=True)
class Seen:
    """A request as it arrived: its connection's number (from 1), its request line, its
    headers by lower-case name, and its body (by Content-Length)."""

    connection: int
    line: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.line.split(" ")[1]


Answer = Callable[[Seen], Awaitable[tuple[list[bytes], bool]]]  # → (the pieces to send, close after)


@dataclass
class RawHTTP:
    """The server's state: how it answers, what it saw, how many connections were made."""

    answer: Answer
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def start(self, tls: ssl.SSLContext | None = None) -> asyncio.Server:
        """Listen on a free loopback port (`port`); the caller closes the server."""
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=tls)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(number, lines[0], headers, body)
                self.requests.append(seen)
                pieces, close = await self.answer(seen)
                for piece in pieces:  # each piece on its own, so that the client reads them apart
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
                if close:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()


@asynccontextmanager
async def serving(state: S, tls: ssl.SSLContext | None = None) -> AsyncIterator[S]:
    """`state` listening on loopback for the block (a fixture's `async with serving(...)`)."""
    server = await state.start(tls)
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()
