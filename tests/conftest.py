"""Fixtures shared by every test package."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import ServerSettings

StartServer = Callable[[ServerSettings], Awaitable[EmbeddedServer]]
T = TypeVar("T")


async def wait_for(predicate: Callable[[], T | Awaitable[T]], timeout_s: float = 20.0,
                   interval_s: float = 0.05, what: str = "the condition") -> T:
    """Call `predicate` (sync or async) until it returns something truthy, and return that.

    Fails with an AssertionError naming `what` after `timeout_s`. The timeout is generous on
    purpose: it only bounds a test that is already failing, on a loaded machine.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval_s)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The chaos soak first: the longest test, started last, was the tail of a parallel run
    (`make test` runs pytest-xdist); the order of every other test is kept."""
    items.sort(key=lambda item: item.get_closest_marker("soak") is None)


@pytest.fixture(name="wait_for")
def _wait_for_fixture() -> Callable[..., Awaitable[Any]]:
    """`wait_for` as a fixture, for test modules that do not import it."""
    return wait_for


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
