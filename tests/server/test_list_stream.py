"""Lists are streamed from a worker thread: the same JSON as before, and the loop stays free."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.server.conftest import ADMIN, Api, MakeApi, MakeServer, server_settings
from ufdl_node.server.app import create_app
from ufdl_node.server.common import store_of
from ufdl_node.server.filters import compile_spec
from ufdl_node.server.rowjson import JOB_JSON_BUILT
from ufdl_node.server.store import HARDWARE_RESOURCE, JOBS, NODES, TEMPLATES, Store, now

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ordered(value: Any) -> str:
    """The value as text that keeps key order, so that equal text means same keys in same order."""
    return json.dumps(value, sort_keys=False)


async def _scene(api: Api) -> None:
    """Jobs in several phases, with outputs, odd text and nested values; a node; a plain template."""
    node = await api.node(gpu_mem=2**33, driver_version="550.1", hardware_generation=8)
    await api.node()
    await api.job(description="zoë ✓ \"quoted\" \\ \n tab\t", parameter_values={
        "data": {"value": {"nested": [1, 2.5, None, True, "ü"]}, "type": "JSON"}})
    started = await api.started(node)
    assert (await api.upload(started, node, "model", "bin", b"abc")).status == 200
    assert (await api.upload(started, node, "log", "txt", b"x")).status == 200
    await api.ok("DELETE", f"/v1/jobs/{started['pk']}/outputs/log/txt", as_="admin")
    held = await api.held(node)
    await api.ok("PATCH", f"/v1/jobs/{held['pk']}", as_="admin", json={"description": "renamed"})
    cancelled = await api.job()
    await api.ok("DELETE", f"/v1/jobs/{cancelled['pk']}/cancel", as_="admin")
    gone = await api.job()
    await api.ok("DELETE", f"/v1/jobs/{gone['pk']}/hard", as_="admin")
    await api.ok("POST", "/v1/job-templates/import", 200, as_="admin", json={
        "name": "plain", "version": 1, "licence": "MIT", "description": "not workable"})


def _hardware(store: Store, query: Any) -> list[dict[str, Any]]:
    """The hardware generations as the real server writes each one."""
    rows = store.db.execute("SELECT * FROM hardware ORDER BY pk DESC").fetchall()
    return [{"pk": r["pk"], "generation": r["generation"], "min_compute_capability": r["min_cc"],
             "max_compute_capability": r["max_cc"]} for r in rows]


@pytest.mark.parametrize(("path", "resource", "old"), [
    ("/v1/jobs/list", JOBS, Store.list_jobs),
    ("/v1/nodes/list", NODES, Store.list_nodes),
    ("/v1/job-templates/list", TEMPLATES, Store.list_templates),
    ("/v1/hardware/list", HARDWARE_RESOURCE, _hardware),
])
async def test_streamed_list_is_the_old_json(make_server: MakeServer, make_api: MakeApi, path: str,
                                             resource: Any, old: Callable[[Store, Any], Any]) -> None:
    """Each streamed list decodes to what the per-row Python code answered, keys in the same order."""
    server = await make_server()
    api = make_api(server)
    await _scene(api)
    spec = {"include_inactive": True, "order_by": [{"field": "pk", "ascending": False}]}
    reply = await api.call("POST", path, as_="admin", json=spec)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    streamed = json.loads(reply.body.decode("utf-8"))
    expected = old(store_of(server.app), compile_spec(spec, resource))  # type: ignore[arg-type]
    assert len(expected) >= 2
    assert ordered(streamed) == ordered(expected)


async def test_kept_job_json_follows_every_change(make_server: MakeServer, make_api: MakeApi) -> None:
    """After creation, transitions, output changes, an edit and a hard delete, each job's kept
    JSON is the JSON built afresh from its rows, and no deleted job keeps any."""
    server = await make_server()
    await _scene(make_api(server))
    db = store_of(server.app).db
    rows = db.execute(f"""SELECT j.pk, k.body, {JOB_JSON_BUILT} FROM jobs j
                          JOIN templates t ON t.pk = j.template LEFT JOIN job_json k ON k.pk = j.pk""")
    kept = {pk: (body, built) for pk, body, built in rows}
    assert len(kept) >= 3
    assert all(body == built for body, built in kept.values()), kept
    assert db.execute("SELECT count(*) FROM job_json").fetchone()[0] == len(kept)


async def test_empty_list_is_an_empty_json_array(api: Api) -> None:
    """A filter that matches nothing answers exactly []."""
    reply = await api.call("POST", "/v1/jobs/list", json={
        "expressions": [{"type": "exact", "field": "description", "value": "no such job, ever"}]})
    assert (reply.status, reply.body) == (200, b"[]")


async def test_bad_filter_is_still_a_400_before_any_streaming(api: Api) -> None:
    """A malformed filter is refused with the usual one-line JSON error, not a broken stream."""
    reply = await api.call("POST", "/v1/jobs/list", json={"expressions": [{"type": "nope"}]})
    assert reply.status == 400
    assert "unknown expression type" in reply.json["detail"]


def _fill(data_dir: Path, count: int) -> None:
    """`count` waiting jobs written straight into a fresh server's database."""
    store = Store(data_dir)
    try:
        template = store.import_template({
            "name": "bulk", "version": 1, "description": "", "scope": "public", "licence": "MIT",
            "workable": 1, "type": "Export", "executor_class": "x", "required_packages": "",
            "parameters": {}})
        stamp = now()
        with store.transaction() as db:
            db.executemany(
                """INSERT INTO jobs (template, input_values, parameter_values, description, creator,
                   creation_time) VALUES (?, '{}', '{}', ?, 1, ?)""",
                ((template, f"job {i:06d}", stamp) for i in range(count)))
    finally:
        store.close()


