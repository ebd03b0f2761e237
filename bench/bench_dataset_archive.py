"""Peak memory of the embedded server while it serves a large dataset as a zip and a tar.gz.

Starts ``python -m ufdl_node server`` as a subprocess on a free port (the
sampler and client of ``bench_upload_memory.py``), makes a dataset of
``--files`` random (incompressible) files of ``--size-mib`` in all, and
measures the server's peak RSS:

1. a baseline: the peak while a one-file, 1 KiB dataset downloads as a zip;
2. the peak while the large dataset downloads as a zip, then as a tar.gz.

The archive is written by a thread into a bounded pipe and sent as it is made,
so the peaks should stay close to the baseline whatever the size; the client
counts the bytes as they stream in and never holds the archive. The run fails
when a peak passes the baseline by more than ``--max-growth-mib``.

    python bench/bench_dataset_archive.py [--size-mib 512] [--files 8] [--max-growth-mib 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
from _common import ADMIN, MIB, RssSampler, mib, report_peaks, sampled_run
from bench_upload_memory import Client


async def add_random_file(client: Client, pk: int, name: str, size: int) -> None:
    block = os.urandom(MIB)

    async def body() -> AsyncIterator[bytes]:
        for sent in range(0, size, MIB):
            yield block[: min(MIB, size - sent)]

    headers = {**client.headers, "Content-Type": "application/data",
               "Content-Disposition": f"attachment; filename={name}"}
    async with client.session.post(f"{client.url}/v1/datasets/{pk}/files/{name}", data=body(),
                                   headers=headers) as r:
        if r.status != 200:
            raise SystemExit(f"adding {name}: HTTP {r.status} {await r.text()}"[:500])


async def download(client: Client, pk: int, filetype: str) -> tuple[int, float]:
    """Stream the archive, counting its bytes; returns (bytes, seconds)."""
    started, size = time.monotonic(), 0
    async with client.session.post(f"{client.url}/v1/datasets/{pk}/download", headers=client.headers,
                                   json={"filetype": filetype}) as r:
        if r.status != 200:
            raise SystemExit(f"download as {filetype}: HTTP {r.status}")
        async for chunk in r.content.iter_chunked(MIB):
            size += len(chunk)
    return size, time.monotonic() - started


async def dataset(client: Client, name: str, files: int, size: int) -> int:
    made = await client.call("POST", "/v1/datasets/create", status=201, json={"name": name, "domain": "ic"})
    for i in range(files):
        await add_random_file(client, made["pk"], f"image-{i:04d}.bin", size // files)
    return int(made["pk"])


async def measure(url: str, sampler: RssSampler, files: int, size: int) -> dict[str, float]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = Client(session, url)
        admin = await client.call("POST", "/v1/auth/obtain",
                                  json={"username": ADMIN[0], "password": ADMIN[1]})
        client.headers = {"Authorization": f"Bearer {admin['access']}"}
        tiny = await dataset(client, "bench-tiny", 1, 1024)
        large = await dataset(client, "bench-large", files, size)
        result: dict[str, float] = {}
        sampler.reset()
        await download(client, tiny, "zip")
        result["baseline"] = sampler.peak()
        for filetype in ("zip", "tar.gz"):
            sampler.reset()
            received, seconds = await download(client, large, filetype)
            if received < size:
                raise SystemExit(f"the {filetype} archive has {received} bytes, fewer than its files' {size}")
            result[filetype], result[f"{filetype}_s"] = sampler.peak(), seconds
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="the large dataset's size (default 512)")
    parser.add_argument("--files", type=int, default=8, help="how many files it has (default 8)")
    parser.add_argument("--max-growth-mib", type=float, default=64.0,
                        help="fail when a peak exceeds the baseline by more than this (default 64)")
    args = parser.parse_args(argv)
    size = args.size_mib * MIB

    result = sampled_run(lambda url, sampler: measure(url, sampler, args.files, size))
    print(f"embedded server peak RSS, dataset of {args.files} files, {args.size_mib} MiB "
          "(sampled every 5 ms):")
    print(f"  baseline (1 KiB dataset as zip): {mib(int(result['baseline']))}")
    return report_peaks(result, ("zip", "tar.gz"), args.size_mib, args.max_growth_mib)


if __name__ == "__main__":
    sys.exit(main())
