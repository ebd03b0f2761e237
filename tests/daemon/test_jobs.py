"""The daemon against the embedded server: jobs end exactly once, whatever the handler does."""

from __future__ import annotations

import asyncio
import time

import psutil

from ufdl_node.client import UfdlClient
from ufdl_node.daemon.logoutput import LOG_NAME, LOG_TYPE, log_lines

from .conftest import WORKER_PW, Jobs, phase
from .handlers.testjobs import expected_output


async def node_of(admin: UfdlClient, pk: int) -> dict:
    return await admin.get_node(pk)


async def test_jobs_across_two_daemons_finish_exactly_once(server, admin, jobs: Jobs, start_daemon, tmp_path):
    """Twelve jobs, two daemons of two slots: each job runs once; its output arrives byte-identical."""
    created = [await jobs.create(seconds=0.2, size=1000 + 997 * i) for i in range(12)]
    start_daemon(server, "a", gpu_indices=[0, 1])
    start_daemon(server, "b", gpu_indices=[0, 1])
    for job in created:
        done = await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=60)
        assert jobs.runs(job) == 1, f"job {job['pk']} ran {jobs.runs(job)} times"
        names = sorted(o["name"] for o in done["outputs"])
        assert names == ["log", "result"], done["outputs"]
        dest = await admin.download_output(job["pk"], "result", "bin", tmp_path / f"{job['pk']}.bin")
        assert dest.read_bytes() == expected_output(job["pk"], 1000 + 997 * created.index(job))
    nodes = {(await jobs.get(j))["node"] for j in created}
    assert len(nodes) >= 2, f"all jobs ran on one node: {nodes}"


async def test_job_log_holds_what_the_handler_printed(server, admin, jobs: Jobs, start_daemon, tmp_path):
    """The job log is uploaded as output `log` with the handler's log lines."""
    job = await jobs.create()
    start_daemon(server)
    await jobs.wait(job, lambda j: phase(j) == "FINISHED")
    log = "\n".join(log_lines((await admin.download_output(job["pk"], LOG_NAME, LOG_TYPE,
                                                             tmp_path / "log")).read_bytes()))
    assert "test job running" in log and "ok" in log, log


async def test_unknown_template_is_not_acquired(server, admin, jobs: Jobs, start_daemon, wait_for):
    """A job whose template has no handler is left alone for other nodes."""
    await admin.import_template({"name": "nobody_serves_this", "version": 1, "description": "x",
                                 "scope": "public", "licence": "Apache 2.0",
                                 "specific": {"job_type": "Export", "executor_class": "x.Y",
                                              "required_packages": "", "parameters": {}}})
    found = await admin.list_templates({"expressions": [{"type": "exact", "field": "name",
                                                         "value": "nobody_serves_this"}]})
    orphan = await admin.create_job(found[0]["pk"], {}, {}, description="orphan")
    job = await jobs.create()
    daemon = start_daemon(server)
    await jobs.wait(job, lambda j: phase(j) == "FINISHED")
    polls = daemon.sample("ufdl_node_poll_latency_seconds_count")
    await wait_for(lambda: daemon.sample("ufdl_node_poll_latency_seconds_count") >= polls + 2,
                   what="two more find-work polls")
    assert (await jobs.get(orphan))["node"] is None


async def test_handler_failure_errors_the_job_with_its_reason(server, admin, jobs: Jobs, start_daemon):
    """JobFailed makes the job ERRORED with the handler's reason and frees the node."""
    job = await jobs.create("fail")
    daemon = start_daemon(server)
    done = await jobs.wait(job, lambda j: phase(j) == "ERRORED")
    assert done["error_reason"] == "the test asked this job to fail"
    node = await node_of(admin, done["node"])
    assert node["current_job"] is None
    assert daemon.supervisor.slots[0].last_error == "the test asked this job to fail"


