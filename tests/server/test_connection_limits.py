"""Clients that hold connections open: idle and half-sent requests, unfinished bodies, and
web sockets (which need no token) are bounded, and a login still gets in."""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import aiohttp

from .conftest import WORKER, MakeApi, MakeServer


async def _half_sent(url: str, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`count` connections that send half a request line and headers, and then nothing."""
    where = urllib.parse.urlsplit(url)
    opened = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        writer.write(b"POST /v1/auth/obtain HTTP/1.1\r\nHost: x\r\nContent-Ty")
        opened.append((reader, writer))
    await asyncio.gather(*(w.drain() for _, w in opened))
    return opened


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(reader.read(), 0.01)
        return True  # EOF (or an error answer, then EOF)
    except ConnectionError:
        return True
    except asyncio.TimeoutError:
        return False


async def _closed(idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> list[bool]:
    """Which of `idle` the server has closed (asked at once: 10 ms in all, not 10 ms each)."""
    return list(await asyncio.gather(*(_closed_by_server(r) for r, _ in idle)))


async def _all_closed_within(idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
                             timeout_s: float) -> bool:
    """Whether every one of `idle` is closed by the server within `timeout_s` (asked every 0.1 s)."""
    deadline = time.monotonic() + timeout_s
    while not all(await _closed(idle)):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _login_time(url: str) -> float:
    start = time.monotonic()
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/auth/obtain", json={"username": WORKER[0], "password": WORKER[1]}) as reply:
        assert reply.status == 200, await reply.text()
        assert "access" in await reply.json()
    return time.monotonic() - start


async def test_a_login_gets_in_past_300_idle_sockets_which_are_closed_after_the_timeout(
        make_server: MakeServer) -> None:
    """300 connections that never finish their headers, above a cap of 100: a login still
    answers within a second, and every idle one is closed once idle_timeout_s has passed."""
    server = await make_server(idle_timeout_s=3.0, max_connections=100)
    idle = await _half_sent(server.url, 300)
    try:
        assert await _login_time(server.url) < 1.0
        # the cap closed the oldest ones at once; the newest are still open, waiting
        evicted = await _closed(idle)
        assert sum(evicted) >= 200 and not all(evicted)
        assert await _all_closed_within(idle, 10.0)  # idle_timeout_s 3 s after they were opened
    finally:
        for _, writer in idle:
            writer.close()


async def test_idle_sockets_below_the_cap_are_closed_after_the_timeout(make_server: MakeServer) -> None:
    """Below the cap nothing is closed early: the idle timeout alone ends the half-sent requests."""
    server = await make_server(idle_timeout_s=2.0)
    idle = await _half_sent(server.url, 50)
    try:
        assert await _login_time(server.url) < 1.0
        assert not any(await _closed(idle))
        assert await _all_closed_within(idle, 10.0)  # idle_timeout_s 2 s after they were opened
    finally:
        for _, writer in idle:
            writer.close()


async def test_a_body_that_never_arrives_is_a_408(make_server: MakeServer) -> None:
    """Headers that declare 100 bytes, then 10 and silence: a 408 after body_timeout_s."""
    server = await make_server(body_timeout_s=0.5)
    where = urllib.parse.urlsplit(server.url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        writer.write(b"POST /v1/auth/obtain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"username")
        start = time.monotonic()
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.startswith(b"HTTP/1.1 408"), status
        assert 0.4 < time.monotonic() - start < 5
    finally:
        writer.close()


async def test_web_sockets_above_the_cap_are_503(make_server: MakeServer, make_api: MakeApi) -> None:
    """Web sockets need no token: past max_websockets a new one is refused with a 503, and a
    closed one frees its place."""
    server = await make_server(max_websockets=2)
    job = await make_api(server).job()
    url = f"{server.url}/v1/jobs/{job['pk']}"
    async with aiohttp.ClientSession() as session:
        first = await session.ws_connect(url)
        second = await session.ws_connect(url)
        try:
            async with session.get(url, headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                 "Sec-WebSocket-Version": "13",
                                                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as reply:
                assert reply.status == 503
                assert "Too many web sockets" in (await reply.json())["detail"]
            await first.close()
            for _ in range(100):  # the server forgets the socket once its handler ends
                try:
                    third = await session.ws_connect(url)
                    break
                except aiohttp.WSServerHandshakeError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("a closed web socket did not free its place")
            await third.close()
        finally:
            await second.close()
