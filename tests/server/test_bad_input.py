"""Bad input, authentication and Node-Id rules over real HTTP: always JSON, never a 500."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from .conftest import Api, MakeApi, MakeServer, Reply


def assert_json_error(reply: Reply, status: int) -> dict:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert "json" in reply.headers.get("Content-Type", ""), reply.headers
    body = reply.json
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body  # type: ignore[no-any-return,unused-ignore]


async def test_unrouted_url_is_404_json(api: Api) -> None:
    """A URL that matches no route answers 404 JSON, even without a token."""
    assert_json_error(await api.call("GET", "/v1/nope", as_=None), 404)
    assert_json_error(await api.call("GET", "/", as_=None), 404)


async def test_wrong_method_is_405_json_with_allow(api: Api) -> None:
    """A known path with the wrong method answers 405 JSON with an Allow header."""
    reply = await api.call("DELETE", "/v1/jobs/list")
    assert_json_error(reply, 405)
    assert "POST" in reply.headers.get("Allow", "")


async def test_malformed_json_is_400(api: Api) -> None:
    """A body that is not JSON answers 400 JSON."""
    reply = await api.call("POST", "/v1/nodes/create", data=b"{not json",
                           headers={"Content-Type": "application/json"})
    assert_json_error(reply, 400)


async def test_non_object_body_is_400(api: Api) -> None:
    """A JSON body that is not an object answers 400 where an object is wanted."""
    assert_json_error(await api.call("POST", "/v1/nodes/create", json=[1, 2]), 400)
    assert_json_error(await api.call("POST", "/v1/auth/obtain", as_=None, json="admin"), 400)


@pytest.mark.parametrize("field,value", [("cpu_mem", "lots"), ("cpu_mem", True), ("index", -1),
                                         ("ip", 7), ("gpu_mem", 1.5), ("cpu_mem", 2**70)])
async def test_wrong_node_field_types_are_400_naming_the_field(api: Api, field: str, value: object) -> None:
    """Node fields of the wrong type answer 400 naming the field."""
    body = {"ip": "10.9.9.9", "index": 0, "cpu_mem": 1, field: value}
    assert field in assert_json_error(await api.call("POST", "/v1/nodes/create", json=body), 400)


async def test_unknown_filter_type_is_400(api: Api) -> None:
    """An unknown filter expression type answers 400."""
    reply = await api.call("POST", "/v1/jobs/list", json={"expressions": [{"type": "regex", "field": "pk"}]})
    assert_json_error(reply, 400)


@pytest.mark.parametrize("amount", ["0", "1", ".5", "1.5", "1e-05", "-0.5", "abc"])
async def test_bad_progress_value_is_404_json(api: Api, amount: str) -> None:
    """Progress values other than 0.<digits> or 1.<zeros> do not route: 404 JSON."""
    node = await api.node()
    job = await api.started(node)
    assert_json_error(await api.call("POST", f"/v1/jobs/{job['pk']}/progress/{amount}", node=node), 404)


async def test_progress_body_must_be_an_object(api: Api) -> None:
    """A progress body that is JSON but not an object answers 400."""
    node = await api.node()
    job = await api.started(node)
    assert_json_error(await api.call("POST", f"/v1/jobs/{job['pk']}/progress/0.5", node=node,
                                     json=[1]), 400)


async def test_huge_pk_is_404_not_500(api: Api) -> None:
    """A pk beyond SQLite's integers is a 404, not an overflow."""
    assert_json_error(await api.call("GET", f"/v1/jobs/{10**30}"), 404)


@pytest.mark.parametrize("body", [None, {}, {"success": "yes", "send_notification": "x"},
                                  {"success": True, "send_notification": 3},
                                  {"success": True, "send_notification": "x", "error": None},
                                  {"success": True, "send_notification": "x", "error": 5}])
async def test_bad_finish_bodies_are_400(api: Api, body: object) -> None:
    """Finish bodies with missing or mistyped fields answer 400 and the job stays STARTED."""
    node = await api.node()
    job = await api.started(node)
    path = f"/v1/jobs/{job['pk']}/finish"
    reply = await (api.call("POST", path, node=node) if body is None
                   else api.call("POST", path, node=node, json=body))
    assert_json_error(reply, 400)
    assert (await api.get_job(job))["end_time"] is None


