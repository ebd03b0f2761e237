"""Hostile input found by a security review: each answers a clear 4xx, never a 500 or a leak."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import time
from typing import Any

import jwt
import pytest

from ufdl_node.logs import configure_logging
from ufdl_node.server import EmbeddedServer, filters
from ufdl_node.server.auth import hash_password, load_signing_key
from ufdl_node.server.common import store_of

from .conftest import TEMPLATE, WORKER, Api, MakeApi, MakeServer, Reply, seg


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
    """A node is its creator's: another ordinary user's use of its Node-Id is 403.

    So is a node that staff created: an ordinary user may not drive it (acquire, start, finish,
    progress, ping), or any account could act as a provisioned worker; staff still may.
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
    for token in (other_token, None):  # None: the "worker" user
        for method, path in (("GET", f"/v1/jobs/{job['pk']}/acquire"),
                             ("POST", f"/v1/jobs/{job['pk']}/start"),
                             ("POST", f"/v1/jobs/{job['pk']}/finish"),
                             ("GET", "/v1/nodes/ping")):
            reply = await api.call(method, path, node=provisioned, token=token, json={})
            assert_status(reply, 403)
            assert "another user" in reply.json["detail"]
    assert (await api.get_job(job))["node"] is None
    await api.ok("GET", f"/v1/jobs/{job['pk']}/acquire", node=provisioned, as_="admin")
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


# -- issue 12, item 4: hostile input that used to reach a 500 --------------------------------------


def _leaf(n: int) -> dict[str, Any]:
    return {"type": "exact", "field": "pk", "value": n}


async def test_an_or_of_a_thousand_terms_is_400(api: Api) -> None:
    """One `or` with 1,000 sub-expressions is a clear 400, not SQLite's "expression tree too large"."""
    spec = {"expressions": [{"type": "or", "sub_expressions": [_leaf(n) for n in range(1000)]}]}
    reply = await api.call("POST", "/v1/jobs/list", json=spec)
    assert_status(reply, 400)
    assert "terms" in reply.json["detail"]


async def test_twelve_hundred_top_level_expressions_are_400(api: Api) -> None:
    """1,200 top-level expressions are a clear 400, not a 500."""
    spec = {"expressions": [_leaf(n) for n in range(1200)]}
    assert_status(await api.call("POST", "/v1/nodes/list", json=spec), 400)


async def test_a_filter_at_the_term_limit_runs(api: Api) -> None:
    """The largest filter the bounds allow, nested as deep as allowed and inverted, runs in SQLite."""
    def leaf(n: int) -> dict[str, Any]:
        # The deepest SQL a leaf makes: instr(lower(CAST(... AS TEXT)), lower(?)) > 0, inverted.
        return {"type": "contains", "field": "template.name", "sub_string": f"d{n}",
                "case_insensitive": True, "invert": True}
    levels = filters.MAX_DEPTH - 1  # each level is an `and` and one leaf: two terms
    expr: dict[str, Any] = {"type": "or", "invert": True,
                            "sub_expressions": [leaf(n) for n in range(filters.MAX_TERMS - 2 * levels - 1)]}
    for n in range(levels):
        expr = {"type": "and", "invert": True, "sub_expressions": [expr, leaf(n)]}
    reply = await api.call("POST", "/v1/jobs/list", json={"expressions": [expr]})
    assert reply.status == 200, reply.body[:300]
    one_more = {"type": "and", "sub_expressions": [expr, leaf(0)]}
    assert_status(await api.call("POST", "/v1/jobs/list", json={"expressions": [one_more]}), 400)


