"""A slot acquires its next job while the one before finishes, and starts it once the finish landed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import wait_for

from ..faults import FaultProxy
from .conftest import Jobs, phase

FINISH = r"/v1/jobs/\d+/finish/?$"
# The first job's finish is held until the test has looked (it was a 2 s delay, which a loaded
# machine outlasted), and the next job is acquired during a finish only from a list still fresh
# (younger than poll_interval_s): a long poll interval keeps the first list fresh however slowly
# the first job runs, and the request timeout outlasts the hold.
HOLD_S = 30.0
HELD = {"poll_interval_s": 60.0, "request_timeout_s": 40.0}


@pytest.fixture
async def proxy(server) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(server.url) as p:
        yield p


async def test_the_next_job_is_acquired_while_the_last_one_finishes(proxy, jobs: Jobs, start_daemon):
    """With a finish held up, the next job's acquire reaches the server first; both then finish once."""
    first, second = await jobs.create(), await jobs.create()
    held_up = proxy.delay("POST", FINISH, HOLD_S, times=1)
    start_daemon(proxy.url, **HELD)
    await wait_for(lambda: proxy.count("GET", rf"/v1/jobs/{second['pk']}/acquire") >= 1,
                   what="the second job's acquire")
    assert held_up.hits == 1 and (await jobs.get(first))["end_time"] is None  # still finishing
    assert proxy.count("POST", rf"/v1/jobs/{second['pk']}/start") == 0
    held_up.release()
    for job in (first, second):
        done = await jobs.wait(job, lambda j: phase(j) == "FINISHED")
        assert jobs.runs(done) == 1


async def test_a_job_acquired_as_the_daemon_stops_goes_back_to_the_pool(proxy, jobs: Jobs, start_daemon):
    """A stop while the next job was acquired during a finish: the finish lands, the next job is released."""
    first, second = await jobs.create(), await jobs.create()
    held_up = proxy.delay("POST", FINISH, HOLD_S, times=1)
    daemon = start_daemon(proxy.url, **HELD)
    await wait_for(lambda: proxy.count("GET", rf"/v1/jobs/{second['pk']}/acquire") >= 1,
                   what="the second job's acquire")
    daemon.supervisor.handle_exit()  # the stop, while the finish is still held
    held_up.release()
    assert await asyncio.wait_for(daemon.task, 30) == 0
    assert phase(await jobs.get(first)) == "FINISHED"
    left = await jobs.get(second)
    assert phase(left) == "CREATED" and left["node"] is None and jobs.runs(second) == 0
