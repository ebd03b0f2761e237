"""A zipped model output through the daemon, from the end of the job's own work to the job's
finish, against ``zip -0`` and ``curl`` of the same files; and /healthz meanwhile.

The embedded server and the daemon (``ufdl-node run``) run as separate processes. The job is
a ``command`` definition (the path of the docker definitions' model outputs: the output
directory is collected, zipped, staged, uploaded): its command hard-links a model directory
made once by this bench (``--size-mib`` of random bytes in ``--files`` files, in the page cache
for both sides) into ``out/model`` and writes the time; the daemon then zips, stages and
uploads it, uploads the job's log and finishes. Measured: that time to the job's ``end_time``
(the server's clock, the same machine), the daemon's CPU over the job, and the slowest answer
of the daemon's ``/healthz`` (GET every 50 ms from a thread) while it ran.

Baseline, turn about in the same run: ``zip -0 -r -q`` of the same directory and ``curl -T``
of the zip to an output of a started job, timed together. Goals (issue 20): daemon/baseline
≤ 1.3, /healthz ≤ 100 ms.

    python bench/bench_output_zip.py [--size-mib 1024] [--files 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import psutil
from _common import ADMIN, WORKER, call, cpu_s, free_port, machine, median, server_process, token
from bench_backlog import toml
from bench_upload_vs_curl import curl_once, setup_job

from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

MIB = 2**20
TEMPLATE = "bench_output_zip"
PROBE_S = 0.05


class Probe(threading.Thread):
    """GETs `url` every 50 ms; (when it was sent, how long the answer took), any HTTP status."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            sent, began = time.time(), time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=60) as reply:
                    reply.read()
            except urllib.error.HTTPError as e:
                e.read()
            except OSError:
                pass
            self.samples.append((sent, time.monotonic() - began))
            self.done.wait(PROBE_S)

    def slowest(self, since: float) -> float:
        """The slowest answer to a probe sent after `since` (or still open then)."""
        return max((took for sent, took in self.samples if sent + took >= since), default=0.0)


