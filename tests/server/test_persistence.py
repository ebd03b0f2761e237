"""Restarts: everything lives in the data directory, and tokens outlive the process."""

from __future__ import annotations

import stat
from pathlib import Path

from .conftest import Api, MakeApi, MakeServer


async def test_everything_survives_a_restart(make_server: MakeServer, make_api: MakeApi) -> None:
    """Stop and start on one data dir: users, nodes, templates, jobs, outputs and phases remain."""
    first = await make_server()
    api: Api = make_api(first)
    node = await api.node(hardware_generation=1, gpu_mem=10, driver_version="550")
    started = await api.started(node)
    await api.ok("POST", f"/v1/jobs/{started['pk']}/progress/0.5", node=node)
    out = (await api.upload(started, node, "log", "json", b"kept bytes")).json
    finished = await api.started(await api.node())
    await api.finish(finished, {"pk": finished["node"]})
    cancelled = await api.job()
    await api.ok("DELETE", f"/v1/jobs/{cancelled['pk']}/cancel", as_="admin")
    before = {pk: await api.get_job({"pk": pk}) for pk in (started["pk"], finished["pk"], cancelled["pk"])}
    node_before = await api.get_node(node)
    template = await api.ok("GET", f"/v1/job-templates/{await api.template()}")
    await first.stop()

    second = await make_server()
    again: Api = make_api(second)
    for pk, job in before.items():
        assert await again.get_job({"pk": pk}) == job
    assert await again.get_node(node) == node_before
    assert node_before["current_job"] == started["pk"]
    assert await again.ok("GET", f"/v1/job-templates/{template['pk']}") == template
    assert (await again.call("GET", f"/v1/jobs/{started['pk']}/outputs/log/json")).body == b"kept bytes"
    assert (await again.ok("GET", f"/v1/jobs/{started['pk']}/outputs/log/json/info"))["pk"] == out["pk"]


async def test_tokens_survive_a_restart(make_server: MakeServer, make_api: MakeApi) -> None:
    """An access and a refresh token issued before a restart still work after it (the key is kept)."""
    first = await make_server()
    tokens = await make_api(first).login("worker")
    await first.stop()
    second = await make_server()
    api: Api = make_api(second)
    assert await api.ok("POST", "/v1/jobs/list", token=tokens["access"], json={}) == []
    assert "access" in await api.ok("POST", "/v1/auth/refresh", as_=None, json={"refresh": tokens["refresh"]})


async def test_signing_key_is_private(make_server: MakeServer) -> None:
    """The signing key file is readable by its owner only."""
    server = await make_server()
    key = Path(server.settings.data_dir) / "jwt-signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


async def test_passwords_are_not_stored_in_clear(make_server: MakeServer) -> None:
    """No file in the data directory contains a configured password."""
    server = await make_server()
    await server.stop()
    for path in Path(server.settings.data_dir).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"adminpw" not in data and b"workerpw" not in data, path


async def test_changed_password_setting_takes_effect_on_restart(
        make_server: MakeServer, make_api: MakeApi) -> None:
    """The users follow the settings: a new worker password works after a restart, the old one does not."""
    first = await make_server()
    await first.stop()
    second = await make_server(worker="worker:newpw")
    api: Api = make_api(second)
    path = "/v1/auth/obtain"
    old = await api.call("POST", path, as_=None, json={"username": "worker", "password": "workerpw"})
    new = await api.call("POST", path, as_=None, json={"username": "worker", "password": "newpw"})
    assert (old.status, new.status) == (401, 200)
