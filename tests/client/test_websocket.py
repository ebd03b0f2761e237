"""The job web socket: messages as dicts, a refused handshake as WebSocketRefused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from tests.client.conftest import World
from ufdl_node.client import UfdlClient
from ufdl_node.errors import WebSocketRefused


def test_ws_url_follows_the_scheme_of_the_server() -> None:
    """http becomes ws and https becomes wss, with the job's path."""
    assert UfdlClient("http://h:8000/", "u", "pw").job_ws_url(7) == "ws://h:8000/v1/jobs/7"
    assert UfdlClient("https://h/ufdl", "u", "pw").job_ws_url(7) == "wss://h/ufdl/v1/jobs/7"


async def test_watch_job_yields_the_replayed_phase_through_the_proxy(world: World) -> None:
    """A started job's socket replays a progress message first."""
    job = await world.started()
    await world.direct.progress(job["pk"], world.node_pk, 0.25)
    messages = world.worker.watch_job(job["pk"])
    first = await asyncio.wait_for(messages.__anext__(), 5)
    await messages.aclose()
    assert first["transition"] == "progress" and first["pk"] == job["pk"]


async def test_watch_job_sees_a_cancel(world: World, wait_for) -> None:
    """A cancel made while watching arrives as a message."""
    job = await world.started()
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        async for message in world.worker.watch_job(job["pk"]):
            seen.append(message)
            if message.get("transition") == "cancel":
                return

    watcher = asyncio.create_task(watch())
    # the cancel must come while the watcher listens: once the server accepted its web socket
    await wait_for(lambda: any(s.path == f"/v1/jobs/{job['pk']}" and s.upstream_status == 101
                               for s in world.proxy.seen), what="the watcher's web socket to open")
    await world.admin.cancel(job["pk"])
    await asyncio.wait_for(watcher, 5)
    assert seen[-1]["transition"] == "cancel"


async def test_refused_handshake_raises_websocket_refused(quirks_world: World) -> None:
    """The real server refuses the socket of a job created without notifications."""
    job = await quirks_world.started()
    with pytest.raises(WebSocketRefused) as info:
        async for _ in quirks_world.worker.watch_job(job["pk"]):
            pass
    assert info.value.status == 403


async def test_closed_socket_ends_the_iteration_and_garbage_is_skipped(aiohttp_server: Any) -> None:
    """Messages that are not JSON objects are skipped; a server close ends the iterator."""
    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str('{"transition": "progress", "progress": 0.5}')
        await ws.send_str("not json")
        await ws.send_str("[1, 2]")
        await ws.send_str('{"transition": "finish"}')
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/jobs/{pk}", socket)
    server = await aiohttp_server(app)
    async with UfdlClient(str(server.make_url("")).rstrip("/"), "u", "pw-unused") as client:
        got = [m["transition"] async for m in client.watch_job(3)]
    assert got == ["progress", "finish"]
