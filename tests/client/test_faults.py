"""FaultProxy itself: rules match by method and path, count down, and the log records them."""

from __future__ import annotations

import aiohttp

from tests.client.conftest import World
from tests.faults import FaultProxy


async def test_count_limited_rule_applies_to_the_first_matches_only(world: World) -> None:
    """A rule with times=1 answers its fault once, then requests pass through."""
    rule = world.proxy.fail("GET", r"^/v1/nodes/\d+$", status=502, times=1)
    async with aiohttp.ClientSession() as session:
        url = f"{world.proxy.url}/v1/nodes/{world.node_pk}"
        async with session.get(url) as first:
            assert first.status == 502
        async with session.get(url) as second:
            assert second.status == 401  # forwarded: the server wants a token
    assert [s.outcome for s in world.proxy.seen[-2:]] == ["respond 502", "forwarded"]
    assert rule.hits == 1


async def test_rules_match_the_method(world: World) -> None:
    """A rule for POST leaves a GET of the same path alone."""
    rule = world.proxy.fail("POST", r"^/v1/nodes/\d+$", status=503)
    assert (await world.worker.get_node(world.node_pk))["pk"] == world.node_pk
    assert rule.hits == 0 and world.proxy.count("GET", r"^/v1/nodes/\d+$") == 1


async def test_drop_after_forward_reaches_the_upstream(world: World) -> None:
    """A drop after forwarding records the upstream's status, and the client sees no reply."""
    rule = world.proxy.drop("POST", "/v1/nodes/list$", after_forward=True, times=1)
    await world.worker.list_nodes({})
    dropped = next(s for s in world.proxy.seen if s.outcome == "drop after forward")
    assert dropped.upstream_status == 200 and rule.hits == 1


async def test_proxy_without_upstream_answers_502() -> None:
    """With no upstream, unmatched requests get 502 and matched ones the rule."""
    async with FaultProxy() as proxy, aiohttp.ClientSession() as session:
        rule = proxy.fail("GET", "^/teapot$", status=418, body='{"detail": "teapot"}')
        async with session.get(proxy.url + "/teapot") as resp:
            assert resp.status == 418 and (await resp.json())["detail"] == "teapot"
        async with session.get(proxy.url + "/other") as resp:
            assert resp.status == 502
    assert rule.hits == 1