async def test_handler_crash_gives_a_one_line_reason_and_a_traceback(server, admin, jobs: Jobs, start_daemon,
                                                                     tmp_path):
    """A handler raising any exception: ERRORED with a one-line reason; the traceback is in the log."""
    job = await jobs.create("crash")
    daemon = start_daemon(server)
    done = await jobs.wait(job, lambda j: phase(j) == "ERRORED")
    assert "ZeroDivisionError" in done["error_reason"] and "\n" not in done["error_reason"]
    log = "\n".join(log_lines((await admin.download_output(job["pk"], LOG_NAME, LOG_TYPE,
                                                             tmp_path / "log")).read_bytes()))
    assert "Traceback" in log
    next_job = await jobs.create()
    await jobs.wait(next_job, lambda j: phase(j) == "FINISHED")
    assert not daemon.task.done()


async def test_hanging_handler_is_stopped_by_the_job_timeout(server, jobs: Jobs, start_daemon):
    """A handler that never returns is cancelled after job_timeout_s and the job ERRORED."""
    job = await jobs.create("hang", seconds=0.4)
    start_daemon(server, job_timeout_s=1.0)
    done = await jobs.wait(job, lambda j: phase(j) == "ERRORED")
    assert "timed out" in done["error_reason"]


async def test_handler_ignoring_cancellation_does_not_wedge_the_job(server, jobs: Jobs, start_daemon,
                                                                   monkeypatch):
    """A handler that swallows cancellation is abandoned; the job still ends ERRORED, saying so."""
    monkeypatch.setattr("ufdl_node.api.process.RUN_STOP_SLACK_S", 1.0)  # the wait for ctx.run's own cleanup
    job = await jobs.create("stubborn", seconds=60)
    start_daemon(server, job_timeout_s=0.5, cancel_grace_s=0.2)
    done = await jobs.wait(job, lambda j: phase(j) == "ERRORED", timeout_s=20)
    assert done["error_reason"] == "job timed out after 0.5 s; the handler did not stop"
    jobs.release_gate(job)  # the abandoned handler ends, not the test's teardown waiting for it


async def test_retry_hands_the_job_back_then_gives_up(server, jobs: Jobs, start_daemon):
    """RetryJob hands the job back to run again, up to max_attempts, then leaves it ERRORED."""
    job = await jobs.create("retry")
    start_daemon(server, max_attempts=2)
    done = await jobs.wait(job, lambda j: phase(j) == "ERRORED" and "gave up" in (j["error_reason"] or ""))
    assert jobs.runs(job) == 2
    assert done["error_reason"].startswith("a transient fault the test made up")


async def test_cancel_stops_a_subprocess_within_the_grace_period(server, admin, jobs: Jobs, start_daemon,
                                                                 wait_for):
    """Cancelling a job kills the handler's subprocess group within cancel_grace_s; finish frees the node."""
    job = await jobs.create("subprocess")
    start_daemon(server, cancel_grace_s=2.0)
    pids = await jobs.subprocess_pids(job)
    assert all(psutil.pid_exists(p) for p in pids)
    await admin.cancel(job["pk"])
    # The subprocesses would live 300 s: cancel_grace_s (2 s) plus slack for a loaded machine.
    await wait_for(lambda: not any(_alive(p) for p in pids), timeout_s=2.0 + 10,
                   what="the job's subprocesses to be killed")
    done = await jobs.wait(job, lambda j: phase(j) == "CANCELLED")
    await jobs.wait_node_free(done["node"])


def _alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_drain_lets_a_running_job_finish(server, jobs: Jobs, start_daemon, wait_for):
    """On stop, a job shorter than grace_period_s finishes and the daemon exits 0."""
    job = await jobs.create("gated", seconds=120.0)  # ends once the stop has begun
    daemon = start_daemon(server, grace_period_s=10)
    await jobs.wait(job, lambda j: phase(j) == "STARTED")
    stopping = asyncio.create_task(daemon.stop())
    await wait_for(daemon.supervisor.should_exit.is_set, what="the daemon to begin its stop")
    jobs.release_gate(job)
    assert await stopping == 0
    assert phase(await jobs.get(job)) == "FINISHED"


