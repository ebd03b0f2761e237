"""Short jobs at any poll interval: a no-op job that reports progress, through the daemon,
against the bare protocol (acquire, start, finish), side by side in the same run.

The embedded server and the daemon (``python -m ufdl_node run``, one slot, a handler that
reports progress 1.0 once and returns) run as separate processes. For each poll interval
(default 0.05 s and 10 s) and a backlog (default 200), runs alternate between the bare
client (bench_backlog.py's: lists once, then acquire, start, finish: no progress call) and
the daemon, started once the backlog waits; both timed by the server's clocks, from the
first job's start to the last one's end. Printed: ms per job on each side, the median of
the pairs' ratios (goal: at most 1.3), and the daemon's calls to the server per job by
action (from its own /metrics), which say where a ratio comes from: while a backlog is
worked through, no find-work list per job, no search for the highest pk, no progress call.

    python bench/bench_shortjobs.py [--polls 0.05,10] [--backlog 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
from _common import ADMIN, NOOP_HANDLER, call, cpu_s, fill, free_port, machine, median, server_process, token
from bench_backlog import TEMPLATE, Bench

CALLS = re.compile(r'^ufdl_node_api_calls_total\{([^}]*)\} ([0-9.e+]+)$', re.M)
ACTION = re.compile(r'action="([^"]*)"')
JOBS = re.compile(r'^ufdl_node_jobs_total\{[^}]*\} ([0-9.e+]+)$', re.M)


class ShortJobs(Bench):
    """bench_backlog's Bench, with the daemon at a given poll interval and its calls counted."""

    poll_interval_s = 10.0
    calls: dict[str, float]
    daemon_cpu: list[float]  # per daemon run: its CPU seconds per job, start-up left out
    daemon_sys: list[float]  # of which in the kernel (system calls: sends, file system)
    sys0 = 0.0

    async def daemon(self, count: int) -> float:
        """The daemon until every job of the backlog finished; its calls by action meanwhile."""
        pks = await self.create(count)
        port = free_port()
        status = f"http://127.0.0.1:{port}"
        with self.daemon_process(status_listen=f"127.0.0.1:{port}", poll_interval_s=self.poll_interval_s,
                                 poll_jitter_s=min(self.poll_interval_s / 10, 1.0)) as proc:
            ps = psutil.Process(proc.pid)
            cpu0, done0 = await self.first_job_ended(status, ps)
            await self.wait_finished(pks[-1])
            cpu1, done1 = cpu_s(ps), await jobs_ended(self.session, status)
            sys1 = ps.cpu_times().system
            self.calls = await calls_by_action(self.session, status)
        self.daemon_cpu.append((cpu1 - cpu0) / max(1.0, done1 - done0))
        self.daemon_sys.append((sys1 - self.sys0) / max(1.0, done1 - done0))
        return await self.span_per_job(pks)

    async def first_job_ended(self, status: str, ps: psutil.Process) -> tuple[float, float]:
        """The daemon's CPU seconds and jobs ended once its first job has ended (its start-up
        is not counted in its CPU per job)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                cpu, self.sys0 = cpu_s(ps), ps.cpu_times().system
                done = await jobs_ended(self.session, status)
                if done >= 1:
                    return cpu, done
            except aiohttp.ClientError:
                pass  # not listening yet
            await asyncio.sleep(0.01)
        raise SystemExit("the daemon ended no job in 120 s")

    async def wait_finished(self, pk: int) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job = await call(self.session, "GET", f"{self.url}/v1/jobs/{pk}", self.admin)
            if job["end_time"] is not None:
                return
            await asyncio.sleep(0.1)  # soon: the daemon's idle polls after the last job count as its CPU
        raise SystemExit(f"job {pk} did not finish in 600 s")


async def jobs_ended(session: aiohttp.ClientSession, status: str) -> float:
    async with session.get(f"{status}/metrics") as r:
        return sum(float(v) for v in JOBS.findall(await r.text()))


async def calls_by_action(session: aiohttp.ClientSession, status: str) -> dict[str, float]:
    async with session.get(f"{status}/metrics") as r:
        text = await r.text()
    counts: dict[str, float] = {}
    for labels, value in CALLS.findall(text):
        action = ACTION.search(labels)
        if action is not None:
            counts[action.group(1)] = counts.get(action.group(1), 0.0) + float(value)
    return counts


async def run(args: argparse.Namespace, url: str, scratch: Path, template: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        admin = {"Authorization": f"Bearer {await token(session, url, ADMIN)}"}
        bench = ShortJobs(url, scratch, session, admin)
        bench.template = template
        bench.progress = False  # the bare protocol: acquire, start, finish
        for poll in (float(p) for p in args.polls.split(",")):
            bench.poll_interval_s = poll
            bare_s: list[float] = []
            daemon_s: list[float] = []
            calls: list[dict[str, float]] = []
            bench.bare_cpu, bench.daemon_cpu, bench.daemon_sys = [], [], []
            for i in range(args.repeats):
                order = [bench.bare, bench.daemon] if i % 2 == 0 else [bench.daemon, bench.bare]
                for step in order:
                    if step == bench.bare:
                        bare_s.append(await step(args.backlog))
                    else:
                        daemon_s.append(await step(args.backlog))
                        calls.append(bench.calls)
            ratio = median([d / b for b, d in zip(bare_s, daemon_s, strict=True)])
            print(f"  poll_interval_s {poll:g}, backlog {args.backlog}: "
                  f"bare {median(bare_s) * 1e3:.2f} ms/job, daemon {median(daemon_s) * 1e3:.2f} ms/job, "
                  f"ratio {ratio:.2f} (median of {args.repeats} "
                  f"pairs: {', '.join(f'{d / b:.2f}' for b, d in zip(bare_s, daemon_s, strict=True))})",
                  flush=True)
            cpu_ratio = median([d / b for b, d in zip(bench.bare_cpu, bench.daemon_cpu, strict=True)])
            runs = ", ".join(f"{x * 1e3:.2f}" for x in bench.daemon_cpu)
            print(f"      CPU per job: bare client {median(bench.bare_cpu) * 1e3:.2f} ms, daemon "
                  f"{median(bench.daemon_cpu) * 1e3:.2f} ms (runs {runs}; in the kernel "
                  f"{median(bench.daemon_sys) * 1e3:.2f}), ratio {cpu_ratio:.2f}", flush=True)
            actions = sorted({a for c in calls for a in c})
            per_job = ", ".join(f"{a} {median([c.get(a, 0.0) for c in calls]) / args.backlog:.3f}"
                                for a in actions)
            print(f"      daemon calls per job (median over runs, start-up included): {per_job}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", default="0.05,10", help="poll intervals in seconds")
    parser.add_argument("--backlog", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="ufdl-bench-shortjobs-") as tmp:
        scratch = Path(tmp)
        (scratch / "handlers").mkdir()
        (scratch / "handlers" / "bench_noop.py").write_text(NOOP_HANDLER)  # reports progress 1.0 once
        data_dir = scratch / "server"
        templates = fill(data_dir, [TEMPLATE], {})
        with server_process(data_dir) as server:
            asyncio.run(run(args, server.url, scratch, templates[TEMPLATE]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
