"""Peak memory of the embedded server while a large output passes through it.

Starts ``python -m ufdl_node server`` as a subprocess on a free port, samples
its resident set size (RSS) with psutil every few milliseconds, and measures:

1. a baseline: the peak RSS while a tiny output is uploaded and downloaded;
2. the peak RSS while a large output (2 GiB by default) is uploaded, and
   then while it is downloaded.

The client never holds the output in memory: it sends one random 1 MiB block
over and over from a generator, and hashes the download as it streams in to
check it byte for byte. Streaming holds when the large figures stay close to
the baseline; the ratio and the growth are printed, and the run fails when the
growth passes ``--max-growth-mib``.

    python bench/bench_upload_memory.py [--size-mib 2048] [--max-growth-mib 64]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from _common import ADMIN, MIB, RssSampler, mib, report_peaks, sampled_run

TEMPLATE = {"name": "bench_upload", "version": 1, "licence": "MIT",
            "specific": {"job_type": "Export", "executor_class": "bench.Upload", "parameters": {}}}


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url
        self.headers: dict[str, str] = {}

    async def call(self, method: str, path: str, *, status: int = 200, **kw: Any) -> Any:
        async with self.session.request(method, self.url + path, headers=self.headers, **kw) as r:
            body = await r.json() if r.content_type == "application/json" else await r.read()
            if r.status != status:
                raise SystemExit(f"{method} {path}: HTTP {r.status} {body!r}"[:500])
            return body

    async def setup_job(self) -> tuple[int, int]:
        """Log in, import the template, make a node and a started job; returns (job pk, node pk)."""
        admin = await self.call("POST", "/v1/auth/obtain", json=dict(zip(("username", "password"), ADMIN,
                                                                           strict=True)))
        self.headers = {"Authorization": f"Bearer {admin['access']}"}
        found = await self.call("POST", "/v1/job-templates/list", json={"expressions": [
            {"type": "exact", "field": "name", "value": TEMPLATE["name"]}]})
        template = found[0] if found else await self.call(
            "POST", "/v1/job-templates/import", status=201, json=TEMPLATE)
        node = await self.call("POST", "/v1/nodes/create", status=201,
                               json={"ip": f"10.200.{os.getpid() % 250}.1", "index": len(found),
                                     "cpu_mem": 2**30})
        job = await self.call("POST", f"/v1/job-templates/{template['pk']}/create-job",
                              json={"input_values": {}, "parameter_values": {}, "description": "bench"})
        job_pk, node_pk = job["pk"], node["pk"]
        self.headers["Node-Id"] = str(node_pk)
        await self.call("GET", f"/v1/jobs/{job_pk}/acquire")
        await self.call("POST", f"/v1/jobs/{job_pk}/start", json={"send_notification": "none"})
        return job_pk, node_pk

    async def upload(self, job_pk: int, name: str, size: int) -> tuple[str, float]:
        """Upload `size` bytes from a generator; returns (sha256, seconds)."""
        block = os.urandom(MIB)
        digest = hashlib.sha256()

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            while sent < size:
                chunk = block if size - sent >= MIB else block[: size - sent]
                digest.update(chunk)
                sent += len(chunk)
                yield chunk

        started = time.monotonic()
        headers = {**self.headers, "Content-Type": "application/octet-stream",
                   "Content-Disposition": f"attachment; filename={name}"}
        async with self.session.post(f"{self.url}/v1/jobs/{job_pk}/outputs/{name}/bin",
                                     data=body(), headers=headers) as r:
            if r.status != 200:
                raise SystemExit(f"upload of {name}: HTTP {r.status} {await r.text()}"[:500])
        return digest.hexdigest(), time.monotonic() - started

    async def download(self, job_pk: int, name: str) -> tuple[str, int, float]:
        """Download an output, hashing it as it streams; returns (sha256, bytes, seconds)."""
        started = time.monotonic()
        digest, size = hashlib.sha256(), 0
        async with self.session.get(f"{self.url}/v1/jobs/{job_pk}/outputs/{name}/bin",
                                    headers=self.headers) as r:
            if r.status != 200:
                raise SystemExit(f"download of {name}: HTTP {r.status}")
            async for chunk in r.content.iter_chunked(MIB):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size, time.monotonic() - started


async def measure(size: int, url: str, sampler: RssSampler) -> dict[str, float]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = Client(session, url)
        job_pk, _node = await client.setup_job()

        sampler.reset()
        tiny_hash, _ = await client.upload(job_pk, "tiny", 1024)
        got, _n, _ = await client.download(job_pk, "tiny")
        assert got == tiny_hash, "tiny output changed on the round trip"
        baseline = sampler.peak()

        sampler.reset()
        sent_hash, up_s = await client.upload(job_pk, "large", size)
        upload_peak = sampler.peak()

        sampler.reset()
        got, received, down_s = await client.download(job_pk, "large")
        download_peak = sampler.peak()
    if (got, received) != (sent_hash, size):
        raise SystemExit(f"the large output changed on the round trip ({received} of {size} bytes)")
    return {"baseline": baseline, "upload": upload_peak, "download": download_peak,
            "upload_s": up_s, "download_s": down_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="size of the large output (default 2048)")
    parser.add_argument("--max-growth-mib", type=float, default=64.0,
                        help="fail when a peak exceeds the baseline by more than this (default 64)")
    args = parser.parse_args(argv)
    size = args.size_mib * MIB

    result = sampled_run(lambda url, sampler: measure(size, url, sampler),
                         max_upload_bytes=str(size + MIB))
    print(f"embedded server peak RSS, output of {args.size_mib} MiB (sampled every 5 ms):")
    print(f"  baseline (1 KiB upload + download): {mib(int(result['baseline']))}")
    return report_peaks(result, ("upload", "download"), args.size_mib, args.max_growth_mib)


if __name__ == "__main__":
    sys.exit(main())
