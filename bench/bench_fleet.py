"""A fleet of simulated nodes against one embedded server with a backlog they cannot serve.

One embedded server (a separate process) holds a backlog of waiting jobs of a
template no node serves ("other", 100,000 by default); a trickle of jobs of
the template every node serves ("mine") is created during the run. Simulated
nodes (coroutines, spread over a few processes) make the daemon's idle calls
at its intervals: a find-work list every poll interval (with the daemon's
jitter) and a ping every 60 s; a node that sees a "mine" job acquires it
(another node may have been first: a refusal), starts and finishes it.

Two ways of polling:

- ``full``: the daemon before issue 11: the whole find-work list, every time;
- ``incremental``: the daemon now (``ufdl_node/daemon/poller.py``): the
  find-work filter plus ``compare pk > highest_seen`` and ``template.name =
  mine``, with a full (template-filtered) list every few minutes
  (``full_list_interval_s``, 300 s). highest_seen starts at the highest job pk, which a node finds with
  GETs of single jobs (an exponential then binary search: 404 is "beyond");
  holes from hard-deleted jobs only make it err low, which is safe.

Figures, over a measured window after a warm-up: server CPU seconds per
second (psutil on the server's pid), requests, and pickup latency (creation
to acquire) p50/p99 of the trickle jobs, with any not picked up counted.
Nodes find "mine" jobs in a reply with a regular expression over its bytes
rather than json.loads, so that the fleet's own CPU does not starve the
server on a small machine.

    python bench/bench_fleet.py [--nodes 1000] [--backlog 100000] [--poll-s 10] [--measure-s 60]
                                [--modes full,incremental]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from _common import WORKER, call, fill, machine, median, pct, server_process, token

from ufdl_node.client import find_work_spec
from ufdl_node.server.store import DB_FILE

MINE = "mine"
# The pks of "mine" jobs in a list as the embedded server writes it (compact JSON, pk first):
# a regular expression over the bytes instead of json.loads, so that 30 MB replies do not
# make the fleet's own CPU the bottleneck on a small machine.
MINE_JOB = re.compile(rb'\{"pk":(\d+),"template":\{"pk":\d+,"name":"' + MINE.encode() + rb'"')
PING_S = 60.0
JITTER_S = 1.0


def add_nodes(data_dir: Path, count: int) -> list[int]:
    """`count` staff-provisioned nodes (any worker may act for them), straight into the database."""
    db = sqlite3.connect(data_dir / DB_FILE)
    with db:
        db.executemany("INSERT INTO nodes (ip, idx, cpu_mem, last_seen) VALUES (?, 0, ?, '')",
                       ((f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", 2**30) for i in range(count)))
    pks = [r[0] for r in db.execute("SELECT pk FROM nodes ORDER BY pk")]
    db.close()
    return pks


class Node:
    """One simulated node's idle loop."""

    def __init__(self, session: aiohttp.ClientSession, url: str, auth: dict[str, str], pk: int,
                 mode: str, poll_s: float, full_every_s: float, stats: dict[str, Any]) -> None:
        self.session, self.url, self.pk, self.mode = session, url, pk, mode
        self.headers = {**auth, "Node-Id": str(pk)}
        self.poll_s, self.full_every_s, self.stats = poll_s, full_every_s, stats
        self.highest = 0
        # A fleet in its steady state: each node's full list falls anywhere in the period.
        self.last_full = time.monotonic() - random.uniform(0, full_every_s) if mode == "incremental" else 0.0

    async def exists(self, job: int) -> bool:
        async with self.session.get(f"{self.url}/v1/jobs/{job}", headers=self.headers) as r:
            await r.read()
            self.stats["requests"] += 1
            return r.status == 200

    async def highest_pk(self) -> int:
        low, step = self.highest, 1024
        high = low + step
        while await self.exists(high):
            low, step = high, step * 2
            high = low + step
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if await self.exists(mid) else (low, mid)
        return low

    def spec(self) -> dict[str, Any]:
        spec = find_work_spec()
        if self.mode == "full":
            return spec
        spec["expressions"].append({"type": "exact", "field": "template.name", "value": MINE})
        if time.monotonic() - self.last_full < self.full_every_s:
            spec["expressions"].append({"type": "compare", "field": "pk", "operator": ">",
                                        "value": self.highest})
        return spec

    async def poll(self) -> None:
        if self.mode == "incremental" and (not self.highest or
                                           time.monotonic() - self.last_full >= self.full_every_s):
            self.highest = await self.highest_pk()
        spec = self.spec()
        if self.mode == "incremental" and time.monotonic() - self.last_full >= self.full_every_s:
            self.last_full = time.monotonic()
        async with self.session.post(f"{self.url}/v1/jobs/list", json=spec, headers=self.headers) as r:
            body = await r.read()
        self.stats["requests"] += 1
        self.stats["bytes"] += len(body)
        for pk in sorted(int(m) for m in MINE_JOB.findall(body)):
            self.highest = max(self.highest, pk)
            if await self.take(pk):
                return

    async def take(self, job: int) -> bool:
        async with self.session.get(f"{self.url}/v1/jobs/{job}/acquire", headers=self.headers) as r:
            await r.read()
            self.stats["requests"] += 1
            if r.status != 200:
                return False
        self.stats["pickups"].append([job, time.time()])
        await call(self.session, "POST", f"{self.url}/v1/jobs/{job}/start", self.headers,
                   json={"send_notification": "none"})
        await call(self.session, "POST", f"{self.url}/v1/jobs/{job}/finish", self.headers,
                   json={"success": True, "send_notification": "none"})
        self.stats["requests"] += 2
        return True

    async def run(self, until: float) -> None:
        await asyncio.sleep(random.uniform(0, self.poll_s))
        next_ping = time.monotonic() + random.uniform(0, PING_S)
        while time.monotonic() < until:
            try:
                await self.poll()
                if time.monotonic() >= next_ping:
                    async with self.session.get(f"{self.url}/v1/nodes/ping", headers=self.headers) as r:
                        await r.read()
                    self.stats["requests"] += 1
                    next_ping += PING_S
            except (aiohttp.ClientError, asyncio.TimeoutError, SystemExit):
                self.stats["errors"] += 1
            await asyncio.sleep(max(0.0, self.poll_s + random.uniform(-JITTER_S, JITTER_S)))


