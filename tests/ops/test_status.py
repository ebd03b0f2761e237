"""The status endpoint, served on loopback and read with a real aiohttp client."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from ufdl_node.daemon.status import StatusServer, is_loopback, parse_listen
from ufdl_node.errors import ConfigError
from ufdl_node.metrics import Metrics

StartServer = Callable[..., Any]


async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def test_healthz_is_200_when_healthy(status_server: StartServer) -> None:
    """/healthz answers 200 {"status": "ok"} while healthy() is true."""
    server = await status_server(healthy=lambda: True)
    async with aiohttp.ClientSession() as session, session.get(server.url + "/healthz") as response:
        assert response.status == 200 and await response.json() == {"status": "ok"}


async def test_healthz_is_503_with_the_reason(status_server: StartServer) -> None:
    """/healthz answers 503 with the reason that healthy() gives."""
    server = await status_server(healthy=lambda: (False, "server unreachable: connection refused"))
    async with aiohttp.ClientSession() as session, session.get(server.url + "/healthz") as response:
        assert response.status == 503
        assert await response.json() == {"status": "unhealthy",
                                          "reason": "server unreachable: connection refused"}


async def test_healthz_accepts_a_healthy_pair_and_async_checks(status_server: StartServer) -> None:
    """healthy() may return (True, reason) and may be a coroutine function."""
    async def check() -> tuple[bool, str]:
        return True, "ok"

    server = await status_server(healthy=check)
    assert (await _get(server.url + "/healthz"))[0] == 200


async def test_healthz_is_503_when_the_check_raises(status_server: StartServer) -> None:
    """A health check that raises makes the daemon unhealthy, not the endpoint broken."""
    def check() -> bool:
        raise RuntimeError("slots gone")

    server = await status_server(healthy=check)
    status, _, body = await _get(server.url + "/healthz")
    assert status == 503 and "health check failed: RuntimeError: slots gone" in body


async def test_status_is_the_callables_json(status_server: StartServer) -> None:
    """/status serves what status() returns, with paths and other objects as text."""
    state = {"uptime_s": 12.5, "slots": [{"index": 0, "busy": True, "work_dir": Path("/w/1")}]}
    server = await status_server(status=lambda: state)
    async with aiohttp.ClientSession() as session, session.get(server.url + "/status") as response:
        assert response.status == 200 and response.content_type == "application/json"
        assert await response.json() == {"uptime_s": 12.5,
                                          "slots": [{"index": 0, "busy": True, "work_dir": "/w/1"}]}


async def test_status_failure_is_a_500_with_one_line(status_server: StartServer) -> None:
    """status() raising gives a 500 with the error, and the server keeps serving."""
    def broken() -> dict[str, Any]:
        raise KeyError("slot")

    server = await status_server(status=broken)
    status, _, body = await _get(server.url + "/status")
    assert status == 500 and "KeyError" in body
    assert (await _get(server.url + "/healthz"))[0] == 200


async def test_metrics_are_prometheus_text(status_server: StartServer) -> None:
    """/metrics serves the registry in the Prometheus text format with its content type."""
    metrics = Metrics()
    metrics.jobs.labels(outcome="finished").inc(3)
    server = await status_server(metrics=metrics)
    status, content_type, body = await _get(server.url + "/metrics")
    assert status == 200 and content_type == CONTENT_TYPE_LATEST
    assert 'ufdl_node_jobs_total{outcome="finished"} 3.0' in body.splitlines()


async def test_port_zero_picks_a_free_port(status_server: StartServer) -> None:
    """Two servers on port 0 get two different real ports, shown in their URLs."""
    first, second = await status_server(), await status_server()
    assert first.port != 0 and first.port != second.port
    assert first.url == f"http://127.0.0.1:{first.port}"


async def test_ipv6_loopback_url_is_bracketed(status_server: StartServer) -> None:
    """[::1]:0 binds IPv6 loopback and gives a usable URL."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = await status_server(listen="[::1]:0")
    except ConfigError as e:
        pytest.skip(f"cannot bind ::1 here: {e}")
    assert server.url.startswith("http://[::1]:")
    assert (await _get(server.url + "/healthz"))[0] == 200


async def test_stop_closes_the_port() -> None:
    """After stop() nothing listens on the port; a second stop() is harmless."""
    server = StatusServer("127.0.0.1:0", status=dict, healthy=lambda: True, metrics=Metrics())
    async with server:
        url = server.url
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(url + "/healthz")


async def test_a_busy_port_is_one_config_line(status_server: StartServer) -> None:
    """Binding a port in use fails with a ConfigError naming the address."""
    first = await status_server()
    with pytest.raises(ConfigError, match=rf"^status_listen: cannot listen on 127.0.0.1:{first.port}: "):
        await status_server(listen=f"127.0.0.1:{first.port}")


def test_non_loopback_is_refused_unless_allowed() -> None:
    """0.0.0.0 needs allow_public (status_allow_public), since /status has no authentication."""
    with pytest.raises(ConfigError, match="not a loopback address"):
        StatusServer("0.0.0.0:9100", status=dict, healthy=lambda: True, metrics=Metrics())
    StatusServer("0.0.0.0:9100", status=dict, healthy=lambda: True, metrics=Metrics(), allow_public=True)


@pytest.mark.parametrize(("listen", "expected"), [("127.0.0.1:9100", ("127.0.0.1", 9100)),
                                                  ("[::1]:0", ("::1", 0)),
                                                  ("localhost:80", ("localhost", 80))])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    """HOST:PORT splits at the last colon; IPv6 brackets are removed."""
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9100", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_parse_listen_rejects_malformed_addresses(listen: str) -> None:
    """A missing or non-numeric port is a ConfigError."""
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_listen(listen)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False),
                                                ("10.0.0.5", False), ("example.org", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    """Loopback is judged without a name lookup."""
    assert is_loopback(host) is loopback
