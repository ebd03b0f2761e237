"""Hostile input found by a security review: each answers a clear 4xx, never a 500 or a leak."""

from __future__ import annotations

import io
import stat

from ufdl_node.logs import configure_logging
from ufdl_node.server.auth import hash_password
from ufdl_node.server.common import store_of

from .conftest import WORKER, Api, MakeApi, MakeServer, Reply


def assert_status(reply: Reply, status: int) -> None:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.json.get("detail"), reply.body[:300]


async def test_lone_surrogates_in_json_are_400(api: Api) -> None:
    """JSON text with a lone surrogate (\\ud800) is refused with 400, not a database crash."""
    body = b'{"username": "\\ud800", "password": "x"}'
    assert_status(await api.call("POST", "/v1/auth/obtain", as_=None, data=body,
                                 headers={"Content-Type": "application/json"}), 400)
    node = b'{"ip": "\\udfff", "index": 0, "cpu_mem": 1}'
    assert_status(await api.call("POST", "/v1/nodes/create", data=node,
                                 headers={"Content-Type": "application/json"}), 400)


async def test_a_refresh_token_that_is_not_ascii_is_401(api: Api) -> None:
    """A refresh token with characters no JWT has is 401, not a crash inside the JWT library."""
    assert_status(await api.call("POST", "/v1/auth/refresh", as_=None, json={"refresh": "é.é.é"}), 401)
    body = b'{"refresh": "\\ud800abc"}'  # not even valid Unicode: refused as a body
    assert_status(await api.call("POST", "/v1/auth/refresh", as_=None, data=body,
                                 headers={"Content-Type": "application/json"}), 400)


async def test_a_bearer_token_that_is_not_ascii_is_401(api: Api) -> None:
    """An Authorization header with non-ASCII text is 401 token_not_valid."""
    reply = await api.call("POST", "/v1/jobs/list", token="ÿþ-not-a-jwt", json={})
    assert_status(reply, 401)
    assert reply.json["code"] == "token_not_valid"


async def test_a_pk_of_thousands_of_digits_is_404(api: Api) -> None:
    """A path pk too long for Python to parse is 404, with and without a web-socket upgrade."""
    huge = "1" * 5000
    assert_status(await api.call("GET", f"/v1/jobs/{huge}"), 404)
    assert_status(await api.call("GET", f"/v1/jobs/{huge}", as_=None,
                                 headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                          "Sec-WebSocket-Version": "13"}), 404)


async def test_deeply_nested_json_is_400(api: Api) -> None:
    """JSON nested a hundred thousand levels deep is 400, not a RecursionError."""
    assert_status(await api.call("POST", "/v1/auth/obtain", as_=None, data=b"[" * 100_000,
                                 headers={"Content-Type": "application/json"}), 400)


async def test_a_json_body_over_one_mib_is_413(api: Api) -> None:
    """JSON bodies are parsed whole, so they are capped (uploads stream and have their own limit)."""
    big = b'{"username": "' + b"x" * (2 * 2**20) + b'", "password": "x"}'
    reply = await api.call("POST", "/v1/auth/obtain", as_=None, data=io.BytesIO(big),
                           headers={"Content-Type": "application/json"})
    assert reply.status == 413, reply.status


async def test_malformed_content_disposition_is_400(api: Api) -> None:
    """An upload whose Content-Disposition parameters are malformed is 400, and stores nothing."""
    node = await api.node()
    job = await api.started(node)
    odd = "attachment; filename*=utf-8''%ff%fe; filename*0=a"
    reply = await api.call("POST", f"/v1/jobs/{job['pk']}/outputs/out/json", node=node, data=b"{}",
                           headers={"Content-Disposition": odd, "Content-Type": "application/data"})
    assert_status(reply, 400)
    assert (await api.get_job(job))["outputs"] == []


async def test_an_ordinary_user_cannot_act_for_a_node_of_another_user(make_server: MakeServer,
                                                                      make_api: MakeApi, tmp_path) -> None:
    """A node an ordinary user created is that user's: another ordinary user's Node-Id use is 403.

    Nodes that staff created (provisioned for workers) stay open to every user.
    """
    server = await make_server(tmp_path / "owners")
    store_of(server.app).put_user("other", hash_password("other-pw-123"), False)
    api = make_api(server)
    other = await api.call("POST", "/v1/auth/obtain", as_=None,
                           json={"username": "other", "password": "other-pw-123"})
    other_token = other.json["access"]
    mine = await api.node()  # created by "worker"
    job = await api.job()
    reply = await api.call("GET", f"/v1/jobs/{job['pk']}/acquire", node=mine, token=other_token)
    assert_status(reply, 403)
    assert "another user" in reply.json["detail"]
    assert (await api.get_job(job))["node"] is None
    reply = await api.call("PATCH", f"/v1/nodes/{mine['pk']}", node=mine, token=other_token,
                           json={"cpu_mem": 2})
    assert_status(reply, 403)
    provisioned = await api.ok("POST", "/v1/nodes/create", 201, as_="admin",
                               json={"ip": "10.250.0.1", "index": 0, "cpu_mem": 1})
    await api.ok("GET", f"/v1/jobs/{job['pk']}/acquire", node=provisioned, token=other_token)
    await api.ok("GET", f"/v1/jobs/{(await api.job())['pk']}/acquire", node=mine)


async def test_data_dir_is_private_and_stale_uploads_are_swept(make_server: MakeServer, tmp_path) -> None:
    """A new data directory is 0700; upload leftovers of a crash are removed at start."""
    data = tmp_path / "fresh"
    server = await make_server(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    await server.stop()
    leftover = data / "outputs" / ".upload-deadbeef.part"
    leftover.write_bytes(b"half an upload")
    await make_server(data)
    assert not leftover.exists()


async def test_a_crash_on_the_console_shows_no_local_variables(api: Api) -> None:
    """Console logs render exceptions without frame locals (which can hold a password)."""
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    try:
        secret = WORKER[1]  # a local that a locals-showing traceback would print
        raise RuntimeError("boom")
    except RuntimeError:
        from ufdl_node.logs import get_logger

        get_logger("t").exception("failed", user="worker")
    text = stream.getvalue()
    assert "Traceback" in text and "boom" in text
    assert secret not in text
