"""Non-idempotent lifecycle calls are settled by reading the job back, never retried blindly."""

from __future__ import annotations

import json

import pytest

from tests.client.conftest import World
from ufdl_node.errors import NotAcceptable
from ufdl_node.protocol import find_work_spec
from ufdl_node.protocol import phase as job_phase


def path(pk: int, action: str) -> str:
    return rf"^/v1/jobs/{pk}/{action}$"


async def test_acquire_with_lost_reply_returns_the_held_job(world: World) -> None:
    """The acquire landed but its reply was lost: the read-back shows the job is ours."""
    job = await world.job()
    fault = world.proxy.drop("GET", path(job["pk"], "acquire"), after_forward=True, times=1)
    held = await world.worker.acquire(job["pk"], world.node_pk)
    assert held["node"] == world.node_pk
    assert fault.hits >= 1


async def test_acquire_trusts_a_fresh_get_over_its_200(world: World) -> None:
    """A 200 from acquire while another node holds the job (the real server's race) is NotAcceptable."""
    job = await world.held(node=await world.new_node())
    fault = world.proxy.fail("GET", path(job["pk"], "acquire"), status=200,
                             body=json.dumps({"pk": job["pk"]}))
    with pytest.raises(NotAcceptable, match="race"):
        await world.worker.acquire(job["pk"], world.node_pk)
    assert fault.hits >= 1


async def test_acquire_with_lost_reply_of_a_job_taken_by_another_is_not_acceptable(world: World) -> None:
    """The acquire failed transiently and the read-back shows another node holds it."""
    job = await world.held(node=await world.new_node())
    fault = world.proxy.fail("GET", path(job["pk"], "acquire"), status=503, times=1)
    with pytest.raises(NotAcceptable):
        await world.worker.acquire(job["pk"], world.node_pk)
    assert fault.hits >= 1


async def test_start_with_lost_reply_is_not_sent_twice(world: World) -> None:
    """start landed, reply dropped: the read-back finds it started, and no second start is sent."""
    job = await world.held()
    fault = world.proxy.drop("POST", path(job["pk"], "start"), after_forward=True, times=1)
    started = await world.worker.start(job["pk"], world.node_pk)
    assert job_phase(started) == "STARTED" and started["node"] == world.node_pk
    assert world.proxy.count("POST", path(job["pk"], "start")) == 1
    assert fault.hits >= 1


async def test_start_that_never_arrived_is_sent_again(world: World) -> None:
    """start dropped before it reached the server: the read-back says CREATED, so it is retried."""
    job = await world.held()
    fault = world.proxy.drop("POST", path(job["pk"], "start"), times=1)
    assert job_phase(await world.worker.start(job["pk"], world.node_pk)) == "STARTED"
    assert world.proxy.count("POST", path(job["pk"], "start")) == 2
    assert fault.hits >= 1


async def test_start_503_after_landing_returns_the_started_job(world: World) -> None:
    """The server started the job but answered 503: the read-back settles it as done."""
    job = await world.held()
    fault = world.proxy.fail("POST", path(job["pk"], "start"), status=503, after_forward=True, times=1)
    assert job_phase(await world.worker.start(job["pk"], world.node_pk)) == "STARTED"
    assert fault.hits >= 1


async def test_finish_with_lost_reply_returns_the_finished_job(world: World) -> None:
    """finish landed, reply dropped: FINISHED on read-back, no second finish."""
    job = await world.started()
    fault = world.proxy.drop("POST", path(job["pk"], "finish"), after_forward=True, times=1)
    assert job_phase(await world.worker.finish(job["pk"], world.node_pk)) == "FINISHED"
    assert world.proxy.count("POST", path(job["pk"], "finish")) == 1
    assert fault.hits >= 1


async def test_finish_with_error_and_lost_reply_returns_the_errored_job(world: World) -> None:
    """finish with an error, reply dropped: ERRORED with our reason on read-back."""
    job = await world.started()
    fault = world.proxy.drop("POST", path(job["pk"], "finish"), after_forward=True, times=1)
    errored = await world.worker.finish(job["pk"], world.node_pk, error="handler failed")
    assert job_phase(errored) == "ERRORED" and errored["error_reason"] == "handler failed"
    assert fault.hits >= 1


async def test_finish_of_a_cancelled_job_with_lost_reply_is_done(world: World) -> None:
    """After a cancel, a finish whose reply was lost is done once the node's current_job is clear."""
    job = await world.started()
    await world.admin.cancel(job["pk"])
    fault = world.proxy.drop("POST", path(job["pk"], "finish"), after_forward=True, times=1)
    await world.worker.finish(job["pk"], world.node_pk)
    assert (await world.admin.get_node(world.node_pk))["current_job"] is None
    assert world.proxy.count("POST", path(job["pk"], "finish")) == 1
    assert fault.hits >= 1


async def test_finish_of_an_unstarted_job_is_not_acceptable_on_the_real_server(
        quirks_world: World) -> None:
    """The real server's 500 on finish of a job never started ends as NotAcceptable, not retries."""
    world = quirks_world
    job = await world.held()
    with pytest.raises(NotAcceptable):
        await world.worker.finish(job["pk"], world.node_pk)
    assert world.proxy.count("POST", path(job["pk"], "finish")) == 1


async def test_finish_of_a_finished_job_on_the_real_server_returns_it(quirks_world: World) -> None:
    """A second finish meets the real server's 500; the read-back shows it ended, so it is done."""
    world = quirks_world
    job = await world.started()
    await world.direct.finish(job["pk"], world.node_pk)
    assert job_phase(await world.worker.finish(job["pk"], world.node_pk)) == "FINISHED"
    assert world.proxy.count("POST", path(job["pk"], "finish")) == 1


