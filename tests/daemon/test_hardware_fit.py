"""Jobs go only to slots whose hardware meets the handler's needs; a job's subprocesses see its slot's GPU."""

from __future__ import annotations

import asyncio

from ufdl_node.daemon.supervisor import Supervisor
from ufdl_node.hardware import GpuInfo, HardwareInfo

from .conftest import Jobs, import_template, node_settings, phase

FAKE_GPUS = HardwareInfo(cpu_mem_bytes=64 * 2**30, driver_version="550.54", gpus=[
    GpuInfo(index=0, name="Small GPU", mem_bytes=8 * 2**30, compute_capability=7.5, uuid="GPU-small-0"),
    GpuInfo(index=1, name="Big GPU", mem_bytes=80 * 2**30, compute_capability=9.0, uuid="GPU-big-1"),
])


async def test_gpu_job_runs_on_the_slot_that_fits_and_sees_only_its_gpu(server, admin, jobs: Jobs, registry,
                                                                        tmp_path):
    """A job needing 20 GiB and compute 8.0 runs on GPU 1 only, with CUDA_VISIBLE_DEVICES set to its UUID."""
    gpu_template = await import_template(admin, registry, "gpu_job")
    settings = node_settings(server, tmp_path, gpu_indices=[0, 1])
    supervisor = Supervisor(settings, registry=registry, hardware=FAKE_GPUS)
    task = asyncio.create_task(supervisor.run())
    try:
        job = await admin.create_job(gpu_template, {}, {})
        done = await jobs.wait(job, lambda j: phase(j) == "FINISHED")
        big = next(s for s in supervisor.slots if s.index == 1)
        assert done["node"] == big.node_pk
        seen = await admin.download_output(job["pk"], "seen", "text", tmp_path / "seen")
        assert seen.read_text() == "GPU-big-1 PCI_BUS_ID"
        node = await admin.get_node(big.node_pk)
        assert node["gpu_mem"] == 80 * 2**30 and node["driver_version"] == "550.54"
        hopper = next(r for r in await admin.hardware_generations() if r["generation"] == "Hopper")
        assert node["hardware_generation"] == hopper["pk"]
    finally:
        supervisor.handle_exit()
        assert await asyncio.wait_for(task, 30) == 0


async def test_gpu_job_is_not_acquired_by_a_cpu_only_node(server, admin, jobs: Jobs, registry, start_daemon,
                                                          wait_for):
    """A CPU-only node leaves a GPU job in the pool and still runs the jobs it can."""
    gpu_template = await import_template(admin, registry, "gpu_job")
    gpu = await admin.create_job(gpu_template, {}, {})
    cpu = await jobs.create()
    daemon = start_daemon(server)
    await jobs.wait(cpu, lambda j: phase(j) == "FINISHED")
    polls = daemon.sample("ufdl_node_poll_latency_seconds_count")
    await wait_for(lambda: daemon.sample("ufdl_node_poll_latency_seconds_count") >= polls + 2,
                   what="two more find-work polls")
    assert (await jobs.get(gpu))["node"] is None
