"""Transient faults are retried with backoff; refusals are not; errors are typed and short."""

from __future__ import annotations

import time

import pytest

from tests.client.conftest import World
from tests.faults import HTML_500
from ufdl_node.client import DETAIL_LIMIT
from ufdl_node.errors import (
    BadRequest,
    MalformedReply,
    NotAcceptable,
    NotFound,
    PermissionDenied,
    RefusedError,
    ServerFault,
    ServerUnavailable,
)

NODE = r"^/v1/nodes/\d+$"


async def test_503_is_retried_until_it_clears(world: World) -> None:
    """Two 503s, then the call goes through; both retries are counted."""
    rule = world.proxy.fail("GET", NODE, status=503, times=2)
    assert (await world.worker.get_node(world.node_pk))["pk"] == world.node_pk
    assert rule.hits == 2 and world.proxy.count("GET", NODE) == 3
    assert world.sample("ufdl_node_api_retries_total", action="get_node") == 2


async def test_500_html_on_an_idempotent_call_is_retried(world: World) -> None:
    """A 500 HTML page on a GET is a transient fault."""
    rule = world.proxy.fail("GET", NODE, status=500, times=1)
    assert (await world.worker.get_node(world.node_pk))["pk"] == world.node_pk
    assert rule.hits == 1


async def test_429_waits_for_retry_after(world: World) -> None:
    """429 with Retry-After: 1 makes the client wait about a second, not its tiny backoff."""
    rule = world.proxy.throttle("GET", NODE, retry_after="1", times=1)
    async with world.client(retry_max_delay_s=5) as client:
        began = time.monotonic()
        await client.get_node(world.node_pk)
    assert rule.hits == 1
    assert time.monotonic() - began >= 0.9  # a lower bound: load only makes it longer


async def test_retry_after_is_capped_by_retry_max_delay(world: World) -> None:
    """A Retry-After of an hour is cut to retry_max_delay_s."""
    rule = world.proxy.throttle("GET", NODE, retry_after="3600", times=1)
    began = time.monotonic()
    await world.worker.get_node(world.node_pk)
    assert rule.hits == 1
    # retry_max_delay_s is 0.02 s; 30 s is slack for a loaded machine, still far below an hour
    assert time.monotonic() - began < 30


async def test_dropped_connection_is_retried(world: World) -> None:
    """A connection closed without a reply is retried."""
    rule = world.proxy.drop("GET", NODE, times=2)
    assert (await world.worker.get_node(world.node_pk))["pk"] == world.node_pk
    assert rule.hits == 2 and world.proxy.count("GET", NODE) == 3


async def test_slow_reply_times_out_and_is_retried(world: World) -> None:
    """A reply slower than request_timeout_s is abandoned and the call retried."""
    rule = world.proxy.delay("GET", NODE, 1.0, times=1)
    async with world.client(request_timeout_s=0.3) as client:
        assert (await client.get_node(world.node_pk))["pk"] == world.node_pk
    assert rule.hits == 1 and world.proxy.count("GET", NODE) == 2


async def test_exhausted_retries_raise_the_last_transient_error(world: World) -> None:
    """After retry_max_attempts 503s the last ServerFault is raised."""
    rule = world.proxy.fail("GET", NODE, status=503)
    with pytest.raises(ServerFault) as info:
        await world.worker.get_node(world.node_pk)
    assert info.value.status == 503 and info.value.action == "get_node"
    assert rule.hits == world.proxy.count("GET", NODE) == world.worker.transport.retry_max_attempts


async def test_unreachable_server_raises_server_unavailable(world: World) -> None:
    """Nothing listening: ServerUnavailable once the attempts are spent."""
    async with world.client(url="http://127.0.0.1:9") as client:
        with pytest.raises(ServerUnavailable) as info:
            await client.get_node(1)
    assert "127.0.0.1:9" in str(info.value)


@pytest.mark.parametrize(("status", "error"), [(400, BadRequest), (403, PermissionDenied),
                                                (404, NotFound), (406, NotAcceptable)])
