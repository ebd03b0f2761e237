"""What a short job costs through the daemon as the backlog grows; what an idle daemon costs.

The embedded server and the daemon (``python -m ufdl_node run``, one slot, a
no-op handler; with --progress one that reports progress 1.0 once) run as
separate processes.

1. Per-job time at backlogs of 50, 200 and 800 waiting jobs, against the bare
   client of the same run (lists once, then only acquire, start and finish, and
   with --progress one progress call before the finish, as the daemon then
   makes; aiohttp in this process). Both are timed by the server's own clocks: from
   the first job's start_time to the last one's end_time, over the jobs
   between, so neither side's start-up is counted. Runs alternate; medians.
   The ratio must stay flat as the backlog grows.
2. Idle: the daemon at its default poll interval against a server holding a
   backlog it cannot serve; its CPU (psutil) and its calls to the server per
   minute (its own /metrics) over a window.
3. Pickup latency: jobs created one at a time while the daemon idles; creation
   to start, by the server's clocks.

    python bench/bench_backlog.py [--backlogs 50,200,800] [--repeats 3] [--min-jobs 0] [--idle-s 60]
                                  [--idle-backlog 10000] [--pickups 5] [--skip idle,pickup] [--progress]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from _common import (
    ADMIN,
    NOOP_HANDLER,
    WORKER,
    call,
    cpu_s,
    fill,
    free_port,
    machine,
    median,
    server_process,
    token,
)

from ufdl_node.client import find_work_spec

TEMPLATE = "bench_noop"
REPORT = "    ctx.progress(1.0)\n"  # NOOP_HANDLER's one report: kept only with --progress
CALLS = re.compile(r'^ufdl_node_api_calls_total\{[^}]*\} ([0-9.e+]+)$', re.M)


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class Bench:
    """One server process, its admin session, and the daemon's files."""

    def __init__(self, url: str, scratch: Path, session: aiohttp.ClientSession,
                 admin: dict[str, str]) -> None:
        self.url, self.scratch, self.session, self.admin = url, scratch, session, admin
        self.template = 0
        self.progress = False  # --progress: the bare client reports progress 1.0 too
        self.daemons = 0
        self.inside: list[float] = []  # per run: median ms inside a job, and between jobs
        self.between: list[float] = []
        self.bare_cpu: list[float] = []  # per bare run: the client's CPU seconds per job (this process)

    async def create(self, count: int) -> list[int]:
        path = f"{self.url}/v1/job-templates/{self.template}/create-job"
        body = {"input_values": {}, "parameter_values": {}, "description": "bench"}
        return [int((await call(self.session, "POST", path, self.admin, json=body))["pk"])
                for _ in range(count)]

    async def wait_started(self, pk: int) -> dict[str, Any]:
        """Job `pk` once it has started (polled: the bench must not depend on the web socket)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job: dict[str, Any] = await call(self.session, "GET", f"{self.url}/v1/jobs/{pk}", self.admin)
            if job["start_time"] is not None:
                return job
            await asyncio.sleep(0.2)
        raise SystemExit(f"job {pk} was not picked up in 120 s")

    async def span_per_job(self, pks: list[int]) -> float:
        """Seconds per job from the first start to the last end (server clocks); checks all finished.

        Also notes the median time inside a job (its start to its end) and between jobs
        (an end to the next start), printed with the run's figures."""
        jobs = [await call(self.session, "GET", f"{self.url}/v1/jobs/{pk}", self.admin) for pk in pks]
        for job in jobs:
            if job["end_time"] is None or job["error_reason"] is not None:
                raise SystemExit(f"job {job['pk']} did not finish: {job}")
        spans = sorted((stamp(j["start_time"]), stamp(j["end_time"])) for j in jobs)
        self.inside.append(median([end - start for start, end in spans]))
        self.between.append(median([b[0] - a[1] for a, b in itertools.pairwise(spans)] or [0.0]))
        return (spans[-1][1] - spans[0][0]) / max(1, len(jobs) - 1)

    async def bare(self, count: int) -> float:
        """The bare client: one list, then acquire, start (progress) and finish of each job."""
        pks = await self.create(count)
        worker = {"Authorization": f"Bearer {await token(self.session, self.url, WORKER)}"}
        node = await call(self.session, "POST", f"{self.url}/v1/nodes/create", worker, status=201,
                          json={"ip": f"127.0.1.{self.daemons % 250 + 1}", "index": 0, "cpu_mem": 2**30})
        self.daemons += 1
        headers = {**worker, "Node-Id": str(node["pk"])}
        spec = find_work_spec()  # narrowed to its template, as the daemon's lists are
        spec["expressions"].append({"type": "exact", "field": "template.name", "value": TEMPLATE})
        listed = await call(self.session, "POST", f"{self.url}/v1/jobs/list", headers, json=spec)
        cpu0 = time.process_time()
        for pk in sorted(j["pk"] for j in listed):
            await call(self.session, "GET", f"{self.url}/v1/jobs/{pk}/acquire", headers)
            await call(self.session, "POST", f"{self.url}/v1/jobs/{pk}/start", headers,
                       json={"send_notification": "none"})
            if self.progress:
                await call(self.session, "POST", f"{self.url}/v1/jobs/{pk}/progress/1.0000", headers, json={})
            await call(self.session, "POST", f"{self.url}/v1/jobs/{pk}/finish", headers,
                       json={"success": True, "send_notification": "none"})
        self.bare_cpu.append((time.process_time() - cpu0) / max(1, len(listed)))
        return await self.span_per_job(pks)

    async def daemon(self, count: int) -> float:
        """The daemon, started once the backlog waits, until no work is left (exit_when_idle)."""
        pks = await self.create(count)
        with self.daemon_process(exit_when_idle=True) as proc:
            code = await asyncio.to_thread(proc.wait, 600)
        if code != 0:
            raise SystemExit(f"the daemon exited with {code}")
        return await self.span_per_job(pks)

    @contextmanager
    def daemon_process(self, **settings: Any) -> Iterator[subprocess.Popen[bytes]]:
        self.daemons += 1
        home = self.scratch / f"daemon-{self.daemons}"
        values = {"server_url": self.url, "username": WORKER[0], "password": WORKER[1],
                  "node_ip": f"127.0.2.{self.daemons % 250 + 1}", "gpu_indices": [0],
                  "state_dir": str(home / "state"), "cache_dir": str(home / "cache"),
                  "work_dir": str(home / "work"), "handler_dirs": [str(self.scratch / "handlers")],
                  "log_level": "error", **settings}
        config = home / "ufdl-node.toml"
        home.mkdir(parents=True)
        config.write_text("".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
        # UFDL_BENCH_PROFILE_DAEMON=FILE: the daemon runs under cProfile (its last run's profile).
        profile = ["-m", "cProfile", "-o", os.environ["UFDL_BENCH_PROFILE_DAEMON"]] \
            if os.environ.get("UFDL_BENCH_PROFILE_DAEMON") else []
        # UFDL_BENCH_PYSPY_DAEMON=FILE: sampled by py-spy instead (collapsed stacks; py-spy is
        # not a dependency: install it to use this), which distorts less than cProfile.
        # UFDL_BENCH_PYSPY_ARGS: more options (--gil: only what holds the GIL, no system calls).
        spied = os.environ.get("UFDL_BENCH_PYSPY_DAEMON")
        spy = ["py-spy", "record", "--rate", "1000", "--format", "raw", "--nonblocking",
               *os.environ.get("UFDL_BENCH_PYSPY_ARGS", "").split(), "-o", spied, "--"] if spied else []
        command = [*spy, sys.executable, *profile, "-m", "ufdl_node", "run", "--config", str(config)]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)


