"""A call after the client is closed is refused, never a new connection pool nobody closes."""

from __future__ import annotations

import pytest

from tests.client.conftest import World
from ufdl_node.errors import ClientClosed


async def test_a_call_after_close_is_refused_and_a_new_entry_opens_again(world: World) -> None:
    client = world.client()
    async with client:
        assert await client.hardware_generations()
    with pytest.raises(ClientClosed, match="is closed"):
        await client.hardware_generations()
    assert client.transport._session is None  # nothing opened by the refused call
    async with client:  # entered again: usable again
        assert await client.hardware_generations()
