"""The lean JSON calls (ufdl_node.leanhttp) against a raw server on loopback that answers each
request the way a test asks: framing (Content-Length, chunked in pieces, up to the close),
connections kept or not, redirects left to aiohttp, faults, timeouts and cancellation; and
through a Transport, the same errors as aiohttp's path."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import pytest

from tests.rawhttp import RawHTTP, Seen, serving
from ufdl_node.errors import NotFound, ServerFault, ServerUnavailable
from ufdl_node.leanhttp import LeanPool, NotLean
from ufdl_node.transport import Transport


def reply(status: int, body: bytes = b"", *, reason: str = "OK", headers: dict[str, str] | None = None,
          length: bool = True) -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if length:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def raw() -> AsyncIterator[RawHTTP]:
    async def ok(seen: Seen) -> tuple[list[bytes], bool]:
        return [reply(200, b'{"ok": true}', headers={"Content-Type": "application/json"})], False
    async with serving(RawHTTP(ok)) as state:
        yield state


def pool(raw: RawHTTP) -> LeanPool:
    return LeanPool(f"http://127.0.0.1:{raw.port}")


async def test_requests_share_one_kept_alive_connection(raw: RawHTTP) -> None:
    lean = pool(raw)
    try:
        for i in range(5):
            got = await lean.exchange("POST", f"/v1/x/{i}?q=1", {"Authorization": "Bearer t"},
                                      json.dumps({"i": i}).encode(), 5)
            assert (got.status, got.reason, json.loads(got.body)) == (200, "OK", {"ok": True})
            assert got.headers.get("CONTENT-TYPE") == "application/json"
        got = await lean.exchange("DELETE", "/v1/y", {}, None, 5)
    finally:
        lean.close()
    assert raw.connections == 1 and len(raw.requests) == 6
    seen = raw.requests[2]
    headers = seen.headers
    assert seen.line == "POST /v1/x/2?q=1 HTTP/1.1" and seen.body == b'{"i": 2}'
    assert headers["host"] == f"127.0.0.1:{raw.port}" and headers["authorization"] == "Bearer t"
    assert headers["accept-encoding"] == "identity" and headers["user-agent"].startswith("ufdl-node/")
    assert "content-length" not in raw.requests[5].headers  # a DELETE without a body says nothing


@pytest.mark.parametrize("framing", ["chunked", "chunked-trailer", "close-delimited", "http/1.0", "gzip",
                                     "length-in-pieces", "no-content"])
async def test_every_framing_of_a_reply_is_read_whole(raw: RawHTTP, framing: str) -> None:
    body = json.dumps({"jobs": list(range(3000))}).encode()

    async def answer(seen: Seen) -> tuple[list[bytes], bool]:
        if framing.startswith("chunked"):
            chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)]
            framed = b"".join(f"{len(c):x};ext=1\r\n".encode() + c + b"\r\n" for c in chunks)
            end = b"0\r\nX-Trailer: 1\r\n\r\n" if framing == "chunked-trailer" else b"0\r\n\r\n"
            whole = reply(200, headers={"Transfer-Encoding": "chunked"}, length=False) + framed + end
            return [whole[i:i + 777] for i in range(0, len(whole), 777)], False
        if framing == "close-delimited":
            return [reply(200, body, length=False)], True
        if framing == "http/1.0":
            return [reply(200, body).replace(b"HTTP/1.1", b"HTTP/1.0", 1)], True
        if framing == "gzip":
            return [reply(200, gzip.compress(body), headers={"Content-Encoding": "gzip"})], False
        if framing == "no-content":
            return [reply(204, reason="No Content", length=False)], False
        whole = reply(200, body)
        return [whole[:10], whole[10:5000], whole[5000:]], False
    raw.answer = answer
    lean = pool(raw)
    try:
        for _ in range(2):
            got = await lean.exchange("GET", "/v1/jobs", {}, None, 5)
            assert got.body == (b"" if framing == "no-content" else body)
    finally:
        lean.close()
    closing = framing in ("close-delimited", "http/1.0")
    assert raw.connections == (2 if closing else 1)


@pytest.mark.parametrize("status", [301, 302, 307, 308, 100])
async def test_a_redirect_is_not_read_here(raw: RawHTTP, status: int) -> None:
    async def answer(seen: Seen) -> tuple[list[bytes], bool]:
        return [reply(status, headers={"Location": "/elsewhere"})], False
    raw.answer = answer
    lean = pool(raw)
    try:
        with pytest.raises(NotLean):
            await lean.exchange("POST", "/v1/a", {}, b"{}", 5)
    finally:
        lean.close()


async def test_a_transport_sends_a_redirected_call_again_through_aiohttp(raw: RawHTTP) -> None:
    """aiohttp follows redirects; the lean path leaves a 3xx to it (the server did not act)."""
    async def answer(seen: Seen) -> tuple[list[bytes], bool]:
        if " /v1/old " in seen.line:
            return [reply(307, reason="Temporary Redirect", headers={"Location": "/v1/new"})], False
        return [reply(200, b'{"where": "new"}')], False
    raw.answer = answer
    async with Transport(f"http://127.0.0.1:{raw.port}", "u", "p") as transport:
        got = await transport.request("POST", "/v1/old", json={"a": 1}, auth=False)
    assert got == {"where": "new"}
    lines = [seen.line for seen in raw.requests]
    assert lines == ["POST /v1/old HTTP/1.1", "POST /v1/old HTTP/1.1", "POST /v1/new HTTP/1.1"]


async def test_a_server_under_a_path_gets_it_once(raw: RawHTTP) -> None:
    """A server URL with a path (behind a proxy): each request's target starts with it once."""
    async with Transport(f"http://127.0.0.1:{raw.port}/ufdl/", "u", "p") as transport:
        assert await transport.request("GET", "/v1/jobs/3", params={"a": "b c"}, auth=False) == {"ok": True}
    assert [seen.line for seen in raw.requests] == ["GET /ufdl/v1/jobs/3?a=b+c HTTP/1.1"]


