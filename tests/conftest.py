"""Fixtures shared by every test package."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import ServerSettings

StartServer = Callable[[ServerSettings], Awaitable[EmbeddedServer]]


@pytest.fixture
async def embedded_servers() -> AsyncIterator[StartServer]:
    """Start embedded servers on loopback from settings; each is stopped after the test."""
    started: list[EmbeddedServer] = []

    async def start(settings: ServerSettings) -> EmbeddedServer:
        server = EmbeddedServer(settings)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        with contextlib.suppress(Exception):  # a test may have stopped it already
            await server.stop()
