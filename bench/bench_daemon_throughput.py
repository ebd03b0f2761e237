"""How much the daemon costs per job, against the protocol's own floor.

An embedded server runs in-process on loopback. Two ways through N no-op jobs:

1. baseline: a bare loop over the client that does only the protocol's calls
   for each job (acquire, start, finish) — the least any worker must do;
2. daemon: the real ``Supervisor`` with one slot and a no-op handler, which
   also verifies after acquire, reads the template, watches for cancellation,
   pumps progress, pings, uploads the job log, and polls for work.

It prints jobs per second for both and the ratio, which stays meaningful on a
noisy machine because both run in the same process, one after the other.

    python bench/bench_daemon_throughput.py [--jobs 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from _common import NOOP_HANDLER

from ufdl_node.api import TemplateDescription, handler
from ufdl_node.client import UfdlClient
from ufdl_node.daemon.supervisor import Supervisor
from ufdl_node.logs import configure_logging
from ufdl_node.registry import Registry
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import NodeSettings, ServerSettings


async def create_jobs(admin: UfdlClient, template_pk: int, count: int) -> list[int]:
    return [int((await admin.create_job(template_pk, {}, {}))["pk"]) for _ in range(count)]


async def baseline(url: str, admin: UfdlClient, template_pk: int, count: int) -> float:
    """Seconds for a bare client loop to acquire, start and finish `count` jobs."""
    pks = await create_jobs(admin, template_pk, count)
    async with UfdlClient(url, "worker", "bench-worker") as worker:
        node = await worker.create_node({"ip": "127.0.0.200", "index": 0, "cpu_mem": 2**30})
        began = time.perf_counter()
        for pk in pks:
            await worker.acquire(pk, node["pk"])
            await worker.start(pk, node["pk"])
            await worker.finish(pk, node["pk"])
        return time.perf_counter() - began


async def daemon(url: str, admin: UfdlClient, template_pk: int, count: int, scratch: Path,
                 registry: Registry) -> float:
    """Seconds for the daemon (one slot) to run `count` no-op jobs to FINISHED."""
    pks = await create_jobs(admin, template_pk, count)
    settings = NodeSettings(server_url=url, username="worker", password="bench-worker",
                            node_ip="127.0.0.201", gpu_indices=[0], state_dir=scratch / "state",
                            cache_dir=scratch / "cache", handler_dirs=[scratch / "handlers"],
                            poll_interval_s=0.05, poll_jitter_s=0, progress_interval_s=0.05,
                            exit_when_idle=True, log_level="error")
    began = time.perf_counter()
    code = await Supervisor(settings, registry=registry).run()
    elapsed = time.perf_counter() - began
    for pk in pks:
        job = await admin.get_job(pk)
        if job["end_time"] is None or job["error_reason"] is not None:
            raise SystemExit(f"job {pk} did not finish: {job}")
    if code != 0:
        raise SystemExit(f"daemon exited with {code}")
    return elapsed


async def main(count: int) -> int:
    configure_logging("error", "console")
    with tempfile.TemporaryDirectory(prefix="ufdl-bench-") as tmp:
        scratch = Path(tmp)
        (scratch / "handlers").mkdir()
        (scratch / "handlers" / "bench_noop.py").write_text(NOOP_HANDLER)
        registry = Registry.load([scratch / "handlers"], entry_points=False)
        spec = registry.for_template("bench_noop", 1)
        assert spec is not None and spec.description is not None
        settings = ServerSettings(data_dir=scratch / "server", port=0, admin="admin:bench-admin",
                                  worker="worker:bench-worker", log_level="error")
        async with EmbeddedServer(settings) as server, \
                UfdlClient(server.url, "admin", "bench-admin") as admin:
            await admin.import_template(spec.description.import_spec("bench_noop"))
            template_pk = int((await admin.list_templates())[0]["pk"])
            base_s = await baseline(server.url, admin, template_pk, count)
            daemon_s = await daemon(server.url, admin, template_pk, count, scratch, registry)
    print(f"jobs: {count}")
    print(f"baseline (bare acquire/start/finish loop): {count / base_s:7.1f} jobs/s  ({base_s:.2f} s)")
    print(f"daemon   (one slot, no-op handler):        {count / daemon_s:7.1f} jobs/s  ({daemon_s:.2f} s)")
    print(f"ratio daemon/baseline time per job: {daemon_s / base_s:.2f}x")
    return 0


_ = (handler, TemplateDescription)  # the handler text above imports these names

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    sys.exit(asyncio.run(main(parser.parse_args().jobs)))