def _runs(seconds: list[float]) -> str:
    """Each run's ms per job, or their range when there are many."""
    if len(seconds) <= 8:
        return ", ".join(f"{x * 1e3:.2f}" for x in seconds)
    return f"{min(seconds) * 1e3:.2f} to {max(seconds) * 1e3:.2f}"


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return str(value)


async def metrics_calls(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as r:
        return sum(float(v) for v in CALLS.findall(await r.text()))


async def idle(bench: Bench, seconds: float) -> dict[str, float]:
    """The daemon's CPU and calls per minute while it idles at the default poll interval."""
    port = free_port()
    status = f"http://127.0.0.1:{port}"
    with bench.daemon_process(status_listen=f"127.0.0.1:{port}") as proc:
        deadline = time.monotonic() + 60
        while True:  # ready: its first poll is done
            try:
                if await metrics_calls(bench.session, status) >= 2:
                    break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the daemon did not start polling")
            await asyncio.sleep(0.5)
        await asyncio.sleep(15)  # past its start-up (imports, registration, the first full list)
        ps = psutil.Process(proc.pid)
        calls0, cpu0, t0 = await metrics_calls(bench.session, status), cpu_s(ps), time.monotonic()
        await asyncio.sleep(seconds)
        calls1, cpu1, t1 = await metrics_calls(bench.session, status), cpu_s(ps), time.monotonic()
    return {"cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "calls_per_min": 60 * (calls1 - calls0) / (t1 - t0)}


async def pickups(bench: Bench, count: int) -> list[float]:
    """Creation to start of jobs created one at a time, at random moments, while the daemon idles."""
    latencies = []
    rng = random.Random(11)
    with bench.daemon_process():
        await asyncio.sleep(10)  # registered and idle
        for _ in range(count):
            # Not in step with its polls: right after a pickup the daemon has just polled.
            await asyncio.sleep(rng.uniform(0, 11))
            pk = (await bench.create(1))[0]
            job = await bench.wait_started(pk)
            latencies.append(stamp(job["start_time"]) - stamp(job["creation_time"]))
    return latencies


async def run(args: argparse.Namespace, url: str, scratch: Path, templates: dict[str, int]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        bench = Bench(url, scratch, session, {"Authorization": f"Bearer {await token(session, url, ADMIN)}"})
        bench.template = templates[TEMPLATE]
        bench.progress = args.progress
        ratios = {}
        for backlog in (int(b) for b in args.backlogs.split(",")):
            bare_s: list[float] = []
            daemon_s: list[float] = []
            parts: dict[str, list[tuple[float, float]]] = {"bare": [], "daemon": []}
            # A small backlog is a short run, and the machine's jitter dominates it: run pairs
            # until at least --min-jobs jobs were timed on each side (never fewer than --repeats).
            repeats = max(args.repeats, -(-args.min_jobs // backlog))
            for i in range(repeats):
                order = [bench.bare, bench.daemon] if i % 2 == 0 else [bench.daemon, bench.bare]
                for step in order:
                    side = "bare" if step == bench.bare else "daemon"
                    (bare_s if side == "bare" else daemon_s).append(await step(backlog))
                    parts[side].append((bench.inside[-1], bench.between[-1]))
            b, d = median(bare_s), median(daemon_s)
            # The median of the ratios of runs side by side: steadier on a loaded machine.
            ratios[backlog] = median([y / x for x, y in zip(bare_s, daemon_s, strict=True)])
            print(f"  backlog {backlog:4d}: bare {b * 1e3:6.2f} ms/job  daemon {d * 1e3:6.2f} ms/job  "
                  f"ratio {ratios[backlog]:4.2f}  (medians of {repeats} pairs; daemon runs "
                  f"{_runs(daemon_s)} ms, bare {_runs(bare_s)} ms)", flush=True)
            split = ", ".join(f"{side} {median([p[0] for p in got]) * 1e3:.2f} / "
                              f"{median([p[1] for p in got]) * 1e3:.2f}" for side, got in parts.items())
            print(f"                 median ms inside a job (start to end) / between jobs (end to next "
                  f"start): {split}", flush=True)
        if len(ratios) > 1:
            first, last = ratios[min(ratios)], ratios[max(ratios)]
            print(f"  ratio at {max(ratios)} vs {min(ratios)}: {last / first:4.2f}", flush=True)
        if "idle" not in args.skip:
            got = await idle(bench, args.idle_s)
            print(f"  idle ({args.idle_backlog} jobs it cannot serve, poll every 10 s, {args.idle_s:g} s): "
                  f"CPU {got['cpu_pct']:.4f} % of a core, {got['calls_per_min']:.1f} calls/min", flush=True)
        if "pickup" not in args.skip:
            lat = await pickups(bench, args.pickups)
            print(f"  pickup after creation (poll every 10 s): median {median(lat):.2f} s, "
                  f"max {max(lat):.2f} s over {len(lat)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlogs", default="50,200,800")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-jobs", type=int, default=0,
                        help="more pairs for small backlogs: at least this many jobs per side")
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--idle-backlog", type=int, default=10_000, help="waiting jobs of another template")
    parser.add_argument("--pickups", type=int, default=5)
    parser.add_argument("--skip", default="", help="idle,pickup")
    parser.add_argument("--progress", action="store_true",
                        help="the handler reports progress 1.0 once (and the bare client sends it too)")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="ufdl-bench-backlog-") as tmp:
        scratch = Path(tmp)
        (scratch / "handlers").mkdir()
        handler_text = NOOP_HANDLER if args.progress else NOOP_HANDLER.replace(REPORT, "    return None\n")
        (scratch / "handlers" / "bench_noop.py").write_text(handler_text)
        data_dir = scratch / "server"
        templates = fill(data_dir, ["other", TEMPLATE], {"other": args.idle_backlog})
        with server_process(data_dir) as server:
            asyncio.run(run(args, server.url, scratch, templates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
