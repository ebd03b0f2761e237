"""Find-work list latency, and a GET of one job sent meanwhile, at 1k and 100k waiting jobs.

The embedded server runs as a separate process on a database filled directly
(fast); every figure is measured over HTTP on loopback:

- the find-work list (the daemon's filter), from request to its last byte;
- GETs of one job sent every 10 ms while that list is in flight, against
  the same GET on the idle server (the baseline): the ratio says how much a
  long list holds up other requests;
- the old way of answering, for reference: per-row Python dicts and one
  ``json.dumps`` (what the server did on its event loop before), timed
  in-process on the same database.

    python bench/bench_findwork.py [--sizes 1000,100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import call, fill, machine, median, server_process, token

from ufdl_node.client import find_work_spec
from ufdl_node.server.filters import compile_spec
from ufdl_node.server.store import JOBS, Store

GET_EVERY_S = 0.01


def legacy_seconds(data_dir: Path, repeats: int) -> float:
    """Median seconds of the old answer: Python dicts per row, then one json.dumps."""
    store = Store(data_dir)
    try:
        query = compile_spec(find_work_spec(), JOBS)
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            json.dumps(store.list_jobs(query)).encode()
            times.append(time.perf_counter() - began)
        return median(times)
    finally:
        store.close()


async def measure(url: str, repeats: int) -> dict[str, float]:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        headers = {"Authorization": f"Bearer {await token(session, url)}"}
        get_url = f"{url}/v1/jobs/1"

        async def get_ms() -> float:
            began = time.perf_counter()
            await call(session, "GET", get_url, headers)
            return (time.perf_counter() - began) * 1000

        idle = [await get_ms() for _ in range(30)]
        lists, sizes, during = [], [], []
        for _ in range(repeats):
            done = asyncio.Event()

            async def find_work(done: asyncio.Event) -> None:
                began = time.perf_counter()
                async with session.post(f"{url}/v1/jobs/list", json=find_work_spec(),
                                        headers=headers) as r:
                    body = await r.read()
                lists.append((time.perf_counter() - began) * 1000)
                sizes.append(len(body))
                done.set()

            task = asyncio.create_task(find_work(done))
            await asyncio.sleep(0)  # let the list request go out first
            while not done.is_set():
                during.append(await get_ms())
                # Paced like a busy fleet's calls, so the probe does not starve the list of CPU.
                await asyncio.sleep(GET_EVERY_S)
            await task
    return {"list_ms": median(lists), "list_max_ms": max(lists), "bytes": median(sizes),
            "idle_get_ms": median(idle), "get_ms": median(during), "get_max_ms": max(during),
            "gets": len(during)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000", help="waiting jobs, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="lists per size (default 5)")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    for size in (int(s) for s in args.sizes.split(",")):
        data_dir = Path(tempfile.mkdtemp(prefix="ufdl-bench-findwork-"))
        try:
            fill(data_dir, ["bench"], {"bench": size})
            legacy = legacy_seconds(data_dir, 1 if size > 10_000 else 3) * 1000
            with server_process(data_dir) as server:
                r = asyncio.run(measure(server.url, args.repeats))
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        print(f"find-work at {size} waiting jobs ({r['bytes'] / 2**20:.1f} MiB reply):")
        print(f"  list over HTTP, to the last byte: median {r['list_ms']:8.1f} ms, "
              f"max {r['list_max_ms']:8.1f} ms  (old per-row encoding alone, in-process: "
              f"{legacy:8.1f} ms; ratio {r['list_ms'] / legacy:.2f})")
        print(f"  GET of one job meanwhile ({r['gets']} sent): median {r['get_ms']:6.2f} ms, "
              f"max {r['get_max_ms']:6.2f} ms; idle baseline median {r['idle_get_ms']:6.2f} ms; "
              f"ratio {r['get_ms'] / r['idle_get_ms']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