async def test_reset_with_lost_reply_returns_the_created_job(world: World) -> None:
    """reset landed, reply dropped: CREATED and still ours on read-back."""
    job = await world.errored()
    fault = world.proxy.drop("DELETE", path(job["pk"], "reset"), after_forward=True, times=1)
    reset = await world.worker.reset(job["pk"], world.node_pk)
    assert job_phase(reset) == "CREATED" and reset["node"] == world.node_pk
    assert world.proxy.count("DELETE", path(job["pk"], "reset")) == 1
    assert fault.hits >= 1


async def test_reset_of_a_started_job_after_a_fault_is_not_acceptable(world: World) -> None:
    """A 503 on reset of a STARTED job settles as NotAcceptable (only ERRORED jobs reset)."""
    job = await world.started()
    fault = world.proxy.fail("DELETE", path(job["pk"], "reset"), status=503, times=1)
    with pytest.raises(NotAcceptable):
        await world.worker.reset(job["pk"], world.node_pk)
    assert fault.hits >= 1


async def test_release_with_lost_reply_is_done(world: World) -> None:
    """release landed, reply dropped: the job is unheld on read-back and release returns it."""
    job = await world.held()
    fault = world.proxy.drop("DELETE", path(job["pk"], "release"), after_forward=True, times=1)
    released = await world.worker.release(job["pk"], world.node_pk)
    assert released["node"] is None
    assert world.proxy.count("DELETE", path(job["pk"], "release")) == 1
    assert fault.hits >= 1


async def test_release_of_a_started_job_on_the_real_server_is_not_acceptable(
        quirks_world: World) -> None:
    """The real server's 500 on release while STARTED ends as NotAcceptable after one read-back."""
    world = quirks_world
    job = await world.started()
    with pytest.raises(NotAcceptable, match="STARTED"):
        await world.worker.release(job["pk"], world.node_pk)
    assert world.proxy.count("DELETE", path(job["pk"], "release")) == 1


async def test_lifecycle_calls_carry_the_node_id(world: World) -> None:
    """acquire, start and finish send Node-Id with the node's pk."""
    job = await world.job()
    await world.worker.acquire(job["pk"], world.node_pk)
    await world.worker.start(job["pk"], world.node_pk)
    await world.worker.finish(job["pk"], world.node_pk)
    sent = [s for s in world.proxy.seen if s.path.startswith(f"/v1/jobs/{job['pk']}/")]
    assert len(sent) == 3 and all(s.headers.get("Node-Id") == str(world.node_pk) for s in sent)


@pytest.mark.parametrize(("amount", "sent"), [(0.5, "0.5000"), (1.7, "1.0000"), (-0.2, "0.0000"),
                                              (1e-5, "0.0000"), (1, "1.0000"), (0.123456, "0.1235")])
async def test_progress_is_clamped_and_formatted(world: World, amount: float, sent: str) -> None:
    """progress sends a fixed-decimal value in [0, 1], the only form the real server routes."""
    job = await world.started()
    await world.worker.progress(job["pk"], world.node_pk, amount)
    assert world.proxy.seen[-1].path == f"/v1/jobs/{job['pk']}/progress/{sent}"


async def test_progress_is_retried_after_a_fault(world: World) -> None:
    """progress is idempotent: a 503 is retried and the amount stored."""
    job = await world.started()
    fault = world.proxy.fail("POST", "/progress/", status=503, times=1)
    await world.worker.progress(job["pk"], world.node_pk, 0.25, {"epoch": 1})
    assert world.proxy.count("POST", "/progress/") == 2
    assert fault.hits >= 1


async def test_find_work_lists_only_free_workable_jobs_oldest_first(world: World) -> None:
    """find_work sends the section-5 filter and returns unheld, unstarted jobs by pk."""
    first, second = await world.job(), await world.job()
    await world.held()
    found = await world.worker.find_work(world.node_pk)
    assert [j["pk"] for j in found] == [first["pk"], second["pk"]]
    assert find_work_spec()["order_by"] == [{"field": "pk", "ascending": True}]


async def test_find_node_matches_ip_and_index_exactly(world: World) -> None:
    """find_node finds the node by ip and index, and None for an unknown pair."""
    found = await world.worker.find_node("10.1.0.1", 0)
    assert found is not None and found["pk"] == world.node_pk
    assert await world.worker.find_node("10.1.0.1", 1) is None
    assert await world.worker.find_node("10.1.0.11", 0) is None


async def test_create_node_with_lost_reply_returns_the_created_node(world: World) -> None:
    """create_node landed but the reply was lost: the node is found by ip and index, not duplicated."""
    fault = world.proxy.drop("POST", "^/v1/nodes/create$", after_forward=True, times=1)
    node = await world.worker.create_node({"ip": "10.9.9.9", "index": 2, "cpu_mem": 2**30, "gpu_mem": None,
                                           "driver_version": None, "hardware_generation": None})
    assert node["ip"] == "10.9.9.9" and node["index"] == 2
    assert world.proxy.count("POST", "^/v1/nodes/create$") == 1
    assert fault.hits >= 1


async def test_update_node_sends_its_own_node_id(world: World) -> None:
    """update_node PATCHes the node acting as that node."""
    updated = await world.worker.update_node(world.node_pk, {"cpu_mem": 2**31})
    assert updated["cpu_mem"] == 2**31
    assert world.proxy.seen[-1].headers["Node-Id"] == str(world.node_pk)
