"""A large upload through the project's client against ``curl`` to the same endpoint.

The embedded server runs as a separate process; so do both uploaders, turn
about, each sending the same file to a fresh output of one started job:

- curl: ``curl -T FILE -X POST`` (streams the file, sends a Content-Length);
- client: ``UfdlClient.upload_output`` in a child Python process, which
  reports the wall time and CPU seconds of the upload itself and its own peak
  RSS (the figure that matters for the daemon).

Printed: medians of wall time and CPU for both, the ratios client/curl, and the
client's peak RSS. The server's record of each output's size is checked.

    python bench/bench_upload_vs_curl.py [--size-mib 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import ADMIN, RssSampler, call, child_usage, machine, median, server_process, token

from ufdl_node.client import UfdlClient
from ufdl_node.logs import configure_logging

MIB = 2**20
TEMPLATE = {"name": "bench_upload", "version": 1, "licence": "MIT",
            "specific": {"job_type": "Export", "executor_class": "bench.Upload", "parameters": {}}}


async def setup_job(url: str) -> tuple[int, int, str]:
    """A started job held by a fresh node; returns (job pk, node pk, admin token)."""
    async with aiohttp.ClientSession() as session:
        access = await token(session, url)
        headers = {"Authorization": f"Bearer {access}"}
        template = await call(session, "POST", f"{url}/v1/job-templates/import", headers, json=TEMPLATE)
        node = await call(session, "POST", f"{url}/v1/nodes/create", headers, 201,
                          json={"ip": "10.250.0.1", "index": 0, "cpu_mem": 2**30})
        job = await call(session, "POST", f"{url}/v1/job-templates/{template['pk']}/create-job", headers,
                         json={"input_values": {}, "parameter_values": {}, "description": "bench"})
        headers["Node-Id"] = str(node["pk"])
        await call(session, "GET", f"{url}/v1/jobs/{job['pk']}/acquire", headers)
        await call(session, "POST", f"{url}/v1/jobs/{job['pk']}/start", headers,
                   json={"send_notification": "none"})
        return int(job["pk"]), int(node["pk"]), access


async def stored_size(url: str, access: str, job: int, name: str, data_dir: Path) -> int:
    """The size of the output's bytes as the server stored them (its file, named by the output's pk)."""
    async with aiohttp.ClientSession() as session:
        info = await call(session, "GET", f"{url}/v1/jobs/{job}/outputs/{name}/bin/info",
                          {"Authorization": f"Bearer {access}"})
    return (data_dir / "outputs" / str(int(info["pk"]))).stat().st_size


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, str]:
    """Run a process to completion: (wall s, CPU s, peak RSS bytes, stdout)."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    # ru_maxrss would count the parent's pages at the fork: sample the child's own RSS instead.
    sampler = RssSampler(proc.pid)
    sampler.start()
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    peak = sampler.peak()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, peak, out


def curl_once(url: str, access: str, job: int, node: int, name: str, path: Path,
              scratch: Path) -> dict[str, float]:
    headers = scratch / "curl-headers"  # the token stays out of the process list
    headers.write_text(f"Authorization: Bearer {access}\nNode-Id: {node}\nExpect:\n"
                       "Content-Type: application/octet-stream\n"
                       f"Content-Disposition: attachment; filename={name}\n")
    wall, cpu, rss, _ = run_measured(["curl", "-sS", "-f", "-X", "POST", "-T", str(path), "-H", f"@{headers}",
                                      "-o", os.devnull, f"{url}/v1/jobs/{job}/outputs/{name}/bin"])
    return {"wall": wall, "cpu": cpu, "rss": rss}


def client_once(url: str, job: int, node: int, name: str, path: Path) -> dict[str, float]:
    env = dict(os.environ, BENCH_UFDL_PASSWORD=ADMIN[1])
    _, _, rss, out = run_measured([sys.executable, __file__, "--child", url, str(job), str(node), name,
                                   str(path)], env=env)
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return {**figures, "rss": rss}


async def child(url: str, job: int, node: int, name: str, path: Path) -> dict[str, Any]:
    """In the child: log in, then upload and time only the upload."""
    configure_logging("error", "console")
    async with UfdlClient(url, ADMIN[0], os.environ["BENCH_UFDL_PASSWORD"]) as client:
        await client.login()
        cpu0, began = child_usage()[0], time.perf_counter()
        await client.upload_output(job, node, name, "bin", path)
        return {"wall": time.perf_counter() - began, "cpu": child_usage()[0] - cpu0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the file (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="uploads per uploader (default 3)")
    parser.add_argument("--child", nargs=5, metavar=("URL", "JOB", "NODE", "NAME", "PATH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        url, job, node, name, path = args.child
        print(json.dumps(asyncio.run(child(url, int(job), int(node), name, Path(path)))))
        return 0
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed (apt-get install curl)")
    size = args.size_mib * MIB
    scratch = Path(tempfile.mkdtemp(prefix="ufdl-bench-curl-"))
    try:
        source = scratch / "source.bin"
        block = os.urandom(MIB)
        with source.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(block)
        results: dict[str, list[dict[str, float]]] = {"curl": [], "client": []}
        with server_process(max_upload_bytes=str(size + MIB)) as server:
            job, node, access = asyncio.run(setup_job(server.url))
            for i in range(args.repeats):
                results["curl"].append(curl_once(server.url, access, job, node, f"curl{i}", source, scratch))
                results["client"].append(client_once(server.url, job, node, f"client{i}", source))
            for who in results:
                for i in range(args.repeats):
                    got = asyncio.run(stored_size(server.url, access, job, f"{who}{i}", server.data_dir))
                    if got != size:
                        raise SystemExit(f"{who}{i}: the server stored {got} of {size} bytes")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"upload of {args.size_mib} MiB to the embedded server on loopback, median of {args.repeats}:")
    figures = {who: {k: median([r[k] for r in runs]) for k in ("wall", "cpu", "rss")}
               for who, runs in results.items()}
    for who, f in figures.items():
        print(f"  {who:6s}: {f['wall']:6.2f} s  {args.size_mib / f['wall']:7.1f} MiB/s  "
              f"CPU {f['cpu']:6.2f} s  peak RSS {f['rss'] / MIB:6.1f} MiB")
    c, k = figures["client"], figures["curl"]
    print(f"  ratio client/curl: time {c['wall'] / k['wall']:.2f}, CPU {c['cpu'] / k['cpu']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
