"""Faults on every lifecycle call, and the real server's quirks: the job still ends exactly once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import psutil
import pytest

from tests.conftest import wait_for
from ufdl_node.client import UfdlClient
from ufdl_node.server.common import store_of

from ..faults import FaultProxy
from .conftest import WORKER_PW, Jobs, phase
from .handlers.testjobs import expected_output

LIFECYCLE = {
    "acquire": ("GET", r"/v1/jobs/\d+/acquire/?$"),
    "start": ("POST", r"/v1/jobs/\d+/start/?$"),
    "progress": ("POST", r"/v1/jobs/\d+/progress/"),
    "upload": ("POST", r"/v1/jobs/\d+/outputs/result/bin/?$"),
    "finish": ("POST", r"/v1/jobs/\d+/finish/?$"),
}


@pytest.fixture
async def proxy(server) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(server.url) as p:
        yield p


async def _finished_once(jobs: Jobs, job: dict, tmp_path, timeout_s: float = 40) -> dict:
    done = await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=timeout_s)
    assert jobs.runs(job) == 1
    results = [o for o in done["outputs"] if o["name"] == "result"]
    assert len(results) == 1, done["outputs"]
    path = await jobs.admin.download_output(job["pk"], "result", "bin", tmp_path / "result")
    assert path.read_bytes() == expected_output(job["pk"], 4096)
    node = await jobs.admin.get_node(done["node"])
    assert node["current_job"] is None
    return done


@pytest.mark.parametrize("call", sorted(LIFECYCLE))
async def test_503_twice_on_a_lifecycle_call(proxy, jobs: Jobs, start_daemon, tmp_path, call):
    """Two 503s on acquire/start/progress/upload/finish: retried, and the job finishes once."""
    method, path = LIFECYCLE[call]
    rule = proxy.fail(method, path, status=503, times=2)
    # progress: the next report is the retry, and a job that succeeded sends no last one
    job = await jobs.create(seconds=1.5 if call == "progress" else 0.3)
    start_daemon(proxy.url)
    await _finished_once(jobs, job, tmp_path)
    assert rule.hits == 2 and proxy.count(method, path) >= 3


@pytest.mark.parametrize("call", sorted(LIFECYCLE))
async def test_reply_lost_after_the_server_acted(proxy, jobs: Jobs, start_daemon, tmp_path, call):
    """The server performs the call but the connection drops before the reply: read back, no double effect."""
    method, path = LIFECYCLE[call]
    rule = proxy.drop(method, path, after_forward=True, times=1)
    job = await jobs.create(seconds=0.3)
    start_daemon(proxy.url)
    await _finished_once(jobs, job, tmp_path)
    assert rule.hits == 1


@pytest.mark.parametrize("call", ["start", "finish"])
async def test_html_500_after_the_server_acted(proxy, jobs: Jobs, start_daemon, tmp_path, call):
    """A 500 HTML page on a call the server did perform settled by reading back."""
    method, path = LIFECYCLE[call]
    rule = proxy.fail(method, path, status=500, after_forward=True, times=1)
    job = await jobs.create(seconds=0.3)
    start_daemon(proxy.url)
    await _finished_once(jobs, job, tmp_path)
    assert rule.hits == 1


@pytest.mark.parametrize("call", [("DELETE", r"/reset/?$"), ("DELETE", r"/release/?$")])
async def test_faults_on_hand_back(proxy, jobs: Jobs, start_daemon, call):
    """A 503 then a dropped reply on reset and release while handing a job back: it still runs again."""
    # A 503 first (retried), then the retry lands but its reply is lost (read back). In the
    # other order the read-back settles the drop and the 503 would never be met.
    refused = proxy.fail(call[0], call[1], status=503, times=1)
    lost = proxy.drop(call[0], call[1], after_forward=True, times=1)
    job = await jobs.create("retry")
    start_daemon(proxy.url, max_attempts=2)
    done = await jobs.wait(job, lambda j: phase(j) == "ERRORED" and "gave up" in (j["error_reason"] or ""))
    assert jobs.runs(job) == 2, done
    assert lost.hits == 1 and refused.hits == 1


async def test_garbage_job_list_does_not_kill_the_daemon(proxy, jobs: Jobs, start_daemon, tmp_path):
    """A find-work reply that is not a job list is logged; the daemon keeps polling and runs the job."""
    html = proxy.fail("POST", r"/v1/jobs/list/?$", status=200, body="<html>not json</html>", times=2)
    odd = proxy.fail("POST", r"/v1/jobs/list/?$", status=200, body='[{"pk": "x", "template": 5}, 7]', times=2)
    job = await jobs.create()
    daemon = start_daemon(proxy.url)
    await _finished_once(jobs, job, tmp_path)
    assert not daemon.task.done()
    assert html.hits == 2 and odd.hits == 2


async def test_malformed_job_fields_error_the_job_clearly(server, jobs: Jobs, start_daemon):
    """A job whose parameter value does not fit its type is ERRORED with a one-line reason naming it.

    The embedded server, like the real one, refuses such a job (406): the value is written into
    its database behind its back, as a server that let it through would hold it."""
    params = {"mode": {"value": "ok", "type": "str"}, "seconds": {"value": 0.0, "type": "float"},
              "size": {"value": 10, "type": "int"},
              "marker_dir": {"value": str(jobs.marker_dir), "type": "str"}}
    job = await jobs.admin.create_job(jobs.template_pk, {}, params, description="malformed")
    params["seconds"] = {"value": "soon", "type": "float"}
    assert server.app is not None
    store_of(server.app).db.execute("UPDATE jobs SET parameter_values = ? WHERE pk = ?",
                                    (json.dumps(params), job["pk"]))
    start_daemon(server)
    done = await jobs.wait(job, lambda j: phase(j) == "ERRORED")
    assert "seconds" in done["error_reason"] and "\n" not in done["error_reason"], done


# -- between the acquire and the start (the daemon reads no job back after its acquire)


async def test_a_job_cancelled_between_acquire_and_start_is_not_run(proxy, jobs: Jobs, start_daemon):
    """Cancelled after the acquire, before the start landed: the start's reply shows it; no handler runs."""
    job = await jobs.create(seconds=0.3)
    held_up = proxy.delay(*LIFECYCLE["start"], 2.0, times=1)
    daemon = start_daemon(proxy.url)
    await wait_for(lambda: held_up.hits >= 1, what="the daemon's start to reach the proxy")
    await jobs.admin.cancel(job["pk"])
    await wait_for(lambda: daemon.sample("ufdl_node_jobs_total", outcome="cancelled") >= 1,
                   what="the daemon to give the job up")
    done = await jobs.get(job)
    assert phase(done) == "CANCELLED" and done["is_cancelled"]
    assert jobs.runs(job) == 0
    await jobs.wait_node_free(daemon.supervisor.slots[0].node_pk)