async def test_missing_token_is_401_with_bearer_challenge(api: Api) -> None:
    """No Authorization header: 401 with WWW-Authenticate: Bearer."""
    reply = await api.call("POST", "/v1/jobs/list", as_=None, json={})
    assert_json_error(reply, 401)
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


async def test_garbage_token_is_token_not_valid(api: Api) -> None:
    """A garbage bearer token: 401 code token_not_valid."""
    reply = await api.call("POST", "/v1/jobs/list", token="abc.def.ghi", json={})
    assert assert_json_error(reply, 401)["code"] == "token_not_valid"


async def test_refresh_token_is_not_an_access_token(api: Api) -> None:
    """A refresh token offered as bearer token is refused."""
    refresh = (await api.login("worker"))["refresh"]
    assert_json_error(await api.call("POST", "/v1/jobs/list", token=refresh, json={}), 401)


async def test_access_token_is_not_a_refresh_token(api: Api) -> None:
    """An access token offered to refresh is refused."""
    access = (await api.login("worker"))["access"]
    assert_json_error(await api.call("POST", "/v1/auth/refresh", as_=None, json={"refresh": access}), 401)


async def test_wrong_password_is_401(api: Api) -> None:
    """A wrong password answers 401 and the detail never echoes it."""
    reply = await api.call("POST", "/v1/auth/obtain", as_=None,
                           json={"username": "worker", "password": "sekrit-guess"})
    assert_json_error(reply, 401)
    assert b"sekrit-guess" not in reply.body


async def test_expired_token_is_401(make_server: MakeServer, make_api: MakeApi) -> None:
    """An access token past its lifetime answers 401 token_not_valid; refresh gives a working one."""
    server = await make_server(access_lifetime_s=1)
    api = make_api(server)
    tokens = await api.login("worker")
    # The token must expire: a fixed wait is the scenario (JWT expiry has whole-second precision).
    await asyncio.sleep(2.1)
    reply = await api.call("POST", "/v1/jobs/list", token=tokens["access"], json={})
    assert assert_json_error(reply, 401)["code"] == "token_not_valid"
    fresh = await api.ok("POST", "/v1/auth/refresh", as_=None, json={"refresh": tokens["refresh"]})
    assert await api.ok("POST", "/v1/jobs/list", token=fresh["access"], json={}) is not None


@pytest.mark.parametrize("value", ["abc", "1.5", "-1", "", "99999999", str(10**30)])
async def test_bad_node_id_is_400(api: Api, value: str) -> None:
    """A Node-Id that is not an integer or names no node answers 400 "Bad Node-Id header"."""
    reply = await api.call("POST", "/v1/jobs/list", json={}, headers={"Node-Id": value})
    assert "Node-Id" in assert_json_error(reply, 400)["detail"]


async def test_any_request_with_node_id_updates_last_seen(api: Api, wait_for) -> None:
    """Any request with a valid Node-Id, even a plain read, moves that node's last_seen."""
    node = await api.node()
    before = datetime.fromisoformat((await api.get_node(node))["last_seen"])
    await wait_for(lambda: datetime.now(before.tzinfo) > before, interval_s=0.001,
                   what="the clock to pass the first last_seen")
    await api.ok("GET", f"/v1/job-templates/{await api.template()}", node=node)
    after = datetime.fromisoformat((await api.get_node(node))["last_seen"])
    assert after > before


async def test_timestamps_carry_an_offset(api: Api) -> None:
    """Every timestamp is ISO 8601 with a UTC offset."""
    node = await api.node()
    job = await api.started(node)
    for value in (job["creation_time"], job["start_time"], (await api.get_node(node))["last_seen"]):
        assert datetime.fromisoformat(value).utcoffset() is not None, value


async def test_trailing_slash_is_tolerated(api: Api) -> None:
    """A trailing slash routes like the path without it, for reads and actions."""
    node = await api.node()
    job = await api.job()
    assert (await api.ok("GET", f"/v1/jobs/{job['pk']}/"))["pk"] == job["pk"]
    assert (await api.ok("GET", f"/v1/jobs/{job['pk']}/acquire/", node=node))["node"] == node["pk"]
    assert isinstance(await api.ok("POST", "/v1/nodes/list/", json={}), list)
