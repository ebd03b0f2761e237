"""Shared by the benchmarks: an embedded server as a separate process, a bulk filler, figures.

Not a benchmark itself (``run_all.py`` runs only ``bench_*.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from ufdl_node.server.store import Store, now

ADMIN, WORKER = ("admin", "bench-admin"), ("worker", "bench-worker")
# A handler file for the daemon benchmarks: template bench_noop, a job that only reports it is done.
NOOP_HANDLER = '''
from ufdl_node.api import JobContext, TemplateDescription, handler


@handler("bench_noop", description=TemplateDescription(job_type="Export"))
async def run(ctx: JobContext) -> None:
    ctx.progress(1.0)
'''


class RssSampler:
    """Samples one process's RSS in a thread; `peak()` gives the highest value since `reset()`."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            with self._lock:
                self._peak = max(self._peak, rss)
            time.sleep(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        with self._lock:
            self._peak = self.process.memory_info().rss

    def peak(self) -> int:
        with self._lock:
            return self._peak


MIB = 2**20


def mib(n: int) -> str:
    return f"{n / MIB:8.1f} MiB"


def sampled_run(measure: Callable[[str, RssSampler], Coroutine[Any, Any, dict[str, float]]],
                **env_settings: str) -> dict[str, float]:
    """`measure(url, sampler)` against a fresh embedded server whose RSS `sampler` watches."""
    with server_process(None, **env_settings) as server:
        sampler = RssSampler(server.proc.pid)
        sampler.start()
        try:
            return asyncio.run(measure(server.url, sampler))
        finally:
            sampler.stop()


def report_peaks(result: dict[str, float], phases: tuple[str, ...], size_mib: int,
                 max_growth_mib: float) -> int:
    """Print each phase's peak RSS against ``result["baseline"]`` and its rate over `size_mib`;
    0 when no peak grows past the baseline by more than `max_growth_mib`, else 1."""
    base = result["baseline"]
    width = max(map(len, phases))
    for phase in phases:
        peak, seconds = result[phase], result[f"{phase}_s"]
        print(f"  {phase:{width}s} peak: {mib(int(peak))}  ratio to baseline {peak / base:5.2f}  "
              f"({size_mib / seconds:7.1f} MiB/s)")
    growth = max(result[phase] for phase in phases) - base
    verdict = "OK" if growth <= max_growth_mib * MIB else "FAIL"
    print(f"  growth over baseline: {growth / MIB:.1f} MiB (limit {max_growth_mib:g} MiB): {verdict}")
    return 0 if verdict == "OK" else 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def template_fields(name: str) -> dict[str, Any]:
    return {"name": name, "version": 1, "description": "", "scope": "public", "licence": "MIT",
            "workable": 1, "type": "Export", "executor_class": "bench.Noop", "required_packages": "",
            "parameters": {}}


def fill(data_dir: Path, templates: list[str], backlog: dict[str, int]) -> dict[str, int]:
    """Create `templates` and `backlog[name]` waiting jobs of each, straight into the database.

    Returns the template pks by name. The server is started on the directory afterwards.
    """
    store = Store(data_dir)
    try:
        pks = {name: store.import_template(template_fields(name)) for name in templates}
        stamp = now()
        with store.transaction() as db:
            for name, count in backlog.items():
                db.executemany(
                    """INSERT INTO jobs (template, input_values, parameter_values, description, creator,
                       creation_time) VALUES (?, '{}', '{}', 'backlog', 1, ?)""",
                    ((pks[name], stamp) for _ in range(count)))
        return pks
    finally:
        store.close()


@dataclass
class ServerProcess:
    """``python -m ufdl_node server`` on a free loopback port."""

    url: str
    proc: subprocess.Popen[bytes]
    data_dir: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        return cpu_s(self.ps)


def cpu_s(ps: psutil.Process) -> float:
    """The CPU seconds (user + system) process `ps` has used so far."""
    times = ps.cpu_times()
    return float(times.user + times.system)


@contextmanager
def server_process(data_dir: Path | None = None, **env_settings: str) -> Iterator[ServerProcess]:
    """Start the embedded server on `data_dir` (a fresh temporary one by default); stop it after."""
    own = data_dir is None
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="ufdl-bench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_SERVER_")}
    env.update(UFDL_NODE_SERVER_ADMIN=":".join(ADMIN), UFDL_NODE_SERVER_WORKER=":".join(WORKER),
               **{f"UFDL_NODE_SERVER_{k.upper()}": v for k, v in env_settings.items()})
    # UFDL_BENCH_PROFILE=FILE: the server runs under cProfile, its profile written to FILE at exit.
    profile = ["-m", "cProfile", "-o", os.environ["UFDL_BENCH_PROFILE"]] \
        if os.environ.get("UFDL_BENCH_PROFILE") else []
    proc = subprocess.Popen([sys.executable, *profile, "-m", "ufdl_node", "server", "--port", str(port),
                             "--data-dir", str(data_dir), "--log-level", "error"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(_wait_listening(port, proc))
        yield ServerProcess(f"http://127.0.0.1:{port}", proc, data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if own:
            shutil.rmtree(data_dir, ignore_errors=True)


async def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before listening")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 60 s") from None
            await asyncio.sleep(0.05)


async def token(session: aiohttp.ClientSession, url: str, who: tuple[str, str] = ADMIN) -> str:
    async with session.post(f"{url}/v1/auth/obtain",
                            json={"username": who[0], "password": who[1]}) as r:
        if r.status != 200:
            raise SystemExit(f"login as {who[0]}: HTTP {r.status}")
        return str((await r.json())["access"])


async def call(session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
               status: int = 200, **kw: Any) -> Any:
    async with session.request(method, url, headers=headers, **kw) as r:
        body = await r.read()
        if r.status != status:
            raise SystemExit(f"{method} {url}: HTTP {r.status} {body[:300]!r}")
        return json.loads(body) if body else None


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def child_usage() -> tuple[float, int]:
    """CPU seconds and peak RSS (bytes) of this process, for a child to report."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model})"
