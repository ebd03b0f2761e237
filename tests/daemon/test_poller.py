"""The poller's calls: one list serves many acquisitions, idle polls ask only for new jobs,
and a periodic full list sees jobs handed back below the highest pk seen."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import wait_for
from ufdl_node.client import UfdlClient
from ufdl_node.daemon.poller import TEMPLATE_FILTER_MAX, template_filter
from ufdl_node.registry import Registry

from ..faults import FaultProxy
from .conftest import WORKER_PW, Daemon, Jobs, import_template, node_settings, phase

FIND_WORK_MARK = "template.workabletemplate"  # only the find-work filter names this field


class RecordingProxy(FaultProxy):
    """A fault proxy that also keeps the filter of every find-work list it forwards."""

    def __init__(self, upstream_url: str) -> None:
        super().__init__(upstream_url)
        self.find_work: list[dict[str, Any]] = []
        self.events: list[str] = []  # "list" (find-work) and "acquire", in the order they came

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path.rstrip("/") == "/v1/jobs/list":
            body = await request.read()  # aiohttp keeps it: the proxy reads it again
            if FIND_WORK_MARK.encode() in body:
                self.find_work.append(json.loads(body))
                self.events.append("list")
        elif request.path.rstrip("/").endswith("/acquire"):
            self.events.append("acquire")
        return await super()._handle(request)

    def lists_before_last_acquire(self) -> int:
        last = len(self.events) - 1 - self.events[::-1].index("acquire")
        return self.events[:last].count("list")


def above(spec: dict[str, Any]) -> int | None:
    """The pk an incremental list asks above, None for a full list."""
    for expression in spec["expressions"]:
        if expression.get("type") == "compare" and expression.get("field") == "pk":
            assert expression["operator"] == ">"
            return int(expression["value"])
    return None


@pytest.fixture
async def proxy(server) -> AsyncIterator[RecordingProxy]:
    async with RecordingProxy(server.url) as p:
        yield p


async def test_one_list_serves_a_backlog(proxy: RecordingProxy, jobs: Jobs, start_daemon):
    """Six waiting jobs, one slot: all six acquired from one find-work list."""
    created = [await jobs.create() for _ in range(6)]
    daemon = start_daemon(proxy.url, poll_interval_s=60.0, full_list_interval_s=600.0)
    for job in created:
        await jobs.wait(job, lambda j: phase(j) == "FINISHED")
    assert proxy.events.count("acquire") == 6 and proxy.lists_before_last_acquire() == 1
    assert daemon.supervisor.poller is not None and daemon.supervisor.poller.lists["full"] == 1


async def test_lists_ask_only_for_the_templates_of_the_handlers(proxy: RecordingProxy, jobs: Jobs,
                                                                start_daemon, registry):
    """Every find-work list names the templates this node's handlers serve (an `or` of names)."""
    daemon = start_daemon(proxy.url)
    await daemon.wait_ready()
    names = {e["value"] for e in proxy.find_work[0]["expressions"][-1]["sub_expressions"]}
    assert names == set(registry.templates()) and len(names) > 1


async def test_idle_polls_ask_only_above_the_highest_pk(proxy: RecordingProxy, jobs: Jobs, start_daemon):
    """After the first full list, idle polls use `compare pk >` the highest pk, and still see a new job."""
    first = await jobs.create()
    start_daemon(proxy.url, full_list_interval_s=600.0)
    await jobs.wait(first, lambda j: phase(j) == "FINISHED")
    await wait_for(lambda: len(proxy.find_work) >= 3, what="a few idle polls")
    assert above(proxy.find_work[0]) is None
    assert all((above(spec) or 0) >= first["pk"] for spec in proxy.find_work[1:])
    second = await jobs.create()
    await jobs.wait(second, lambda j: phase(j) == "FINISHED")
    assert all(above(spec) is not None for spec in proxy.find_work[1:])