async def test_drain_hands_back_a_job_longer_than_the_grace_period(server, admin, jobs: Jobs, start_daemon):
    """On stop, a job still running after grace_period_s is handed back: CREATED, unheld, no error."""
    job = await jobs.create("gated", seconds=120.0)  # never let end: the grace period runs out
    daemon = start_daemon(server, grace_period_s=0.5)
    started = await jobs.wait(job, lambda j: phase(j) == "STARTED")
    assert await daemon.stop() == 0
    back = await jobs.get(job)
    assert (phase(back), back["node"], back["error_reason"]) == ("CREATED", None, None), back
    assert (await node_of(admin, started["node"]))["current_job"] is None


async def test_recovery_hands_back_a_job_left_by_a_dead_process(server, admin, jobs: Jobs, start_daemon):
    """A node found with current_job set: the job is errored, reset, released, then runs again to the end."""
    job = await jobs.create()
    ip = "127.0.0.97"
    async with UfdlClient(server.url, "worker", WORKER_PW) as worker:
        node = await worker.create_node({"ip": ip, "index": 0, "cpu_mem": 2**30})
        await worker.acquire(job["pk"], node["pk"])
        await worker.start(job["pk"], node["pk"])
        held = await jobs.create()
        await worker.acquire(held["pk"], node["pk"])
    start_daemon(server, node_ip=ip)
    for j in (job, held):
        done = await jobs.wait(j, lambda x: phase(x) == "FINISHED")
        assert done["node"] == node["pk"]
    assert jobs.runs(job) == 1


async def test_server_down_at_start_then_up(make_server, jobs_factory, start_daemon, tmp_path, wait_for):
    """The daemon waits out a server that is down at start, then registers and runs work."""
    from .conftest import free_port

    port = free_port()
    daemon = start_daemon(f"http://127.0.0.1:{port}")
    # two rounds of login attempts went unanswered, and the daemon waits on
    attempts = daemon.supervisor.settings.retry_max_attempts
    await wait_for(lambda: daemon.sample("ufdl_node_api_calls_total", action="obtain", status="error")
                   >= 2 * attempts, what="two failed rounds of login attempts")
    assert not daemon.task.done()
    server = await make_server(port=port)
    jobs = await jobs_factory(server)
    job = await jobs.create()
    await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=30)


async def test_server_down_mid_job_then_back(make_server, jobs_factory, start_daemon, tmp_path, wait_for):
    """The server stops mid-job and comes back on the same data: the job still finishes, once."""
    from .conftest import free_port

    port = free_port()
    data = tmp_path / "data"
    server = await make_server(port=port, data_dir=data)
    jobs = await jobs_factory(server)
    job = await jobs.create("gated", seconds=120.0)  # ends once the server is down
    daemon = start_daemon(server)
    await jobs.wait(job, lambda j: phase(j) == "STARTED")
    await server.stop()
    jobs.release_gate(job)
    # the handler ends while the server is down: its upload of `result` finds no server
    await wait_for(lambda: daemon.sample("ufdl_node_api_calls_total", action="upload_output",
                                         status="error") >= 1,
                   what="the handler's upload to meet the outage")
    server = await make_server(port=port, data_dir=data)
    jobs.admin = await jobs_factory.admin_for(server)
    done = await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=40)
    assert jobs.runs(job) == 1 and [o["name"] for o in done["outputs"]].count("result") == 1


async def test_token_expiry_mid_job(make_server, jobs_factory, start_daemon):
    """Access tokens that expire mid-job (1 s) and refresh tokens too (2 s): the job still finishes."""
    server = await make_server(access_lifetime_s=1, refresh_lifetime_s=2)
    jobs = await jobs_factory(server)
    job = await jobs.create(seconds=4.0)
    start_daemon(server)
    done = await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=40)
    assert jobs.runs(job) == 1 and done["error_reason"] is None


async def test_full_disk_errors_the_job_and_the_node_goes_on(server, jobs: Jobs, start_daemon):
    """A handler meeting a full disk: handed back as the node's (up to max_attempts, then ERRORED
    saying so), and the next job still runs. (Was ERRORED at once: see tests/daemon/test_health.py.)"""
    job = await jobs.create("disk_full")
    start_daemon(server)
    # The last attempt's end: each hand-back passes through ERRORED too (finish, reset, release).
    done = await jobs.wait(job, lambda j: phase(j) == "ERRORED" and "gave up" in (j["error_reason"] or ""))
    assert "No space left on device" in done["error_reason"], done["error_reason"]
    assert done["error_reason"].startswith("the node's disk is full") and jobs.runs(job) == 3
    after = await jobs.create()
    await jobs.wait(after, lambda j: phase(j) == "FINISHED")


