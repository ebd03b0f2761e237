"""What the operator's commands do on the server: `nodes`, `unregister`, `cancel`, `logs`, `outputs`.

Each is a coroutine of the settings the daemon uses (server_url, username, password),
so that ``ufdl-node nodes --config /etc/ufdl-node/config.toml`` sees what the daemon
sees; server faults become one line and an exit code in ``ops`` (``server_errors``).
Output is plain lines (one per node, output, log line), JSON with ``--json``.

A name the server gives an output never becomes a path outside ``--dir``
(:func:`output_file_name`).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..client import UfdlClient
from ..errors import ConfigError, ExitCode, NotFound, RefusedError
from ..hardware import node_ip
from ..logs import configure_logging, one_line
from ..protocol import Phase, display_phase
from ..settings import NodeSettings
from .terminal import CommandFailed

FINAL = (Phase.FINISHED, Phase.ERRORED, Phase.CANCELLED)
FOLLOW_POLL_S = 1.0
UNREGISTERED_REASON = "node unregistered: `ufdl-node unregister` ran on its host"
GIB = 1024**3


def _client(settings: NodeSettings) -> UfdlClient:
    return UfdlClient(settings.server_url, settings.username, settings.resolved_password(),
                      request_timeout_s=min(settings.request_timeout_s, 30), retry_max_attempts=3)


def host_ip(settings: NodeSettings) -> str:
    """The ip this host's nodes are registered under (as the daemon finds it)."""
    return settings.node_ip or node_ip()


async def host_nodes(client: UfdlClient, ip: str) -> list[dict[str, Any]]:
    """The server's node records of `ip`, by GPU index."""
    found = await client.list_nodes({"expressions": [{"type": "exact", "field": "ip", "value": ip}]})
    return sorted((n for n in found if n.get("ip") == ip), key=lambda n: int(n.get("index") or 0))


async def get_job(client: UfdlClient, pk: int) -> dict[str, Any]:
    """Job `pk`, or CommandFailed "no such job" (exit 1)."""
    try:
        return await client.get_job(pk)
    except NotFound:
        raise CommandFailed(f"no job {pk} on {client.base_url}", ExitCode.FAILURE) from None


# -- nodes -----------------------------------------------------------------------------------


def _age(last_seen: Any) -> float | None:
    if not isinstance(last_seen, str):
        return None
    try:
        seen = datetime.fromisoformat(last_seen.replace("Z", "+00:00"))
    except ValueError:
        return None
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=timezone.utc)
    return max(0.0, time.time() - seen.timestamp())


def node_row(node: dict[str, Any], generations: dict[int, str], offline_after_s: float) -> dict[str, Any]:
    """A node record with what a person reads: its GPU and its state."""
    gpu_mem, generation = node.get("gpu_mem"), node.get("hardware_generation")
    if gpu_mem:
        name = generations.get(generation, "GPU") if isinstance(generation, int) else "GPU"
        gpu = f"{name} {gpu_mem / GIB:.0f} GiB"
    else:
        gpu = "none (CPU only)"
    age = _age(node.get("last_seen"))
    if node.get("current_job") is not None:
        state = f"working on job {node['current_job']}"
    elif age is None or age > offline_after_s:
        state = "offline"
    else:
        state = "idle"
    return {**node, "gpu": gpu, "state": state, "last_seen_s": None if age is None else round(age)}


def paused_here(settings: NodeSettings) -> set[int]:
    """The nodes of a daemon of this host that runs paused (from its status snapshot)."""
    from ..daemon.status import read_snapshot, snapshot_path
    from .usertools import SYSTEMD_STATE_DIR, _pid_alive

    for state_dir in dict.fromkeys([settings.state_dir, SYSTEMD_STATE_DIR]):
        data = read_snapshot(snapshot_path(state_dir))
        if data and data.get("running") and data.get("paused") and _pid_alive(data.get("pid")):
            return {int(slot["node"]) for slot in data.get("slots") or []
                    if isinstance(slot, dict) and isinstance(slot.get("node"), int)}
    return set()