async def test_refusals_are_not_retried(world: World, status: int, error: type[RefusedError]) -> None:
    """A 4xx refusal is raised at once as its own class, after exactly one request."""
    rule = world.proxy.fail("GET", NODE, status=status)
    with pytest.raises(error) as info:
        await world.worker.get_node(world.node_pk)
    assert info.value.status == status
    assert rule.hits == world.proxy.count("GET", NODE) == 1


async def test_refusal_from_the_server_carries_its_detail(world: World) -> None:
    """A real 406 from the server (a lost acquire race) says what the server said."""
    job = await world.held(node=await world.new_node())
    with pytest.raises(NotAcceptable) as info:
        await world.worker.acquire(job["pk"], world.node_pk)
    assert info.value.detail and info.value.action == "acquire"


async def test_long_html_error_page_is_cut_to_one_short_line(world: World) -> None:
    """A big HTML 404 page ends up as its title, on one line, within DETAIL_LIMIT."""
    rule = world.proxy.fail("GET", NODE, status=404,
                            body=HTML_500.replace("Server Error (500)", "Page not found"))
    with pytest.raises(NotFound) as info:
        await world.worker.get_node(world.node_pk)
    assert rule.hits == 1
    message = str(info.value)
    assert "\n" not in message and len(info.value.detail or "") <= DETAIL_LIMIT
    assert "Page not found" in message and "trace line" not in message


async def test_long_json_detail_is_truncated(world: World) -> None:
    """A 400 detail tens of KB long is cut to DETAIL_LIMIT characters."""
    rule = world.proxy.fail("POST", "/v1/nodes/list$", status=400, body='{"detail": "' + "x" * 50_000 + '"}')
    with pytest.raises(BadRequest) as info:
        await world.worker.list_nodes({})
    assert rule.hits == 1
    assert len(str(info.value)) < DETAIL_LIMIT + 100


async def test_real_bad_request_from_the_server_is_bad_request(world: World) -> None:
    """A filter spec the server rejects (is_null spelling) is a BadRequest, not retried."""
    with pytest.raises(BadRequest):
        await world.worker.list_nodes({"expressions": [{"type": "is_null", "field": "ip"}]})


async def test_2xx_that_is_not_json_is_malformed_reply(world: World) -> None:
    """A 200 with an HTML body raises MalformedReply."""
    rule = world.proxy.fail("GET", NODE, status=200, body="<html>captive portal</html>")
    with pytest.raises(MalformedReply):
        await world.worker.get_node(world.node_pk)
    assert rule.hits >= 1


async def test_2xx_of_the_wrong_shape_is_malformed_reply(world: World) -> None:
    """A 200 with a JSON list where an object is expected raises MalformedReply."""
    rule = world.proxy.fail("GET", NODE, status=200, body="[1, 2]",
                            headers={"Content-Type": "application/json"})
    with pytest.raises(MalformedReply):
        await world.worker.get_node(world.node_pk)
    assert rule.hits >= 1


async def test_list_reply_that_is_not_a_list_is_malformed_reply(world: World) -> None:
    """find_work answered with an object raises MalformedReply."""
    rule = world.proxy.fail("POST", "/v1/jobs/list$", status=200, body='{"results": []}')
    with pytest.raises(MalformedReply):
        await world.worker.find_work(world.node_pk)
    assert rule.hits >= 1


async def test_calls_are_counted_by_action_and_status(world: World) -> None:
    """api_calls counts each exchange, 'error' when no reply came."""
    dropped = world.proxy.drop("POST", "/v1/nodes/list$", times=1)
    refused = world.proxy.fail("POST", "/v1/nodes/list$", status=503, times=1)
    await world.worker.list_nodes({})
    assert dropped.hits == 1 and refused.hits == 1
    for status in ("error", "503", "200"):
        assert world.sample("ufdl_node_api_calls_total", action="list_nodes", status=status) == 1, status
    for kind in ("ServerFault", "ServerUnavailable"):
        assert world.sample("ufdl_node_api_errors_total", action="list_nodes", kind=kind) == 1, kind
