"""The one HTTP path honours a Retry-After given as an HTTP date (loopback aiohttp server)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web

from ufdl_node.errors import ServerFault
from ufdl_node.transport import Transport


def _app(retry_after: str, times: int, seen: list[float]) -> web.Application:
    async def obtain(_: web.Request) -> web.Response:
        return web.json_response({"access": "a-token", "refresh": "r-token"})

    async def thing(_: web.Request) -> web.Response:
        seen.append(time.monotonic())
        if len(seen) <= times:
            return web.json_response({"detail": "busy"}, status=503, headers={"Retry-After": retry_after})
        return web.json_response({"pk": 1})

    app = web.Application()
    app.router.add_post("/v1/auth/obtain", obtain)
    app.router.add_get("/v1/thing", thing)
    return app


def _in(seconds: float) -> str:
    """An IMF-fixdate `seconds` from now (whole seconds, as HTTP dates are)."""
    when = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=seconds)
    return format_datetime(when, usegmt=True)


async def test_an_http_date_retry_after_is_waited(aiohttp_server: Any) -> None:
    """A 503 with Retry-After two seconds ahead as a date: the retry comes after that date,
    not after the backoff's few milliseconds."""
    seen: list[float] = []
    server = await aiohttp_server(_app(_in(2), 1, seen))
    async with Transport(str(server.make_url("")).rstrip("/"), "u", "pw", retry_initial_delay_s=0.001,
                         retry_max_delay_s=5.0, retry_max_attempts=3) as transport:
        assert await transport.request("GET", "/v1/thing") == {"pk": 1}
    assert len(seen) == 2
    assert seen[1] - seen[0] >= 0.9  # the date has whole seconds: at least 1 s of the 2 is left


async def test_a_far_date_is_capped_by_the_longest_retry_delay(aiohttp_server: Any) -> None:
    """A date an hour ahead is waited no longer than retry_max_delay_s; retries spent, the
    fault carries the server's wait."""
    seen: list[float] = []
    server = await aiohttp_server(_app(_in(3600), 10, seen))
    async with Transport(str(server.make_url("")).rstrip("/"), "u", "pw", retry_initial_delay_s=0.001,
                         retry_max_delay_s=0.2, retry_max_attempts=2) as transport:
        with pytest.raises(ServerFault) as caught:
            await transport.request("GET", "/v1/thing")
    assert len(seen) == 2 and 0.15 <= seen[1] - seen[0] < 1.0
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 3500
