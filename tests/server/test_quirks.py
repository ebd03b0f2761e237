"""real_server_quirks: the embedded server imitates the real UFDL server where it differs (section 7)."""

from __future__ import annotations

import aiohttp
import pytest

from .conftest import Api, MakeApi, MakeServer

WS_OVERRIDE = {"keep_default": True, "actions": {"on_start": [{}]}}


@pytest.fixture
async def quirky(make_server: MakeServer, make_api: MakeApi) -> Api:
    return make_api(await make_server(real_server_quirks=True))


async def test_illegal_transition_is_500_html(quirky: Api) -> None:
    """Release of a started job answers the real server's 500 HTML page."""
    node = await quirky.node()
    job = await quirky.started(node)
    reply = await quirky.call("DELETE", f"/v1/jobs/{job['pk']}/release", node=node)
    assert reply.status == 500 and "text/html" in reply.headers["Content-Type"]


async def test_unrouted_url_is_404_html(quirky: Api) -> None:
    """A bad progress value is a 404 HTML page, as Django answers it."""
    node = await quirky.node()
    job = await quirky.started(node)
    reply = await quirky.call("POST", f"/v1/jobs/{job['pk']}/progress/1.5", node=node)
    assert reply.status == 404 and "text/html" in reply.headers["Content-Type"]


async def test_reset_keeps_outputs_soft_deleted(quirky: Api) -> None:
    """After reset the output is still listed, info shows deletion_time, and a re-upload is 400."""
    node = await quirky.node()
    job = await quirky.started(node)
    await quirky.upload(job, node, "log", "json", b"first")
    await quirky.finish(job, node, error="retry")
    await quirky.ok("DELETE", f"/v1/jobs/{job['pk']}/reset", node=node)
    await quirky.ok("POST", f"/v1/jobs/{job['pk']}/start", node=node, json={"send_notification": "x"})
    assert [o["name"] for o in (await quirky.get_job(job))["outputs"]] == ["log"]
    info = await quirky.ok("GET", f"/v1/jobs/{job['pk']}/outputs/log/json/info")
    assert info["deletion_time"] is not None
    assert (await quirky.upload(job, node, "log", "json", b"second")).status == 400


async def test_bare_node_id_drives_node_actions(quirky: Api) -> None:
    """Acquire and ping work with a bare Node-Id and no token."""
    node = await quirky.node()
    job = await quirky.job()
    assert (await quirky.call("GET", f"/v1/jobs/{job['pk']}/acquire", as_=None, node=node)).status == 200
    assert (await quirky.call("GET", "/v1/nodes/ping", as_=None, node=node)).status == 200
    assert (await quirky.call("POST", "/v1/jobs/list", as_=None, node=node, json={})).status == 401


async def test_anonymous_upload_is_500_and_stores_nothing(quirky: Api) -> None:
    """An upload with a bare Node-Id fails with 500, as on the real server, and adds no output."""
    node = await quirky.node()
    job = await quirky.started(node)
    assert (await quirky.upload(job, node, "log", "json", as_=None)).status == 500
    assert (await quirky.get_job(job))["outputs"] == []


async def test_web_socket_needs_a_notification_override(quirky: Api) -> None:
    """The handshake is refused (403) unless the job asked for notifications at creation."""
    plain = await quirky.job()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await quirky.session.ws_connect(f"{quirky.url}/v1/jobs/{plain['pk']}")
    assert refused.value.status == 403
    asked = await quirky.job(notification_override=WS_OVERRIDE)
    ws = await quirky.session.ws_connect(f"{quirky.url}/v1/jobs/{asked['pk']}")
    await ws.close()


async def test_node_create_field_errors_have_no_detail(quirky: Api) -> None:
    """Node-create errors are DRF field errors without "detail"."""
    reply = await quirky.call("POST", "/v1/nodes/create", json={"ip": "10.0.0.1", "index": 0})
    assert reply.status == 400 and "cpu_mem" in reply.json and "detail" not in reply.json


async def test_a_bad_dataset_create_is_field_errors_alone(quirky: Api) -> None:
    """A create without its project and with a licence by name: DRF's field errors, no "detail"."""
    reply = await quirky.call("POST", "/v1/classify/datasets/create",
                              json={"name": "q", "licence": "Apache 2.0", "tags": ""})
    assert reply.status == 400 and reply.json == {
        "project": ["This field is required."],
        "licence": ["Incorrect type. Expected pk value, received str."]}, reply