async def test_a_job_handed_back_below_the_highest_pk_is_seen_by_the_full_list(
        proxy: RecordingProxy, server, jobs: Jobs, start_daemon):
    """A job another node releases after the daemon saw higher pks is run after the periodic full list."""
    low = await jobs.create()
    async with UfdlClient(server.url, "worker", WORKER_PW) as other:
        node = await other.create_node({"ip": "127.0.0.88", "index": 0, "cpu_mem": 2**30})
        await other.acquire(low["pk"], node["pk"])
        high = await jobs.create()
        daemon = start_daemon(proxy.url, full_list_interval_s=1.5)
        await jobs.wait(high, lambda j: phase(j) == "FINISHED")
        await wait_for(lambda: any(above(spec) is not None for spec in proxy.find_work),
                       what="an incremental poll")
        await other.release(low["pk"], node["pk"])
    done = await jobs.wait(low, lambda j: phase(j) == "FINISHED")
    assert done["node"] == daemon.supervisor.slots[0].node_pk
    assert daemon.supervisor.poller is not None and daemon.supervisor.poller.lists["full"] >= 2


def test_a_single_template_name_is_one_exact_filter() -> None:
    """One template name: a plain `exact` (the server wants at least two terms in an `or`)."""
    assert template_filter(["a", "a"]) == [{"type": "exact", "field": "template.name", "value": "a"}]


def test_too_many_template_names_drop_the_name_filter() -> None:
    """Above TEMPLATE_FILTER_MAX names the lists are not filtered by name (the server's term limits)."""
    names = [f"t{i}" for i in range(TEMPLATE_FILTER_MAX + 1)]
    assert template_filter(names[:-1])[0]["type"] == "or"
    assert template_filter(names) == []


PROGRESS_HANDLER = '''
from ufdl_node.api import TemplateDescription, handler

@handler("short_job", description=TemplateDescription(job_type="Export", description="reports, returns"))
async def run(ctx):
    ctx.progress(0.5)
    ctx.progress(1.0)
'''
SINGLE_JOB = re.compile(r"^/v1/jobs/\d+/?$")


async def test_a_backlog_of_short_jobs_costs_three_calls_a_job_at_a_short_poll_interval(
        server, admin, tmp_path: Path) -> None:
    """30 jobs that report progress and return, poll_interval_s 0.05: until the last acquire,
    one full list, no search for the highest pk, and per job only acquire, start and finish."""
    handlers = tmp_path / "short-handlers"
    handlers.mkdir()
    (handlers / "short.py").write_text(PROGRESS_HANDLER)
    registry = Registry.load([handlers], entry_points=False)
    template = await import_template(admin, registry, "short_job")
    created = [await admin.create_job(template, {}, {}, description="short") for _ in range(30)]
    async with RecordingProxy(server.url) as proxy:
        settings = node_settings(server, tmp_path, "s", server_url=proxy.url, handler_dirs=[handlers],
                                 poll_interval_s=0.05, poll_jitter_s=0.0, full_list_interval_s=600.0)
        daemon = Daemon(settings, registry)
        try:
            for job in created:
                await wait_for(lambda pk=job["pk"]: _finished(admin, pk), what=f"job {job['pk']} to finish")
        finally:
            await daemon.stop()
    job_calls = [s.path.rstrip("/").rsplit("/", 1)[-1] for s in proxy.seen
                 if re.search(r"^/v1/jobs/\d+/", s.path)]
    counts = {kind: job_calls.count(kind) for kind in set(job_calls)}
    assert counts == {"acquire": 30, "start": 30, "finish": 30}, counts  # no progress, no output
    last_acquire = max(i for i, s in enumerate(proxy.seen) if s.path.rstrip("/").endswith("/acquire"))
    during = proxy.seen[:last_acquire]
    assert not [s.path for s in during if SINGLE_JOB.match(s.path)], "no search for the highest pk"
    lists = proxy.lists_before_last_acquire()
    assert lists >= 1 and [above(spec) is None for spec in proxy.find_work[:lists]].count(True) == 1, \
        "one full list while the backlog is worked through"


async def _finished(admin, pk: int) -> bool:
    return phase(await admin.get_job(pk)) == "FINISHED"