@pytest.mark.parametrize("fault", ["closed before the reply", "cut body", "garbage", "head too long",
                                   "bad length", "bad chunk"])
async def test_a_broken_reply_is_a_connection_fault_and_the_connection_goes(raw: RawHTTP, fault: str) -> None:
    calls = 0

    async def answer(seen: Seen) -> tuple[list[bytes], bool]:
        nonlocal calls
        calls += 1
        if calls == 2:
            return [reply(200, b"{}")], False
        if fault == "closed before the reply":
            return [], True
        if fault == "cut body":
            return [reply(200, b"0123456789")[:-4]], True
        if fault == "garbage":
            return [b"SSH-2.0-OpenSSH_9\r\n\r\n"], False
        if fault == "head too long":
            return [b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000], False
        if fault == "bad length":
            return [b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n"], False
        return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], False
    raw.answer = answer
    lean = pool(raw)
    try:
        with pytest.raises(OSError):
            await lean.exchange("GET", "/v1/a", {}, None, 5)
        assert (await lean.exchange("GET", "/v1/a", {}, None, 5)).body == b"{}"
    finally:
        lean.close()
    assert raw.connections == 2  # the faulty one was never used again


async def test_bytes_past_a_reply_end_its_connection(raw: RawHTTP) -> None:
    async def answer(seen: Seen) -> tuple[list[bytes], bool]:
        return [reply(200, b"{}") + b"HTTP/1.1 200 OK\r\n"], False
    raw.answer = answer
    lean = pool(raw)
    try:
        for _ in range(3):
            assert (await lean.exchange("GET", "/v1/a", {}, None, 5)).body == b"{}"
    finally:
        lean.close()
    assert raw.connections == 3


