"""A dataset fetched file by file by the node against ``curl`` of the same files.

The embedded server runs as a separate process; a dataset of ``--files``
random (incompressible, as images are) files of ``--size-mib`` in all is
written straight into its data directory before it starts. Then, turn about,
each fetcher gets every file with ``GET /v1/datasets/{pk}/files/{name}``:

- curl, one by one: one ``curl`` process, the URLs in a config file (one
  connection, kept alive), each file written to disk;
- curl, 4 in parallel: ``xargs -P4`` runs 4 ``curl`` processes, a quarter of
  the URLs each;
- node: ``fetch_dataset`` (what ``ctx.dataset()`` runs: the record, then the
  files into a fresh content-addressed cache, 4 in flight, verified, linked into
  the job's directory) in a child Python process, which reports the wall time
  and CPU seconds of the fetch itself.

Printed: medians of wall time, the fetcher's CPU and the server's CPU for
each, and the node's ratios to both curl runs. A cold fetch each time: the
node's cache starts empty; the server's files are in the page cache for all.
Each run starts after an ``os.sync()``: the node syncs the file system before
its files get their cache names, which would otherwise also write out the
dirty pages the run before it left.

    python bench/bench_dataset_fetch.py [--files 5000] [--size-mib 1024] [--repeats 2]
    python bench/bench_dataset_fetch.py --quick     # 500 files, 64 MiB
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
from _common import ADMIN, child_usage, machine, median, server_process, token

from ufdl_node.transport import Transport
from ufdl_node.work.datasets import fetch_dataset
from ufdl_node.work.server_access import ServerAccess

MIB = 2**20


def fill_dataset(data_dir: Path, files: int, size: int) -> int:
    """A dataset of `files` distinct random files of `size` bytes in all, straight into
    the server's database and data directory (the server starts on it afterwards)."""
    from ufdl_node.server import records_store as rs  # here: the fetching child needs no server code
    from ufdl_node.server.store import Store, now

    store = Store(data_dir)
    try:
        pk = rs.create_dataset(store, {"name": "bench", "version": 1, "previous_version": -1,
                                       "description": "", "project": None, "licence": None,
                                       "is_public": 1, "domain": "", "tags": "", "creator": None})
        directory = rs.datasets_dir(store)
        directory.mkdir(parents=True, exist_ok=True)
        each = size // files
        stamp = now()
        rows = []
        for i in range(files):  # each file written once, under a temporary name until its row is made
            blob = os.urandom(each)
            (directory / f"bench-{i}").write_bytes(blob)
            rows.append((pk, f"img-{i:05d}.jpg", hashlib.sha256(blob).hexdigest(), len(blob), stamp))
        with store.transaction() as db:
            db.executemany("INSERT INTO dataset_files (dataset, name, sha256, size, creation_time) "
                           "VALUES (?, ?, ?, ?, ?)", rows)
        for row in rs.dataset_files(store, pk):
            (directory / f"bench-{int(row['name'][4:9])}").rename(rs.file_path(store, row["pk"]))
        return pk
    finally:
        store.close()


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a process to completion: (wall s, CPU s of it and its children, stdout)."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} exited with {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_utime + usage.ru_stime, out


def curl_configs(url: str, pk: int, names: list[str], out: Path, scratch: Path, parts: int) -> list[Path]:
    """`parts` curl config files, the URLs of `names` dealt out among them, each to a file in `out`."""
    configs = []
    for part in range(parts):
        lines = [f'url = "{url}/v1/datasets/{pk}/files/{name}"\noutput = "{out / name}"\n'
                 for name in names[part::parts]]
        config = scratch / f"curl-{parts}-{part}.cfg"
        config.write_text("".join(lines))
        configs.append(config)
    return configs


def curl_parallel(configs: list[Path], headers: Path, out: Path) -> dict[str, float]:
    """``xargs -P4 curl``: wall time, and the CPU of xargs and every curl it reaped."""
    out.mkdir()
    listing = out.parent / "curl-list"
    listing.write_text("\n".join(map(str, configs)) + "\n")
    wall, cpu, _ = run_measured(["sh", "-c", f'exec xargs -P{len(configs)} -n1 curl -sS -f -H "@{headers}" '
                                             f'-K < "{listing}"'])
    keep_aside(out)
    return {"wall": wall, "cpu": cpu}


