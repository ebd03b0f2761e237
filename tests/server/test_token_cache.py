"""Verified access tokens are cached, but a cached token is still refused once it expires,
where another token type is wanted, or when its user is gone."""

from __future__ import annotations

import sqlite3
import time

import jwt
import pytest

from tests.conftest import wait_for
from ufdl_node.server.auth import TokenInvalid, TokenIssuer
from ufdl_node.server.store import DB_FILE

from .conftest import Api, MakeApi, MakeServer

KEY = b"k" * 32


async def test_a_cached_token_is_refused_once_it_expires() -> None:
    """A token verified (and cached) while valid is refused after its `exp`."""
    issuer = TokenIssuer(KEY, access_lifetime_s=1.0, refresh_lifetime_s=60.0)
    token = issuer.access(7)
    assert issuer.verify(token, "access") == 7
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    await wait_for(lambda: time.time() >= exp, what="the token's expiry")
    with pytest.raises(TokenInvalid):
        issuer.verify(token, "access")


def test_a_cached_access_token_is_not_a_refresh_token() -> None:
    """An access token verified (and cached) is still refused where a refresh token is wanted."""
    issuer = TokenIssuer(KEY, access_lifetime_s=60.0, refresh_lifetime_s=60.0)
    token = issuer.access(7)
    assert issuer.verify(token, "access") == 7
    with pytest.raises(TokenInvalid):
        issuer.verify(token, "refresh")


def test_a_token_of_another_key_is_refused_after_one_of_ours_was_cached() -> None:
    """The cache holds only tokens this issuer checked: one signed with another key is refused."""
    ours = TokenIssuer(KEY, access_lifetime_s=60.0, refresh_lifetime_s=60.0)
    theirs = TokenIssuer(b"x" * 32, access_lifetime_s=60.0, refresh_lifetime_s=60.0)
    assert ours.verify(ours.access(7), "access") == 7
    with pytest.raises(TokenInvalid):
        ours.verify(theirs.access(7), "access")


async def test_a_cached_token_of_a_removed_user_is_refused(make_server: MakeServer,
                                                           make_api: MakeApi) -> None:
    """A token used (and cached) before its user was removed gets 401 afterwards."""
    server = await make_server()
    api: Api = make_api(server)
    token = (await api.login("worker"))["access"]
    assert (await api.call("GET", "/v1/nodes/ping", token=token)).status != 401
    db = sqlite3.connect(server.settings.data_dir / DB_FILE)
    with db:
        db.execute("DELETE FROM users WHERE username = 'worker'")
    db.close()
    assert (await api.call("GET", "/v1/job-templates/1", token=token)).status == 401