async def fleet(url: str, nodes: list[int], mode: str, poll_s: float, full_every_s: float,
                seconds: float) -> dict[str, Any]:
    """In a child process: run `nodes` until `seconds` pass; returns the stats."""
    stats: dict[str, Any] = {"requests": 0, "errors": 0, "bytes": 0, "pickups": []}
    timeout = aiohttp.ClientTimeout(total=max(30.0, 3 * poll_s))
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        auth = {"Authorization": f"Bearer {await token(session, url, WORKER)}"}
        until = time.monotonic() + seconds
        runs = [Node(session, url, auth, pk, mode, poll_s, full_every_s, stats).run(until) for pk in nodes]
        _done, pending = await asyncio.wait([asyncio.create_task(r) for r in runs], timeout=seconds + poll_s)
        for task in pending:
            task.cancel()
    return stats


async def trickle(url: str, template: int, every_s: float, seconds: float) -> list[tuple[int, float]]:
    """Create a "mine" job every `every_s` for `seconds`; returns (pk, creation epoch) of each."""
    created = []
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {await token(session, url)}"}
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            job = await call(session, "POST", f"{url}/v1/job-templates/{template}/create-job", headers,
                             json={"input_values": {}, "parameter_values": {}, "description": "trickle"})
            created.append((int(job["pk"]), datetime.fromisoformat(job["creation_time"]).timestamp()))
            await asyncio.sleep(every_s)
    return created


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="ufdl-bench-fleet-"))
    try:
        templates = fill(data_dir, ["other", MINE], {"other": args.backlog})
        nodes = add_nodes(data_dir, args.nodes)
        # Each simulated node keeps its own connection: above the server's default cap of 1,000
        # open connections (max_connections), the oldest idle one is closed to make room, which
        # would reset the bench's own job-creating connection at 1,000 nodes.
        with server_process(data_dir, max_connections=str(args.nodes + 100)) as server:
            seconds = args.warmup_s + args.measure_s + args.poll_s
            share = -(-len(nodes) // args.processes)
            flags = [f"--poll-s={args.poll_s}", f"--full-every-s={args.full_every_s}"]
            children = [subprocess.Popen(
                [sys.executable, __file__, "--child", server.url, mode, json.dumps(nodes[i:i + share]),
                 str(seconds), *flags], stdout=subprocess.PIPE) for i in range(0, len(nodes), share)]
            time.sleep(args.warmup_s)
            cpu0, began = server.cpu_s(), time.monotonic()
            created = asyncio.run(trickle(server.url, templates[MINE], args.trickle_s, args.measure_s))
            window = time.monotonic() - began
            cpu = server.cpu_s() - cpu0
            stats = [json.loads(child.communicate()[0].decode().strip().splitlines()[-1])
                     for child in children]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    picked = {pk: at for s in stats for pk, at in s["pickups"]}
    latencies = [picked[pk] - at for pk, at in created if pk in picked]
    return {"cpu_per_s": cpu / window, "requests": sum(s["requests"] for s in stats),
            "errors": sum(s["errors"] for s in stats), "mib": sum(s["bytes"] for s in stats) / 2**20,
            "created": len(created), "missed": len(created) - len(latencies),
            "p50": median(latencies),
            "p99": pct(latencies, 99) if len(latencies) == len(created) else float("inf")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=100_000, help="waiting jobs no node serves")
    parser.add_argument("--poll-s", type=float, default=10.0, help="the daemon's poll interval (default 10)")
    parser.add_argument("--full-every-s", type=float, default=300.0,
                        help="incremental mode: a full list this often (default 300)")
    parser.add_argument("--trickle-s", type=float, default=2.0, help='a "mine" job this often (default 2)')
    parser.add_argument("--warmup-s", type=float, default=20.0, help="before the measured window")
    parser.add_argument("--measure-s", type=float, default=60.0, help="the measured window")
    parser.add_argument("--processes", type=int, default=2, help="processes the nodes are spread over")
    parser.add_argument("--modes", default="full,incremental")
    parser.add_argument("--child", nargs=4, metavar=("URL", "MODE", "NODES", "SECONDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        url, mode, nodes, seconds = args.child
        print(json.dumps(asyncio.run(fleet(url, json.loads(nodes), mode, args.poll_s, args.full_every_s,
                                           float(seconds)))))
        return 0
    print(f"machine: {machine()}")
    print(f"{args.nodes} nodes polling every {args.poll_s:g} s (±{JITTER_S:g}), backlog {args.backlog} "
          f"jobs they cannot serve, a job they can every {args.trickle_s:g} s; "
          f"window {args.measure_s:g} s after {args.warmup_s:g} s of warm-up")
    results = {mode: run_mode(args, mode) for mode in args.modes.split(",")}
    for mode, r in results.items():
        print(f"  {mode:11s}: server CPU {r['cpu_per_s']:5.2f} s/s  requests {r['requests']:7d} "
              f"({r['errors']} failed)  {r['mib']:9.1f} MiB read  pickup p50 {r['p50']:6.2f} s "
              f"p99 {r['p99']:6.2f} s  (missed {r['missed']} of {r['created']})")
    if {"full", "incremental"} <= set(results):
        full, incr = results["full"], results["incremental"]
        print(f"  ratio incremental/full server CPU: {incr['cpu_per_s'] / full['cpu_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