async def test_a_database_refusal_of_a_list_filter_is_400(make_server: MakeServer, make_api: MakeApi,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the term bound, SQLite's own refusal of a list query still answers 400, not 500."""
    monkeypatch.setattr(filters, "MAX_TERMS", 100_000)
    api = make_api(await make_server())
    spec = {"expressions": [{"type": "or", "sub_expressions": [_leaf(n) for n in range(3000)]}]}
    reply = await api.call("POST", "/v1/jobs/list", json=spec)
    assert_status(reply, 400)


def _signed(server_key: bytes, **claims: Any) -> str:
    now = int(time.time())
    body = {"token_type": "access", "iat": now, "exp": now + 60, "jti": "x", **claims}
    return jwt.encode(body, server_key, algorithm="HS256")


@pytest.mark.parametrize("user_id", [2**63, 2**64 + 5, 10**40, -(2**63) - 1, -1, 0, "1", 1.0, None, True])
async def test_a_signed_token_with_an_impossible_user_id_is_401(api: Api, shared_server: EmbeddedServer,
                                                                user_id: Any) -> None:
    """A validly signed token whose user_id is no possible pk is 401 token_not_valid, never a 500."""
    token = _signed(load_signing_key(shared_server.settings.data_dir), user_id=user_id)
    reply = await api.call("POST", "/v1/jobs/list", token=token, json={})
    assert_status(reply, 401)
    assert reply.json["code"] == "token_not_valid"
    refresh = _signed(load_signing_key(shared_server.settings.data_dir), user_id=user_id,
                      token_type="refresh")
    reply = await api.call("POST", "/v1/auth/refresh", as_=None, json={"refresh": refresh})
    assert_status(reply, 401)


@pytest.mark.parametrize("value", [str(2**63), str(2**64), "9" * 30, "-9223372036854775809",
                                   "+1", "1_0", "١٢"])
async def test_a_node_id_that_is_no_possible_pk_is_400(api: Api, value: str) -> None:
    """A Node-Id header out of SQLite's range, signed, or in non-ASCII digits is 400 Bad Node-Id header."""
    reply = await api.call("GET", "/v1/nodes/ping", headers={"Node-Id": value})
    assert_status(reply, 400)
    assert reply.json["detail"] == "Bad Node-Id header"


async def test_a_path_pk_in_non_ascii_digits_is_404(api: Api) -> None:
    """A pk written in Arabic-Indic digits names no job (it is not read as the ASCII number)."""
    job = await api.job()
    arabic = "".join(chr(0x0660 + int(d)) for d in str(job["pk"]))
    assert_status(await api.call("GET", f"/v1/jobs/{seg(arabic)}"), 404)


async def _raw(server: EmbeddedServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes and read the whole answer (the server closes after a parse error)."""
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


PARSER_REJECTS = {
    "unknown method": b"FROB /v1/jobs/list HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8 kB": b"GET /v1/nodes/ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "negative Content-Length": b"POST /v1/jobs/list HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "request line over 8 kB": b"GET /v1/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "malformed header line": b"GET /v1/nodes/ping HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(PARSER_REJECTS))
async def test_a_request_the_http_parser_rejects_is_answered_in_json(shared_server: EmbeddedServer,
                                                                     name: str) -> None:
    """What aiohttp's HTTP parser refuses is a 400 with a JSON {"detail"}, like every other error."""
    status, headers, body = await _raw(shared_server, PARSER_REJECTS[name])
    assert status == 400, (status, body[:300])
    assert headers["content-type"].startswith("application/json"), headers
    assert json.loads(body)["detail"]


async def test_a_parser_rejection_does_not_echo_the_request(shared_server: EmbeddedServer) -> None:
    """The JSON detail of a parse error never repeats header bytes (they may carry a token)."""
    secret = "Bearer eyJzZWNyZXQ"
    request = f"GET /v1/nodes/ping HTTP/1.1\r\nHost: x\r\nAuthorization {secret}\r\n\r\n".encode()
    status, _headers, body = await _raw(shared_server, request)
    assert status == 400
    assert "eyJzZWNyZXQ" not in body.decode()


async def test_a_body_that_cannot_be_decoded_is_400_json(shared_server: EmbeddedServer) -> None:
    """A body declared gzip that is not gzip is a 400 JSON error, not a 500."""
    request = (b"POST /v1/auth/obtain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Encoding: gzip\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde")
    status, headers, body = await _raw(shared_server, request)
    assert status == 400, (status, body[:300])
    assert headers["content-type"].startswith("application/json")
    assert "content-encoding" in json.loads(body)["detail"]


async def test_more_orderings_than_the_limit_are_400(api: Api) -> None:
    """An order_by list longer than the bound is a clear 400."""
    order = [{"field": "pk"}] * (filters.MAX_ORDERINGS + 1)
    assert_status(await api.call("POST", "/v1/jobs/list", json={"order_by": order}), 400)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
async def test_json_numbers_that_are_not_finite_are_400(api: Api, number: bytes) -> None:
    """NaN, Infinity and out-of-range numbers are refused, or they would come back as invalid JSON."""
    spec = dict(TEMPLATE, name="nan-default")
    body = json.dumps(spec).replace('"default": {}', '"default": ' + number.decode()).encode()
    reply = await api.call("POST", "/v1/job-templates/import", as_="admin", data=body,
                           headers={"Content-Type": "application/json"})
    assert_status(reply, 400)
    assert number.decode() in reply.json["detail"] or "out of range" in reply.json["detail"]
