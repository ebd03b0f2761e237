"""The job web socket: transition messages and the replay on connect."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from .conftest import Api, MakeApi, MakeServer


async def receive(ws: Any, timeout: float = 5.0) -> dict[str, Any] | None:
    try:
        msg = await asyncio.wait_for(ws.receive(), timeout)
    except asyncio.TimeoutError:
        return None
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return msg.json()  # type: ignore[no-any-return,unused-ignore]


async def test_each_transition_sends_one_message(api: Api) -> None:
    """acquire, start, progress (with its body), finish each arrive in order with node and progress."""
    node = await api.node()
    job = await api.job(description="ws")
    async with api.session.ws_connect(f"{api.url}/v1/jobs/{job['pk']}") as ws:
        pk = job["pk"]
        await api.ok("GET", f"/v1/jobs/{pk}/acquire", node=node)
        await api.ok("POST", f"/v1/jobs/{pk}/start", node=node, json={"send_notification": "x"})
        await api.ok("POST", f"/v1/jobs/{pk}/progress/0.25", node=node, json={"step": 1})
        await api.finish(job, node)
        got = [await receive(ws) for _ in range(4)]
    assert [m["transition"] for m in got if m] == ["acquire", "start", "progress", "finish"]
    progress = got[2]
    assert progress is not None
    assert (progress["progress"], progress["transition_data"]) == (0.25, {"step": 1})
    assert progress["node"] == node["pk"]
    assert all(m and m["pk"] == job["pk"] and m["description"] == "ws" for m in got)


async def test_error_message_carries_the_error(api: Api) -> None:
    """Finish with an error sends an "error" message with that error."""
    node = await api.node()
    job = await api.started(node)
    async with api.session.ws_connect(f"{api.url}/v1/jobs/{job['pk']}") as ws:
        replay = await receive(ws)
        assert replay is not None and replay["transition"] == "progress"
        await api.finish(job, node, error="boom")
        msg = await receive(ws)
    assert msg is not None and (msg["transition"], msg["error"]) == ("error", "boom")


async def test_replay_reaches_every_open_socket(api: Api) -> None:
    """A new connection replays the phase to every socket on the job, as the real server's group does."""
    node = await api.node()
    job = await api.started(node)
    url = f"{api.url}/v1/jobs/{job['pk']}"
    async with api.session.ws_connect(url) as first:
        assert (await receive(first) or {}).get("transition") == "progress"
        async with api.session.ws_connect(url) as second:
            assert (await receive(second) or {}).get("transition") == "progress"
            assert (await receive(first) or {}).get("transition") == "progress"


async def test_created_job_replays_nothing(api: Api) -> None:
    """Connecting to a CREATED job sends nothing."""
    job = await api.job()
    async with api.session.ws_connect(f"{api.url}/v1/jobs/{job['pk']}") as ws:
        assert await receive(ws, 0.3) is None


async def test_missing_job_is_refused_403(api: Api) -> None:
    """The handshake for a job that does not exist is refused with 403."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.session.ws_connect(f"{api.url}/v1/jobs/999999")
    assert refused.value.status == 403


async def test_server_stop_closes_open_sockets(make_server: MakeServer, make_api: MakeApi) -> None:
    """Stopping the server closes its web sockets promptly (no hang on shutdown)."""
    server = await make_server()
    api: Api = make_api(server)
    job = await api.job()
    ws = await api.session.ws_connect(f"{api.url}/v1/jobs/{job['pk']}")
    await asyncio.wait_for(server.stop(), 10)
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await ws.close()
