"""Hostile bytes on the wire: requests that HTTP parsers disagree on, sent over a raw socket.

No token travels here, so nothing may change; whatever the server answers is
no 5xx, and every error it answers is JSON (UFDL-API.md section 7), including
those aiohttp's HTTP parser answers before any route runs.
"""

from __future__ import annotations

import re
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .conftest import Reply, Target, check

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

METHODS = [b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"TRACE", b"CONNECT",
           b"FROB", b"get", b"G\x00T", b"", b"POST POST", b"\x16\x03\x01"]
PATHS = [b"/v1/jobs/list", b"/v1/nodes/ping", b"/v1/jobs/1", b"/v1/jobs/1/outputs/model/json",
         b"/v1/auth/obtain", b"/v1/jobs/1/progress/0.5", b"*", b"", b"http://evil/v1/jobs/list",
         b"/v1/../../etc/passwd", b"/v1/jobs/%2e%2e/%2e%2e", b"/v1/jobs/1%00", b"/\xff\xfe",
         b"/v1/" + b"a" * 9000, b"/v1/jobs/list?" + b"x=1&" * 2000, b"//v1//jobs//list"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.1x", b"", b"http/1.1"]
HEADERS = [b"Host: x", b"Content-Length: 0", b"Content-Length: -5", b"Content-Length: 99999999999999999999",
           b"Content-Length: 5", b"Content-Length: 2\r\nContent-Length: 3", b"Content-Length: 0x10",
           b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: bogus",
           b"Content-Encoding: gzip", b"Content-Encoding: deflate", b"Content-Type: application/json",
           b"Authorization: Bearer garbage", b"Authorization Bearer garbage", b"Node-Id: 1",
           b"Node-Id: " + b"9" * 40, b"X-Big: " + b"a" * 9000, b"Upgrade: websocket",
           b"Connection: Upgrade", b"Connection: close", b"Sec-WebSocket-Version: 13",
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b" folded: header", b"Bad\x00Name: x",
           b"Name: bad\x00value", b"Name: caf\xe9", b": empty name", b"Expect: 100-continue",
           b"Content-Disposition: attachment; filename=../../x"]
BODIES = [b"", b"{}", b'{"username": "admin", "password": "x"}', b"0\r\n\r\n", b"zz\r\nabc\r\n0\r\n\r\n",
          b"5\r\nhello\r\n0\r\n\r\n", b"\x1f\x8b\x08garbage", b"{" * 1000, b"\x00" * 64,
          b"GET /v1/nodes/ping HTTP/1.1\r\nHost: x\r\n\r\n"]
# aiohttp answers a request without a version as HTTP/0.9 (with headers all the same).
_STATUS = re.compile(rb"HTTP/\d\.\d (\d{3})[^\r\n]*\r\n")


# Sent after every hostile request: once the server reaches it, it answers and closes, so the
# answers before it can be read to the end without waiting out a keep-alive. (Half-closing the
# socket instead makes aiohttp drop the connection, and with it the answers to check.)
SENTINEL = b"GET /v1/nodes/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
# A request that leaves the server waiting (a body shorter than its Content-Length) gets no
# answer; this is how long to wait for one.
IDLE_S = 1.5


def _exchange(target: Target, request: bytes) -> bytes:
    """Send raw bytes and the sentinel, and read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", target.port), timeout=IDLE_S) as sock:
        try:
            sock.sendall(request + SENTINEL)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed early; read what it said
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _replies(raw: bytes, head_first: bool) -> list[Reply]:
    """The responses in `raw`, in order (pipelined requests get several); stops at an upgrade.

    The answer to a HEAD request has a Content-Length but no body (unless the parser refused
    the request, whose method it then never knew): `head_first` says the first answer is one.
    """
    replies = []
    while raw:
        match = _STATUS.match(raw)
        assert match, f"not an HTTP response: {raw[:200]!r}"
        head, complete, rest = raw.partition(b"\r\n\r\n")
        if not complete:
            break  # cut short by the idle timeout
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        status = int(match.group(1))
        if status == 101:
            break
        length = int(headers.get("content-length", len(rest)))
        if head_first and not replies and (not rest or _STATUS.match(rest)):
            length = 0  # a HEAD answer without its body (a parse error's answer has one)
        if len(rest) < length:
            break  # cut short by the idle timeout
        replies.append(Reply(status, headers, rest[:length]))
        raw = rest[length:]
    return replies


def _mostly(usual: bytes, others: list[bytes]) -> st.SearchStrategy[bytes]:
    """`usual` half of the time, so that one broken part at a time reaches the server."""
    return st.just(usual) | st.sampled_from(others)


@given(method=_mostly(b"POST", METHODS),
       path=st.sampled_from(PATHS) | st.binary(max_size=30).map(lambda b: b"/v1/" + b),
       version=_mostly(b"HTTP/1.1", VERSIONS), headers=st.lists(st.sampled_from(HEADERS), max_size=5),
       body=st.sampled_from(BODIES) | st.binary(max_size=40),
       line_end=_mostly(b"\r\n", [b"\n", b"\r", b"\r\n"]), host=_mostly(b"Host: x", [b""]))
def test_raw_requests_get_json_errors_and_change_nothing(target: Target, method: bytes, path: bytes,
                                                         version: bytes, headers: list[bytes], body: bytes,
                                                         line_end: bytes, host: bytes) -> None:
    """Malformed request lines, headers and framing: no 5xx, errors in JSON, no change."""
    request = b" ".join(p for p in (method, path, version) if p) + line_end
    # HTTP/1.1 requires a Host header: without one, nothing gets past the parser.
    request += b"".join(h + line_end for h in [host, *headers] if h) + line_end + body
    before = target.snapshot()
    replies = _replies(_exchange(target, request), head_first=method == b"HEAD")
    for n, reply in enumerate(replies):
        if n == 0 and method == b"HEAD" and not reply.body:
            # No body to read, but the answer must still be no 5xx, and say it is JSON.
            assert reply.status < 500 and "json" in reply.headers.get("content-type", ""), reply
            continue
        check(target, before, reply)
    assert target.snapshot() == before