async def test_a_job_another_node_takes_before_the_start_is_left_to_it(proxy, server, jobs: Jobs,
                                                                        start_daemon):
    """Taken by another node before the daemon's start landed: the start is refused and the job left alone."""
    job = await jobs.create(seconds=0.3)
    held_up = proxy.delay(*LIFECYCLE["start"], 2.0, times=1)
    daemon = start_daemon(proxy.url)
    await wait_for(lambda: held_up.hits >= 1, what="the daemon's start to reach the proxy")
    async with UfdlClient(server.url, "worker", WORKER_PW) as other:
        node = await other.create_node({"ip": "127.0.0.89", "index": 0, "cpu_mem": 2**30})
        await jobs.admin.abort(job["pk"])
        await other.acquire(job["pk"], node["pk"])
        await wait_for(lambda: daemon.sample("ufdl_node_jobs_total", outcome="released") >= 1,
                       what="the daemon to give the job up")
        left = await jobs.get(job)
        assert left["node"] == node["pk"] and left["start_time"] is None and left["error_reason"] is None
    assert jobs.runs(job) == 0
    await jobs.wait_node_free(daemon.supervisor.slots[0].node_pk)


# -- the real server's behaviour (UFDL-API.md section 7), through the embedded server's quirks mode


@pytest.fixture
async def quirky(make_server, jobs_factory):
    server = await make_server(real_server_quirks=True)
    return server, await jobs_factory(server)