async def test_a_connection_the_server_closed_while_idle_is_not_used(raw: RawHTTP) -> None:
    async def answer(seen: Seen) -> tuple[list[bytes], bool]:
        return [reply(200, b"{}")], True  # keep-alive promised, then closed (its idle timeout)
    raw.answer = answer
    lean = pool(raw)
    try:
        for _ in range(3):
            assert (await lean.exchange("GET", "/v1/a", {}, None, 5)).status == 200
            await asyncio.sleep(0.05)  # the close reaches the client
    finally:
        lean.close()
    assert raw.connections == 3 and len(raw.requests) == 3


async def test_no_reply_in_time_is_a_timeout_and_cancelling_closes_the_connection(raw: RawHTTP) -> None:
    async def answer(seen: Seen) -> tuple[list[bytes], bool]:
        if "slow" in seen.line:
            await asyncio.sleep(30)
        return [reply(200, b"{}")], False
    raw.answer = answer
    lean = pool(raw)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await lean.exchange("GET", "/v1/slow", {}, None, 0.2)
        task = asyncio.ensure_future(lean.exchange("GET", "/v1/slow", {}, None, 30))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await lean.exchange("GET", "/v1/fast", {}, None, 5)).status == 200
    finally:
        lean.close()
    assert raw.connections == 3


async def test_through_a_transport_the_errors_are_the_same_as_aiohttps(raw: RawHTTP) -> None:
    """A 404 with a JSON detail, a 503 page, a refused connection: mapped as every call's."""
    async def answer(seen: Seen) -> tuple[list[bytes], bool]:
        if "/missing" in seen.line:
            return [reply(404, b'{"detail": "no such job"}', reason="Not Found")], False
        return [reply(503, b"<html><title>Down for maintenance</title></html>", reason="Service Unavailable",
                      headers={"Content-Type": "text/html", "Retry-After": "0"})], False
    raw.answer = answer
    async with Transport(f"http://127.0.0.1:{raw.port}", "u", "p", retry_max_attempts=2,
                         retry_initial_delay_s=0.01) as transport:
        with pytest.raises(NotFound, match="HTTP 404 Not Found: no such job"):
            await transport.request("GET", "/v1/missing", auth=False)
        with pytest.raises(ServerFault, match="HTTP 503 Service Unavailable: HTML page: Down for"):
            await transport.request("GET", "/v1/down", auth=False)
    assert sum("/v1/down" in seen.line for seen in raw.requests) == 2  # retried once
    async with Transport("http://127.0.0.1:1", "u", "p", retry_max_attempts=1) as transport:
        with pytest.raises(ServerUnavailable, match=r"cannot reach http://127\.0\.0\.1:1"):
            await transport.request("GET", "/v1/x", auth=False)


async def test_an_expired_token_is_renewed_and_the_call_sent_again(raw: RawHTTP) -> None:
    """A 401 on a lean call: the transport refreshes the token and repeats the call once, with
    the new token, on the same kept-alive connection."""
    async def answer(seen: Seen) -> tuple[list[bytes], bool]:
        if seen.path == "/v1/auth/obtain":
            return [reply(200, b'{"access": "old", "refresh": "r1"}')], False
        if seen.path == "/v1/auth/refresh":
            assert json.loads(seen.body) == {"refresh": "r1"}
            return [reply(200, b'{"access": "new"}')], False
        if seen.headers.get("authorization") != "Bearer new":
            return [reply(401, b'{"detail": "Token is invalid or expired"}', reason="Unauthorized")], False
        return [reply(200, b'{"pk": 1}')], False
    raw.answer = answer
    async with Transport(f"http://127.0.0.1:{raw.port}", "u", "p") as transport:
        assert await transport.request("GET", "/v1/jobs/1", node_id=7) == {"pk": 1}
    assert [seen.path for seen in raw.requests] == ["/v1/auth/obtain", "/v1/jobs/1", "/v1/auth/refresh",
                                                   "/v1/jobs/1"]
    assert raw.requests[-1].headers["node-id"] == "7" and raw.connections == 1
