"""The happy path of every worker call against the embedded server."""

from __future__ import annotations

from tests.client.conftest import World
from ufdl_node.protocol import phase as job_phase


async def test_worker_drives_a_job_through_its_lifecycle(world: World) -> None:
    """acquire, start, progress, upload, finish all succeed against the embedded server."""
    w, node = world.worker, world.node_pk
    job = await world.job()
    assert [j["pk"] for j in await w.find_work(node)] == [job["pk"]]
    assert job_phase(await w.acquire(job["pk"], node)) == "CREATED"
    assert job_phase(await w.start(job["pk"], node)) == "STARTED"
    await w.progress(job["pk"], node, 0.5, {"step": 1})
    out = await w.upload_output(job["pk"], node, "model", "Compressed<JSON>", b"{}")
    assert out["name"] == "model"
    assert job_phase(await w.finish(job["pk"], node)) == "FINISHED"