async def list_nodes(settings: NodeSettings, *, as_json: bool) -> ExitCode:
    """Print this host's nodes on the server: pk, GPU index, GPU, state, current job."""
    configure_logging("error", "console")
    ip = host_ip(settings)
    async with _client(settings) as client:
        nodes = await host_nodes(client, ip)
        generations = {int(r["pk"]): str(r.get("generation")) for r in await client.hardware_generations()
                       if isinstance(r.get("pk"), int)}
    offline_after_s = max(3 * settings.ping_interval_s, 60.0)
    rows = [node_row(n, generations, offline_after_s) for n in nodes]
    paused = await asyncio.to_thread(paused_here, settings)
    for row in rows:
        row["paused"] = row["pk"] in paused
        row["state"] += " (paused: takes no new job)" if row["paused"] else ""
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return ExitCode.OK
    if not rows:
        print(f"no nodes of this host (ip {ip}) on {settings.server_url}")
        return ExitCode.OK
    for row in rows:
        seen = "never" if row["last_seen_s"] is None else f"{row['last_seen_s']} s ago"
        print(f"node {row['pk']}  ip {row['ip']}  index {row['index']}  gpu {row['gpu']}  "
              f"state {row['state']}  last seen {seen}")
    return ExitCode.OK


# -- unregister ------------------------------------------------------------------------------


async def _held_jobs(client: UfdlClient, node_pk: int) -> list[dict[str, Any]]:
    spec = {"expressions": [{"type": "exact", "field": "node", "value": node_pk}]}
    # Not the ERRORED ones: an errored job keeps its node for good, and is no work held.
    return [job for job in await client.list_jobs(spec) if display_phase(job) not in FINAL]


async def _hand_back(client: UfdlClient, node: dict[str, Any]) -> list[int]:
    """Hand back every job `node` holds (a started one ends ERRORED, is reset and released,
    as after a crash); the pks handed back."""
    pk = int(node["pk"])
    handed: list[int] = []
    current = node.get("current_job")
    jobs = {int(job["pk"]): job for job in await _held_jobs(client, pk)}
    if isinstance(current, int) and current not in jobs:
        try:  # a job taken away (aborted) still owes its finish: that frees the node
            await client.finish(current, pk, error=UNREGISTERED_REASON)
        except RefusedError:
            pass
    for job_pk, job in jobs.items():
        phase = display_phase(job)
        if phase is Phase.STARTED or job_pk == current:
            await client.finish(job_pk, pk, error=UNREGISTERED_REASON)
            phase = Phase.ERRORED
        if phase is Phase.ERRORED:
            await client.reset(job_pk, pk)
        await client.release(job_pk, pk)
        handed.append(job_pk)
    return handed


async def _remove(client: UfdlClient, pk: int) -> bool:
    """DELETE the node; True when it is gone (the real server keeps one that jobs refer to)."""
    try:
        await client.delete_node(pk)
        await client.get_node(pk)
    except NotFound:
        return True
    return False


async def unregister(settings: NodeSettings) -> ExitCode:
    """Hand back what this host's nodes hold, then delete their records (where the server lets)."""
    from ..daemon.identity import NodeLock

    configure_logging("error", "console")
    ip = host_ip(settings)
    async with _client(settings) as client:
        nodes = await host_nodes(client, ip)
        if not nodes:
            print(f"no nodes of this host (ip {ip}) on {settings.server_url}: nothing to do")
            return ExitCode.OK
        lock = NodeLock(settings.server_url, ip, [int(n["index"]) for n in nodes], settings.state_dir)
        try:
            lock.acquire()
        except ConfigError as e:
            raise CommandFailed(f"a daemon runs these nodes, stop it first (systemctl stop ufdl-node): "
                                f"{one_line(e, 300)}", ExitCode.FAILURE) from None
        try:
            for node in nodes:
                handed = await _hand_back(client, node)
                back = f"handed back job(s) {', '.join(map(str, handed))}; " if handed else ""
                if await _remove(client, int(node["pk"])):
                    print(f"node {node['pk']} (index {node['index']}): {back}removed")
                else:
                    print(f"node {node['pk']} (index {node['index']}): {back}kept by the server, which "
                          "keeps a node that jobs refer to; it holds no work now")
        finally:
            lock.release()
    return ExitCode.OK


# -- cancel ----------------------------------------------------------------------------------


async def cancel(settings: NodeSettings, pk: int) -> ExitCode:
    """Cancel job `pk` (the real server lets only an admin); a job that ended stays as it is."""
    configure_logging("error", "console")
    async with _client(settings) as client:
        job = await get_job(client, pk)
        phase = display_phase(job)
        if phase in FINAL:
            print(f"job {pk} has ended ({phase}): left as it is")
            return ExitCode.OK
        await client.cancel(pk)
        job = await get_job(client, pk)
    node = job.get("node")
    held = f"; node {node} stops it" if node is not None and phase is Phase.STARTED else ""
    print(f"job {pk} cancelled (it was {phase}{held})")
    return ExitCode.OK