@pytest.fixture
async def gated_server(tmp_path: Path) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A server on loopback whose jobs list sets an event once its body is read and the query begins."""
    entered = asyncio.Event()

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/v1/jobs/list":
            await request.read()  # the handler's read is then served from the cache: no await
            entered.set()
        return await handler(request)

    _fill(tmp_path / "data", 50_000)
    app = create_app(server_settings(tmp_path / "data"))
    app.middlewares.append(gate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", entered
    await runner.cleanup()


async def test_get_is_answered_while_a_huge_list_is_being_built(
        gated_server: tuple[str, asyncio.Event]) -> None:
    """A GET sent once a 50,000-job list has begun completes before the list's first byte arrives."""
    url, entered = gated_server
    events: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.post(f"{url}/v1/auth/obtain", json=dict(zip(("username", "password"), ADMIN,
                                                                         strict=True))) as r:
            headers = {"Authorization": f"Bearer {(await r.json())['access']}"}

        async def big_list() -> int:
            # Sorting on a column without an index: SQLite must see every row before the first.
            spec = {"order_by": [{"field": "description", "ascending": False}]}
            async with session.post(f"{url}/v1/jobs/list", json=spec, headers=headers) as r:
                events.append("list headers")
                return len(json.loads(await r.read()))

        listing = asyncio.create_task(big_list())
        await entered.wait()
        async with session.get(f"{url}/v1/jobs/1", headers=headers) as r:
            assert r.status == 200
            events.append("get")
        assert await listing == 50_000
    assert events == ["get", "list headers"]


async def test_a_list_failing_midway_cuts_the_connection_and_the_server_goes_on(
        make_server: MakeServer, make_api: MakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list that fails after its first chunk reaches the client as a broken body, never as
    valid JSON, and the next request is served."""
    def failing(self: Store, *args: Any) -> Any:
        yield b'[{"pk":1}'
        raise RuntimeError("disk gone")

    server = await make_server()
    api = make_api(server)
    job = await api.job()
    monkeypatch.setattr(Store, "list_chunks", failing)
    with pytest.raises(aiohttp.ClientPayloadError):
        await api.call("POST", "/v1/jobs/list", json={})
    monkeypatch.undo()
    assert (await api.get_job(job))["pk"] == job["pk"]
    assert [j["pk"] for j in await api.ok("POST", "/v1/jobs/list", json={})] == [job["pk"]]