def make_model(directory: Path, size_mib: int, files: int) -> None:
    """`size_mib` of random bytes in `files` files (weights do not compress), and a config."""
    directory.mkdir(parents=True)
    per_file = [size_mib // files + (1 if i < size_mib % files else 0) for i in range(files)]
    for i, mib in enumerate(per_file):
        with (directory / f"weights-{i}.bin").open("wb") as f:
            for _ in range(mib):
                f.write(os.urandom(MIB))
    (directory / "config.py").write_text("model = dict(type='ImageClassifier')\n")


def definition(model: Path, marks: Path) -> str:
    command = f"mkdir -p out && cp -al {model} out/model && date +%s.%N > {marks}/{{job_pk}}"
    return (f"command = {toml(command)}\n"
            'outputs = [{ name = "model", type = "Blob", path = "out/model" }]\n')


class Bench:
    """The server, an admin session, the daemon process and its status endpoint."""

    def __init__(self, url: str, scratch: Path, session: aiohttp.ClientSession,
                 admin: dict[str, str]) -> None:
        self.url, self.scratch, self.session, self.admin = url, scratch, session, admin
        self.marks = scratch / "marks"
        self.marks.mkdir()
        self.definitions = scratch / "command.d"
        self.definitions.mkdir()
        (self.definitions / f"{TEMPLATE}.toml").write_text(definition(scratch / "model", self.marks))
        self.status_port = free_port()
        self.template_pk = 0

    async def import_template(self) -> None:
        registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False,
                                 settings=SimpleNamespace(command_template_dirs=[self.definitions]))
        spec = registry.for_template(TEMPLATE, 1)
        if spec is None or spec.description is None:
            raise SystemExit(f"the bench's definition did not load: {registry.problems}")
        made = await call(self.session, "POST", f"{self.url}/v1/job-templates/import", self.admin,
                          json=spec.description.import_spec(TEMPLATE))
        self.template_pk = int(made["pk"])

    def daemon_process(self) -> subprocess.Popen[bytes]:
        home = self.scratch / "daemon"
        values = {"server_url": self.url, "username": WORKER[0], "password": WORKER[1],
                  "node_ip": "127.0.3.1", "gpu_indices": [0], "state_dir": str(home / "state"),
                  "cache_dir": str(home / "cache"), "work_dir": str(home / "work"),
                  "handler_dirs": [str(SHIPPED_HANDLERS_DIR)],
                  "command_template_dirs": [str(self.definitions)], "poll_interval_s": 0.2,
                  "status_listen": f"127.0.0.1:{self.status_port}", "log_level": "error"}
        home.mkdir()
        config = home / "ufdl-node.toml"
        config.write_text("".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
        config.chmod(0o600)
        return subprocess.Popen([sys.executable, "-m", "ufdl_node", "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def daemon_once(self, daemon: psutil.Process) -> dict[str, float]:
        probe = Probe(f"http://127.0.0.1:{self.status_port}/healthz")
        probe.start()
        cpu0 = cpu_s(daemon)
        create = f"{self.url}/v1/job-templates/{self.template_pk}/create-job"
        job = await call(self.session, "POST", create, self.admin,
                         json={"input_values": {}, "parameter_values": {}, "description": "bench"})
        pk = int(job["pk"])
        while job["end_time"] is None:
            await asyncio.sleep(0.05)
            job = await call(self.session, "GET", f"{self.url}/v1/jobs/{pk}", self.admin)
        cpu = cpu_s(daemon) - cpu0
        probe.done.set()
        await asyncio.to_thread(probe.join)
        if job["error_reason"] is not None:
            raise SystemExit(f"job {pk} failed: {job['error_reason']}")
        began = float((self.marks / str(pk)).read_text())
        return {"wall": datetime.fromisoformat(job["end_time"]).timestamp() - began, "cpu": cpu,
                "healthz": probe.slowest(began), "probes": len(probe.samples)}

    def baseline_once(self, access: str, job: int, node: int, i: int) -> dict[str, float]:
        zipped = self.scratch / "baseline.zip"
        began = time.perf_counter()
        subprocess.run(["zip", "-0", "-r", "-q", str(zipped), "model"], cwd=self.scratch, check=True)
        zip_s = time.perf_counter() - began
        curl_once(self.url, access, job, node, f"baseline{i}", zipped, self.scratch)
        wall = time.perf_counter() - began
        zipped.unlink()
        return {"wall": wall, "zip": zip_s}


async def run(args: argparse.Namespace, url: str, scratch: Path) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {"daemon": [], "baseline": []}
    async with aiohttp.ClientSession() as session:
        admin = {"Authorization": f"Bearer {await token(session, url, ADMIN)}"}
        bench = Bench(url, scratch, session, admin)
        await bench.import_template()
        job, node, access = await setup_job(url)
        proc = bench.daemon_process()
        try:
            await asyncio.to_thread(wait_healthz, bench.status_port, proc)
            daemon = psutil.Process(proc.pid)
            for i in range(args.repeats):
                results["daemon"].append(await bench.daemon_once(daemon))
                results["baseline"].append(await asyncio.to_thread(bench.baseline_once, access, job, node, i))
        finally:
            proc.terminate()
            proc.wait(60)
    return results


def wait_healthz(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not start") from None
            time.sleep(0.1)


def runs(results: list[dict[str, float]]) -> str:
    return ", ".join(f"{r['wall']:.2f}" for r in results)


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> int:
    daemon, base = results["daemon"], results["baseline"]
    d_wall, b_wall = median([r["wall"] for r in daemon]), median([r["wall"] for r in base])
    worst = max(r["healthz"] for r in daemon)
    load = os.getloadavg()
    print(f"machine: {machine()}; load average before/after: {args.load[0]:.2f} / {load[0]:.2f}")
    print(f"{args.size_mib} MiB model in {args.files} files + config, median of {args.repeats}, turn about:")
    print(f"  daemon       : {d_wall:6.2f} s  ({runs(daemon)})  "
          f"{args.size_mib / d_wall:7.1f} MiB/s  daemon CPU over the job "
          f"{median([r['cpu'] for r in daemon]):5.2f} s")
    print(f"  zip -0 + curl: {b_wall:6.2f} s  ({runs(base)})  "
          f"of which zip {median([r['zip'] for r in base]):.2f} s")
    ratio = d_wall / b_wall
    print(f"  ratio daemon/baseline: {ratio:.2f} (goal <= 1.3)")
    print(f"  /healthz slowest answer during the output: {worst * 1e3:.0f} ms (goal <= 100 ms; "
          f"{sum(int(r['probes']) for r in daemon)} probes)")
    return 0 if ratio <= 1.3 and worst <= 0.1 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="the model's size (default 1024)")
    parser.add_argument("--files", type=int, default=4, help="weight files it is split into (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (default 3)")
    args = parser.parse_args(argv)
    args.load = os.getloadavg()
    for tool in ("zip", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    scratch = Path(tempfile.mkdtemp(prefix="ufdl-bench-zip-"))
    try:
        make_model(scratch / "model", args.size_mib, max(1, args.files))
        with server_process(max_upload_bytes=str(2 * args.size_mib * MIB + MIB)) as server:
            results = asyncio.run(run(args, server.url, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report(results, args)


if __name__ == "__main__":
    sys.exit(main())