def curl_serial(config: Path, headers: Path, out: Path) -> dict[str, float]:
    out.mkdir()
    wall, cpu, _ = run_measured(["curl", "-sS", "-f", "-H", f"@{headers}", "-K", str(config)])
    keep_aside(out)
    return {"wall": wall, "cpu": cpu}


DELETE_AT_ONCE = False  # --dir: each run's files deleted right after it


def hash_cost(data_dir: Path) -> dict[str, float]:
    """The CPU of hashlib's sha256 over the dataset's bytes (read from the page cache first)."""
    from ufdl_node.server.records_store import DATASETS_DIR

    datas = [p.read_bytes() for p in (data_dir / DATASETS_DIR).iterdir() if p.is_file()]
    began = time.process_time()
    for data in datas:
        hashlib.sha256(data).hexdigest()
    return {"cpu": time.process_time() - began, "bytes": float(sum(map(len, datas)))}


def keep_aside(path: Path) -> None:
    """Move a run's files out of the next run's way, deleted only at the end (main): ext4 without
    a journal (this machine's root) gives a file created just after thousands were deleted a slow
    inode search, which would land on whichever fetcher runs next (see README). With --dir (a
    memory file system such as /dev/shm) they are deleted at once instead: kept, each run would
    write into memory the machine had not used yet, which costs every later run more (on this
    virtual machine, 2x the CPU of the first run's same fetch), whoever it is."""
    if path.exists():
        if DELETE_AT_ONCE:
            shutil.rmtree(path)
            return
        path.rename(path.with_name(f"{path.name}-done-{time.monotonic_ns()}"))


def node_run(url: str, pk: int, scratch: Path) -> dict[str, float]:
    env = dict(os.environ, BENCH_UFDL_PASSWORD=ADMIN[1])
    wall, cpu, out = run_measured([sys.executable, __file__, "--child", url, str(pk), str(scratch)], env=env)
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    keep_aside(scratch / "job")
    keep_aside(scratch / "cache")
    return {**figures, "process_wall": wall, "process_cpu": cpu}


async def child(url: str, pk: int, scratch: Path) -> dict[str, Any]:
    """In the child: log in, then fetch the dataset; time only the fetch."""
    # the daemon's own way to the server: the transport's NodeIO (it logs in and refreshes tokens)
    async with Transport(url, ADMIN[0], os.environ["BENCH_UFDL_PASSWORD"]) as transport:
        await transport.login()
        access = ServerAccess(transport.node_io(), retry_s=60.0)
        cpu0, loop0, began = child_usage()[0], time.thread_time(), time.perf_counter()
        dataset = await fetch_dataset(access, pk, dest=scratch / "job", cache_dir=scratch / "cache",
                                      parallel=4)
        figures = {"wall": time.perf_counter() - began, "cpu": child_usage()[0] - cpu0,
                   "loop": time.thread_time() - loop0}
    if dataset.downloaded != len(dataset.files):
        raise SystemExit(f"the node downloaded {dataset.downloaded} of {len(dataset.files)} files")
    return figures