async def test_idle_nodes_ping_the_server(server, admin, start_daemon, wait_for):
    """Idle nodes ping every ping_interval_s, so the server's last_seen shows them alive."""
    daemon = start_daemon(server, gpu_indices=[0, 1], ping_interval_s=0.3)
    await daemon.wait_ready()
    first = {s.node_pk: (await admin.get_node(s.node_pk))["last_seen"] for s in daemon.supervisor.slots}

    async def all_seen_again() -> bool:
        now = {pk: (await admin.get_node(pk))["last_seen"] for pk in first}
        return all(now[pk] > seen for pk, seen in first.items())

    await wait_for(all_seen_again, what="every idle node's last_seen to move on")


async def test_polling_resumes_soon_after_an_outage(make_server, jobs_factory, start_daemon, tmp_path,
                                                    wait_for):
    """After the server was down for a while, work is picked up within poll_backoff_max_s of its return."""
    from .conftest import free_port

    port, data = free_port(), tmp_path / "data"
    server = await make_server(port=port, data_dir=data)
    jobs = await jobs_factory(server)
    daemon = start_daemon(server, poll_interval_s=0.2, poll_backoff_max_s=1.0)
    await daemon.wait_ready()
    await server.stop()
    # Five failed polls: uncapped, the backoff (1, 2, 4, 8 s ...) would now wait 16 s.
    await wait_for(lambda: daemon.failed_polls() >= 5, what="five failed polls")
    assert not daemon.supervisor.server_reachable
    server = await make_server(port=port, data_dir=data)
    jobs.admin = await jobs_factory.admin_for(server)
    back = time.monotonic()
    job = await jobs.create()
    await jobs.wait(job, lambda j: j["start_time"] is not None, timeout_s=20)
    # The cap (1 s) plus slack for a loaded machine (two test runs at once): still below the
    # uncapped 16 s.
    assert time.monotonic() - back < 1.0 + 9.0


async def test_healthz_turns_503_while_the_server_is_down(make_server, start_daemon, tmp_path, wait_for):
    """/healthz answers 200 while the server is reachable, 503 with the reason while it is not."""
    import aiohttp

    from .conftest import free_port

    port, data, status_port = free_port(), tmp_path / "data", free_port()
    server = await make_server(port=port, data_dir=data)
    daemon = start_daemon(server, status_listen=f"127.0.0.1:{status_port}", poll_backoff_max_s=0.3)
    await daemon.wait_ready()
    url = f"http://127.0.0.1:{status_port}/healthz"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as reply:
            assert reply.status == 200
        async def healthz_body(status: int) -> dict | None:
            async with http.get(url) as reply:
                return await reply.json() if reply.status == status else None

        await server.stop()
        body = await wait_for(lambda: healthz_body(503), what="healthz to answer 503 in the outage")
        assert "server unreachable" in body["reason"], body
        await make_server(port=port, data_dir=data)
        await wait_for(lambda: healthz_body(200), what="healthz to answer 200 again")


async def test_abort_mid_job_frees_the_node_and_the_job_runs_again(server, admin, jobs: Jobs, start_daemon,
                                                                 wait_for):
    """An admin abort stops the handler; finish frees the node; the job, back in the pool, runs again."""
    job = await jobs.create("gated", seconds=120.0)  # still running when the abort lands
    start_daemon(server)
    started = await jobs.wait(job, lambda j: phase(j) == "STARTED")
    await admin.abort(job["pk"])
    await wait_for(lambda: jobs.runs(job) == 2, timeout_s=40, what="the aborted job to run again")
    jobs.release_gate(job)
    done = await jobs.wait(job, lambda j: phase(j) == "FINISHED", timeout_s=40)
    assert jobs.runs(job) == 2 and done["node"] == started["node"]
    assert [o["name"] for o in done["outputs"]].count("result") == 1
    assert (await node_of(admin, started["node"]))["current_job"] is None