async def _live_outputs(client: UfdlClient, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's outputs, less those a reset soft-deleted (the real server still lists them)."""
    live = []
    for out in job.get("outputs") or []:
        info = await client.output_info(int(job["pk"]), str(out.get("name")), str(out.get("type")))
        if info is not None and info.get("deletion_time") is None:
            live.append(out)
    return live


# -- logs ------------------------------------------------------------------------------------


def local_log(settings: NodeSettings, pk: int) -> Path | None:
    """The log this host's daemon writes while it runs job `pk` (in work_dir, or in the systemd
    unit's state directory), where this user can read it; None when there is none."""
    from .usertools import SYSTEMD_STATE_DIR

    for root in dict.fromkeys([settings.job_work_root, SYSTEMD_STATE_DIR / "work"]):
        path = root / f"job-{pk}" / "job.log"
        try:
            if path.is_file() and os.access(path, os.R_OK):
                return path
        except OSError:  # a work directory this user may not look into
            continue
    return None


async def _server_log(client: UfdlClient, job: dict[str, Any]) -> list[str] | None:
    """The lines of the job's `log` output, or None when it has none (yet)."""
    from ..daemon.logoutput import LOG_NAME, log_lines

    if not any(o.get("name") == LOG_NAME for o in job.get("outputs") or []):
        return None
    out = next((o for o in await _live_outputs(client, job) if o.get("name") == LOG_NAME), None)
    if out is None:
        return None
    with tempfile.TemporaryDirectory(prefix="ufdl-node-log-") as tmp:
        path = await client.download_output(int(job["pk"]), LOG_NAME, str(out["type"]), Path(tmp) / "log")
        content = await asyncio.to_thread(path.read_bytes)
    try:
        return log_lines(content)
    except ValueError:
        return content.decode("utf-8", errors="replace").splitlines()


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)


async def _tail(client: UfdlClient, pk: int, path: Path, follow: bool) -> None:
    """Print the local job log; with `follow`, what is added until the job ends."""
    offset = 0
    while True:
        data, offset = await asyncio.to_thread(_read_from, path, offset)
        if data:
            print(data.decode("utf-8", errors="replace"), end="", flush=True)
        if not follow or display_phase(await get_job(client, pk)) in FINAL:
            data, offset = await asyncio.to_thread(_read_from, path, offset)
            print(data.decode("utf-8", errors="replace"), end="", flush=True)
            return
        await asyncio.sleep(FOLLOW_POLL_S)


async def show_log(settings: NodeSettings, pk: int, *, follow: bool) -> ExitCode:
    """Print job `pk`'s log: the local one while this host runs it, else the server's `log` output."""
    configure_logging("error", "console")
    async with _client(settings) as client:
        job = await get_job(client, pk)
        while True:
            phase = display_phase(job)
            path = await asyncio.to_thread(local_log, settings, pk) if phase not in FINAL else None
            if path is not None:
                await _tail(client, pk, path, follow)
                return ExitCode.OK
            lines = await _server_log(client, job)
            if lines is not None:
                for line in lines:
                    print(line)
                return ExitCode.OK
            if not follow or phase in FINAL:
                hint = "" if phase in FINAL else "; --follow waits for it"
                raise CommandFailed(f"job {pk} has no log on the server ({phase}, and it does not run "
                                    f"on this host{hint})", ExitCode.FAILURE)
            await asyncio.sleep(FOLLOW_POLL_S)
            job = await get_job(client, pk)


# -- outputs ---------------------------------------------------------------------------------


def output_file_name(name: str, fallback: str) -> str:
    """`name` when it is one plain file name, else `fallback`: never a path out of the directory."""
    bad = (not name or name in (".", "..") or any(c in name for c in "/\\\0")
           or any(ord(c) < 32 for c in name) or len(name.encode()) > 255)
    return fallback if bad else name


async def show_outputs(settings: NodeSettings, pk: int, directory: Path | None) -> ExitCode:
    """List job `pk`'s outputs, or download them into `directory` (one file per output)."""
    configure_logging("error", "console")
    async with _client(settings) as client:
        outputs = await _live_outputs(client, await get_job(client, pk))
        if directory is None:
            for out in outputs:
                print(f"{out.get('name')}\t{out.get('type')}")
            if not outputs:
                print(f"job {pk} has no outputs")
            return ExitCode.OK
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        used: set[str] = set()
        for out in outputs:
            name, type_ = str(out.get("name")), str(out.get("type"))
            file_name = output_file_name(name, f"output-{out.get('pk')}")
            if file_name in used:
                file_name = f"{file_name}.{out.get('pk')}"
            used.add(file_name)
            path = await client.download_output(pk, name, type_, directory / file_name)
            print(f"{path}\t{type_}" + ("" if file_name == name else f"\t(output {one_line(name, 80)!r})"))
    return ExitCode.OK