async def test_refused_web_socket_falls_back_to_polling_for_cancel(quirky, start_daemon, wait_for):
    """The real server refuses the job's web socket: polling still sees a cancel and stops the subprocess."""
    server, jobs = quirky
    job = await jobs.create("subprocess")
    start_daemon(server, cancel_check_interval_s=0.2)
    pids = await jobs.subprocess_pids(job)
    await jobs.admin.cancel(job["pk"])
    done = await jobs.wait(job, lambda j: phase(j) == "CANCELLED")
    # the subprocesses would live 300 s; the bound is slack for a loaded machine
    await wait_for(lambda: not any(_alive(p) for p in pids), timeout_s=20,
                   what="the job's subprocesses to be killed")
    await jobs.wait_node_free(done["node"])


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_a_retried_job_uploads_its_output_once_where_outputs_are_kept(quirky, start_daemon):
    """The real server keeps outputs after a reset: a run that made its output and then asked for a
    retry uploaded nothing (outputs are staged until the handler succeeds), so the second run's
    upload is accepted and the job FINISHES with one result; each run's log is kept."""
    server, jobs = quirky
    job = await jobs.create("upload_then_retry")
    start_daemon(server, max_attempts=3)
    done = await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=40)
    assert jobs.runs(job) == 2
    names = sorted(o["name"] for o in done["outputs"])
    assert names == ["log", "log-2", "result"], done["outputs"]


async def test_lost_finish_reply_then_500_on_the_repeat(quirky, start_daemon, tmp_path):
    """finish lands, its reply is lost, the real server answers the repeat with 500: FINISHED once."""
    server, jobs = quirky
    async with FaultProxy(server.url) as proxy:
        lost = proxy.drop("POST", r"/finish/?$", after_forward=True, times=1)
        job = await jobs.create(seconds=0.2)
        daemon = start_daemon(proxy.url)
        await _finished_once(jobs, job, tmp_path)
        await daemon.stop()
    assert lost.hits == 1


async def test_progress_is_coalesced_and_the_handler_never_waits(proxy, jobs: Jobs, start_daemon, tmp_path):
    """2000 reports, a server taking 0.3 s per progress call: few calls, one at a time, none
    after the finish (the last report is not sent: the finish shows the job done)."""
    slow = proxy.delay("POST", r"/progress/", 0.3)
    job = await jobs.create("flood")
    start_daemon(proxy.url, progress_interval_s=0.05)
    await jobs.wait(job, lambda j: phase(j) == "FINISHED")
    timing = json.loads((await jobs.admin.download_output(job["pk"], "timing", "json",
                                                          tmp_path / "t")).read_text())
    # The handler's own pauses make about 1 s. Had it waited on even a tenth of its 2000
    # reports, at 0.3 s each, it would take a minute; the rest is slack for a loaded machine.
    assert timing["elapsed_s"] < 20, timing
    calls = [s.path for s in proxy.seen if "/progress/" in s.path]
    assert slow.hits == len(calls) >= 2, calls
    # One call in flight at a time, each at least 0.3 s: at most one per 0.3 s while the
    # handler ran, plus one in flight at its end (load slows the calls down, never adds any).
    assert len(calls) <= timing["elapsed_s"] / 0.3 + 2, (calls, timing)
    order = [s.path for s in proxy.seen if "/progress/" in s.path or s.path.rstrip("/").endswith("/finish")]
    assert order[-1].rstrip("/").endswith("/finish") and order.count(order[-1]) == 1, order


async def test_node_pings_during_a_long_job(proxy, jobs: Jobs, start_daemon):
    """While a job runs, the node pings the server every ping_interval_s."""
    job = await jobs.create("gated", seconds=120.0)  # runs until four pings were counted
    start_daemon(proxy.url, ping_interval_s=0.3)
    await jobs.wait(job, lambda j: phase(j) == "STARTED")
    before = proxy.count("GET", r"/v1/nodes/ping/?$")
    await wait_for(lambda: proxy.count("GET", r"/v1/nodes/ping/?$") >= before + 4,
                   what="four pings while the job runs")
    assert phase(await jobs.get(job)) == "STARTED"
    jobs.release_gate(job)
    await jobs.wait(job, lambda j: phase(j) == "FINISHED")


async def test_an_acquire_meeting_an_outage_ends_the_poll_round(proxy, jobs: Jobs, start_daemon):
    """Acquires failing past the client's retries: the round ends at the first job, not one try per
    candidate; the daemon reports the server down, and once it answers every job runs once."""
    made = [await jobs.create() for _ in range(3)]
    refused = proxy.fail(*LIFECYCLE["acquire"], status=503)
    daemon = start_daemon(proxy.url)
    await wait_for(lambda: refused.hits >= 6, what="two rounds of failed acquires")
    tried = {seen.path for seen in proxy.seen if seen.path.endswith("/acquire")}
    assert tried == {f"/v1/jobs/{made[0]['pk']}/acquire"}, tried  # the oldest, again and again
    assert not daemon.supervisor.server_reachable
    proxy.clear()
    for job in made:
        done = await jobs.wait(job, lambda j: phase(j) == "FINISHED")
        assert jobs.runs(done) == 1
