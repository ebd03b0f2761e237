"""Tokens: obtained lazily, refreshed on 401, obtained again when the refresh is refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.client.conftest import WORKER_PASSWORD, World
from ufdl_node.errors import AuthenticationFailed
from ufdl_node.logs import scrub


async def test_wrong_password_raises_authentication_failed(world: World) -> None:
    """A wrong password gives AuthenticationFailed, without the password in the message."""
    async with world.client(password="not-the-Password-999") as client:
        with pytest.raises(AuthenticationFailed) as info:
            await client.login()
    assert "not-the-Password-999" not in str(info.value)
    assert info.value.status == 401
    assert world.proxy.count("POST", "/v1/auth/obtain$") == 1  # a refusal is not retried


async def test_token_is_obtained_lazily_and_once(world: World) -> None:
    """The first call obtains a token; later calls reuse it."""
    await world.worker.get_node(world.node_pk)
    await world.worker.get_node(world.node_pk)
    assert world.proxy.count("POST", "/v1/auth/obtain$") == 1


async def test_expired_access_token_is_refreshed(make_world: Callable[..., Awaitable[World]]) -> None:
    """A 401 for an expired access token triggers a refresh and the call is repeated."""
    world = await make_world(access_lifetime_s=1, refresh_lifetime_s=60)
    await world.worker.get_node(world.node_pk)
    await world.outlive_tokens()
    node = await world.worker.get_node(world.node_pk)
    assert node["pk"] == world.node_pk
    # JWT expiry has whole-second precision: a 1 s token may need a refresh on the first call too.
    assert world.proxy.count("POST", "/v1/auth/refresh$") >= 1
    assert world.proxy.count("POST", "/v1/auth/obtain$") == 1


async def test_refused_refresh_falls_back_to_the_password(
        make_world: Callable[..., Awaitable[World]]) -> None:
    """When the refresh token has expired too, the client logs in again with the password."""
    world = await make_world(access_lifetime_s=1, refresh_lifetime_s=1.5)
    await world.worker.get_node(world.node_pk)
    await world.outlive_tokens(refresh=True)
    assert (await world.worker.get_node(world.node_pk))["pk"] == world.node_pk
    assert world.proxy.count("POST", "/v1/auth/refresh$") >= 1
    assert world.proxy.count("POST", "/v1/auth/obtain$") >= 2


async def test_token_expiry_mid_lifecycle_does_not_break_the_job(
        make_world: Callable[..., Awaitable[World]]) -> None:
    """A job started with one token is finished with a renewed one."""
    world = await make_world(access_lifetime_s=1, refresh_lifetime_s=60)
    job = await world.job()
    await world.worker.acquire(job["pk"], world.node_pk)
    await world.worker.start(job["pk"], world.node_pk)
    await world.outlive_tokens()
    assert (await world.worker.finish(job["pk"], world.node_pk))["end_time"] is not None


async def test_second_401_after_renewal_is_authentication_failed(world: World) -> None:
    """A 401 that survives a renewal raises AuthenticationFailed instead of looping."""
    rule = world.proxy.fail("GET", r"^/v1/nodes/\d+$", status=401)
    with pytest.raises(AuthenticationFailed):
        await world.worker.get_node(world.node_pk)
    assert rule.hits == world.proxy.count("GET", r"^/v1/nodes/\d+$") == 2


async def test_tokens_and_password_are_registered_as_secrets(world: World) -> None:
    """The password and both tokens are masked in logs once the client has logged in."""
    async with world.client() as client:
        await client.login()
        assert client.transport._access and client.transport._refresh
        for secret in (WORKER_PASSWORD, client.transport._access, client.transport._refresh):
            assert scrub(f"x {secret} y") == "x *** y"


async def test_token_echoed_by_the_server_is_masked_in_the_message(world: World) -> None:
    """A server reply that echoes the token does not leak it into the exception message."""
    await world.worker.login()
    token = world.worker.transport._access
    assert token
    rule = world.proxy.fail("GET", r"^/v1/nodes/\d+$", status=400, body=f'{{"detail": "bad token {token}"}}')
    with pytest.raises(Exception) as info:
        await world.worker.get_node(world.node_pk)
    assert rule.hits == 1
    assert token not in str(info.value) and token not in (info.value.detail or "")  # type: ignore[attr-defined]