def measure(args: argparse.Namespace, scratch: Path) -> dict[str, list[dict[str, float]]]:
    data_dir = scratch / "server"
    data_dir.mkdir()
    pk = fill_dataset(data_dir, args.files, args.size_mib * MIB)
    results: dict[str, list[dict[str, float]]] = {"curl": [], "curl -P4": [], "node": []}
    with server_process(data_dir) as server:
        headers = scratch / "curl-headers"  # the token stays out of the process list

        def fresh_token() -> None:  # an access token lives 5 minutes: a new one for each run
            headers.write_text(f"Authorization: Bearer {asyncio.run(_token(server.url))}\n")

        names = [f"img-{i:05d}.jpg" for i in range(args.files)]
        out = scratch / "curl-out"
        serial = curl_configs(server.url, pk, names, out, scratch, 1)[0]
        parallel = curl_configs(server.url, pk, names, out, scratch, 4)
        runs = {"curl": lambda: curl_serial(serial, headers, out),
                "curl -P4": lambda: curl_parallel(parallel, headers, out),
                "node": lambda: node_run(server.url, pk, scratch)}
        results["sha256"] = [hash_cost(data_dir)]  # what the node checks and curl does not
        for _ in range(args.repeats):
            for who, run in runs.items():
                fresh_token()
                os.sync()  # the last run's dirty pages written: the node's syncfs would flush them too
                cpu0 = server.cpu_s()
                figures = run()
                results[who].append({**figures, "server": server.cpu_s() - cpu0})
    return results


async def _token(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        return await token(session, url)


def report(args: argparse.Namespace, results: dict[str, list[dict[str, float]]]) -> None:
    print(f"machine: {machine()}; load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"cold fetch of {args.files} files, {args.size_mib} MiB, from the embedded server on loopback, "
          f"into {args.dir or tempfile.gettempdir()}, median of {args.repeats}:")
    figures = {who: {k: median([r[k] for r in runs]) for k in ("wall", "cpu", "server")}
               for who, runs in results.items() if who != "sha256"}
    loop = median([r["loop"] for r in results["node"]])
    for who, f in figures.items():
        each = ", ".join(f"{r['wall']:.1f}/{r['cpu']:.1f}" for r in results[who])
        print(f"  {who:8s}: wall {f['wall']:6.2f} s  {args.size_mib / f['wall']:7.1f} MiB/s  "
              f"fetcher CPU {f['cpu']:6.2f} s  server CPU {f['server']:6.2f} s  (wall/CPU of each: {each})")
    node = figures["node"]
    for base in ("curl", "curl -P4"):
        b = figures[base]
        print(f"  node / {base:8s}: wall {node['wall'] / b['wall']:.2f}, "
              f"fetcher CPU {node['cpu'] / b['cpu']:.2f}, server CPU {node['server'] / b['server']:.2f}")
    hashed = results["sha256"][0]
    unverified = node["cpu"] - hashed["cpu"]
    print(f"  the sha256 the node checks (curl checks nothing): {hashed['cpu']:.2f} s of CPU for "
          f"{hashed['bytes'] / MIB:.0f} MiB here; the node's CPU without it / curl's: "
          f"{unverified / figures['curl']['cpu']:.2f}, / curl -P4's: "
          f"{unverified / figures['curl -P4']['cpu']:.2f}")
    process = median([r["process_cpu"] for r in results["node"]])
    print(f"  (the node's CPU on its event loop: {loop:.2f} s, in threads: {node['cpu'] - loop:.2f} s; "
          f"its child process in all, start-up and login included: {process:.2f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000, help="files in the dataset (default 5000)")
    parser.add_argument("--size-mib", type=int, default=1024, help="the dataset's size (default 1024)")
    parser.add_argument("--repeats", type=int, default=2, help="fetches per fetcher (default 2)")
    parser.add_argument("--quick", action="store_true", help="500 files, 64 MiB, one fetch each")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the server's files and every fetcher's output go (default: the "
                             "system's temporary directory; e.g. /dev/shm to leave the disk's cost "
                             "of making files out)")
    parser.add_argument("--child", nargs=3, metavar=("URL", "PK", "SCRATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        url, pk, where = args.child
        print(json.dumps(asyncio.run(child(url, int(pk), Path(where)))))
        return 0
    if args.quick:
        args.files, args.size_mib, args.repeats = 500, 64, 1
    if shutil.which("curl") is None or shutil.which("xargs") is None:
        raise SystemExit("curl and xargs are needed (apt-get install curl findutils)")
    global DELETE_AT_ONCE
    DELETE_AT_ONCE = args.dir is not None
    scratch = Path(tempfile.mkdtemp(prefix="ufdl-bench-fetch-", dir=args.dir))
    try:
        results = measure(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
