"""Faults that hit between the steps of a job: whatever lands, the job never stays wedged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from ufdl_node.client import UfdlClient

from ..faults import FaultProxy
from .conftest import WORKER_PW, Jobs, node_settings, phase


@pytest.fixture
async def proxy(server) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(server.url) as p:
        yield p


async def test_start_that_landed_during_an_outage_is_run(proxy, jobs: Jobs, start_daemon):
    """start lands, its reply is lost and reads fail for a while: the job is run, not left STARTED."""
    lost = proxy.drop("POST", r"/v1/jobs/\d+/start/?$", after_forward=True, times=1)
    outage = proxy.fail("GET", r"/v1/jobs/\d+/?$", status=503, times=20)
    job = await jobs.create(seconds=0.2)
    start_daemon(proxy.url)
    done = await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=30)
    assert jobs.runs(job) == 1
    assert (await jobs.admin.get_node(done["node"]))["current_job"] is None
    after = await jobs.create()
    await jobs.wait(after, lambda j: phase(j) == "FINISHED")
    assert lost.hits == 1 and outage.hits >= 1


async def test_acquire_that_landed_unseen_is_released_by_the_sweep(proxy, jobs: Jobs, start_daemon):
    """acquire lands but the node never learns it: the idle sweep releases the hold and the job runs."""
    lost = proxy.drop("GET", r"/v1/jobs/\d+/acquire/?$", after_forward=True, times=1)
    outage = proxy.fail("GET", r"/v1/jobs/\d+/?$", status=503, times=6)
    job = await jobs.create()
    start_daemon(proxy.url, ping_interval_s=0.5)
    await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=20)
    assert jobs.runs(job) == 1
    assert lost.hits == 1 and outage.hits >= 1


async def test_a_job_that_cannot_start_here_does_not_block_the_others(proxy, admin, jobs: Jobs, registry,
                                                                      start_daemon, wait_for):
    """A job whose template this node may not read is backed off; later jobs run; no acquire storm."""
    blocked = await jobs.create()
    spec = registry.for_template("test_job", 2)
    assert spec is not None and spec.description is not None
    await admin.import_template(spec.description.import_spec("test_job", version=2))
    other_template = max(t["pk"] for t in await admin.list_templates())
    forbidden = proxy.fail("GET", rf"/v1/job-templates/{jobs.template_pk}/?$", status=403)
    jobs.template_pk = other_template
    other = await jobs.create()
    start_daemon(proxy.url, poll_interval_s=0.5)
    await jobs.wait(other, lambda j: phase(j) == "FINISHED", timeout_s=20)
    assert forbidden.hits >= 1
    # four more polls (about 2 s) that each saw the blocked job: a storm would acquire it each time
    polls = proxy.count("POST", r"/v1/jobs/list")
    await wait_for(lambda: proxy.count("POST", r"/v1/jobs/list") >= polls + 4, what="four more polls")
    acquires = proxy.count("GET", rf"/v1/jobs/{blocked['pk']}/acquire")
    assert 1 <= acquires <= 4, f"{acquires} acquires of a job that cannot start here"
    assert (await jobs.get(blocked))["node"] is None


async def test_progress_data_that_is_not_json_does_not_fail_the_job(server, jobs: Jobs, start_daemon,
                                                                    wait_for):
    """Progress data with objects and reserved keys: sent as text, renamed, and the job finishes."""
    job = await jobs.create("odd_progress")
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(server.url.replace("http", "ws") + f"/v1/jobs/{job['pk']}") as ws:
        start_daemon(server)
        await jobs.wait(job, lambda j: phase(j) == "FINISHED")

        async def odd_progress() -> dict | None:
            # the job is over: its messages are all sent, so each receive returns at once
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type == aiohttp.WSMsgType.TEXT, f"the web socket ended first: {msg}"
            message = json.loads(msg.data)
            data = message.get("transition_data") or {}
            return data if message.get("transition") == "progress" and "when" in data else None

        sent = await wait_for(odd_progress, interval_s=0, what="the odd progress message")
    assert sent["where"] == "/tmp" and sent["data_node"] == "n1" and sent["data_transition"] == "x", sent
    assert "node" not in sent and sent["when"].startswith("<object object")


async def test_a_hand_back_cut_short_is_completed_at_the_next_start(server, jobs: Jobs, registry, tmp_path):
    """A job errored for a hand-back whose reset/release never came is handed back by the next start."""
    from .conftest import Daemon

    job = await jobs.create()
    settings = node_settings(server, tmp_path, "r", node_ip="127.0.0.77")
    async with UfdlClient(server.url, "worker", WORKER_PW) as worker:
        node = await worker.create_node({"ip": "127.0.0.77", "index": 0, "cpu_mem": 2**30})
        await worker.acquire(job["pk"], node["pk"])
        await worker.start(job["pk"], node["pk"])
        await worker.finish(job["pk"], node["pk"], error="node shutting down")
    settings.state_dir.mkdir(parents=True)
    (settings.state_dir / "state.json").write_text(json.dumps({"attempts": {}, "handbacks": [job["pk"]]}))
    daemon = Daemon(settings, registry)
    try:
        done = await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=20)
        assert done["node"] == node["pk"] and jobs.runs(job) == 1
        assert json.loads((settings.state_dir / "state.json").read_text())["handbacks"] == []
    finally:
        assert await daemon.stop() == 0


async def test_a_handler_that_will_not_stop_is_not_handed_back(server, jobs: Jobs, start_daemon, monkeypatch):
    """Shutdown with a handler that ignores cancellation: the job ends ERRORED, never runs twice at once."""
    monkeypatch.setattr("ufdl_node.api.process.RUN_STOP_SLACK_S", 1.0)  # the wait for ctx.run's own cleanup
    job = await jobs.create("stubborn", seconds=60)
    daemon = start_daemon(server, grace_period_s=0.2, cancel_grace_s=0.1)
    await jobs.wait(job, lambda j: phase(j) == "STARTED")
    assert await daemon.stop() == 0
    done = await jobs.get(job)
    jobs.release_gate(job)  # the abandoned handler ends, not the rest of the session's loop
    assert phase(done) == "ERRORED", done
    assert done["error_reason"] == "node shutting down; the handler did not stop"


async def test_template_pk_is_read_once(proxy, jobs: Jobs, start_daemon):
    """Three jobs of one template: the template is read once (a template version does not change)."""
    created = [await jobs.create() for _ in range(3)]
    start_daemon(proxy.url)
    for job in created:
        await jobs.wait(job, lambda j: phase(j) == "FINISHED")
    assert proxy.count("GET", rf"/v1/job-templates/{jobs.template_pk}/?$") == 1


