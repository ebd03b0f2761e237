"""The chaos soak: an embedded server and three daemons through a few hundred jobs under faults.

Three daemon processes (own state directories and node addresses, two slots each) and an
embedded server process run ``soak_job`` jobs while the soak SIGKILLs and restarts
daemons, SIGTERMs them, SIGSTOPs one for longer than the ping interval, SIGKILLs and
restarts the server on the same data directory, and cancels jobs. Then it accounts for
every job the server has: FINISHED with the right output exactly once, ERRORED only
where the handler meant to fail, CANCELLED only where cancelled; no job held or STARTED,
no node with a stale ``current_job``; and no two invocations of one job that overlapped
in time. It prints the invocations per job.

``UFDL_SOAK_MINUTES`` (default 0.5: the short variant of the default run, every kind of fault
at least once; ``make soak`` runs 8 minutes) sets how long the chaos lasts,
``UFDL_SOAK_SEED`` (default 12) the seed of its choices. The server runs in real-server mode
(its quirks, and a job's outputs kept after a reset); ``UFDL_SOAK_QUIRKS=0`` leaves the quirks
out (outputs are kept all the same). See bench/README.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.client import UfdlClient
from ufdl_node.errors import RefusedError, ServerError
from ufdl_node.protocol import phase
from ufdl_node.registry import Registry

from ..conftest import wait_for
from ..daemon.conftest import ADMIN_PW, PYTHON, WORKER_PW, daemon_process_env, free_port, import_template
from .handlers.soakjobs import FAIL_REASON, soak_output

MINUTES = float(os.environ.get("UFDL_SOAK_MINUTES", "0.5"))
SEED = int(os.environ.get("UFDL_SOAK_SEED", "12"))
# The server in real-server mode (500 pages on illegal transitions, web socket refused, bare
# Node-Id) unless UFDL_SOAK_QUIRKS=0; its outputs are kept after a reset either way, as the real
# server keeps them.
QUIRKS = os.environ.get("UFDL_SOAK_QUIRKS", "1") == "1"
JOBS_PER_S = 3.0  # a few hundred jobs in the CI variant
FAIL_SHARE, LONG_SHARE = 0.08, 0.15
PING_INTERVAL_S = 1.0
SETTLE_S = 60.0  # after the chaos: how long every job may take to reach its end
HANDLERS = Path(__file__).parent / "handlers"

pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(int(MINUTES * 60 + 240))]


class Proc:
    """A child process (the server or a daemon) whose output goes to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name, self.argv, self.log_path, self.env = name, argv, log_path, env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0
        self.deaths: list[tuple[int, float]] = []  # (pid, when it was gone) for each kill
        self.surprises: list[str] = []  # exits nobody asked for, or with the wrong code

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._log_from = log.tell()
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def started(self) -> bool:
        """Whether this run of a daemon has begun its startup (its signal handlers are in place:
        before that, a SIGTERM ends the interpreter itself, as for any process still loading)."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_from)
            return b'"ufdl-node starting"' in log.read()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait(self, timeout_s: float) -> int | None:
        """The exit status, or None if still running after `timeout_s`."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self, sig: int, expect: int | None, timeout_s: float = 60.0) -> None:
        """Send `sig` and wait for the exit; an unexpected exit status is a surprise."""
        pid = self.pid
        self.proc.send_signal(sig)  # type: ignore[union-attr]
        code = await self.wait(timeout_s)
        if code is None:
            self.surprises.append(f"{self.name} (pid {pid}) did not exit {timeout_s:g} s after signal {sig}")
            self.proc.kill()  # type: ignore[union-attr]
            code = await self.wait(10)
        elif expect is not None and code != expect:
            self.surprises.append(f"{self.name} (pid {pid}) exited {code} after signal {sig}, not {expect}")
        self.deaths.append((pid, time.time()))

    def check_unasked_exit(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.surprises.append(f"{self.name} (pid {self.pid}) exited {self.proc.returncode} unasked")
            self.deaths.append((self.pid, time.time()))
            self.start()


@dataclass
class Soak:
    """The soak's world: the server, the daemons, an admin client and what was done to them."""

    tmp: Path
    port: int
    server: Proc
    daemons: list[Proc]
    admin: UfdlClient
    template_pk: int
    rng: random.Random
    cancelled: set[int] = field(default_factory=set)
    actions: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def record_dir(self) -> Path:
        return self.tmp / "records"


def _server_proc(tmp: Path, port: int) -> Proc:
    env = daemon_process_env(UFDL_NODE_SERVER_ADMIN=f"admin:{ADMIN_PW}",
                             UFDL_NODE_SERVER_WORKER=f"worker:{WORKER_PW}",
                             UFDL_NODE_SERVER_REAL_SERVER_QUIRKS="1" if QUIRKS else "0")
    argv = [PYTHON, "-m", "ufdl_node", "server", "--port", str(port), "--data-dir", str(tmp / "data")]
    return Proc("server", argv, tmp / "server.log", env)


def _daemon_proc(tmp: Path, port: int, n: int) -> Proc:
    home = tmp / f"node-{n}"
    home.mkdir()
    values: dict[str, Any] = {
        "server_url": f"http://127.0.0.1:{port}", "username": "worker", "password": WORKER_PW,
        "node_ip": f"127.0.1.{n + 1}", "gpu_indices": [0, 1], "state_dir": str(home / "state"),
        "cache_dir": str(home / "cache"), "handler_dirs": [str(HANDLERS)], "poll_interval_s": 0.3,
        "poll_jitter_s": 0.1, "poll_backoff_max_s": 1.0, "lifecycle_retry_max_s": 1.0,
        "progress_interval_s": 0.2,
        "cancel_check_interval_s": 0.5, "cancel_grace_s": 2.0, "grace_period_s": 5.0,
        "ping_interval_s": PING_INTERVAL_S, "retry_max_attempts": 3, "retry_max_delay_s": 0.5,
        "request_timeout_s": 5.0, "log_format": "json", "log_level": "info",
        # The soak's SIGKILLs are not the jobs' doing: none may end as a poison job.
        "max_crash_restarts": 1000,
    }
    config = home / "node.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    config.chmod(0o600)
    argv = [PYTHON, "-m", "ufdl_node", "run", "--config", str(config)]
    return Proc(f"daemon-{n}", argv, home / "daemon.log", daemon_process_env())


async def _listening(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not listen on {port} in {timeout_s} s") from None
            await asyncio.sleep(0.1)


async def _until_up(call: Any, timeout_s: float = 60.0) -> Any:
    """An admin call repeated through a server restart."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except ServerError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@pytest.fixture
async def soak(tmp_path: Path) -> AsyncIterator[Soak]:
    port = free_port()
    server = _server_proc(tmp_path, port)
    server.start()
    daemons: list[Proc] = []
    try:
        await _listening(port)
        url = f"http://127.0.0.1:{port}"
        async with UfdlClient(url, "admin", ADMIN_PW, retry_max_attempts=2, retry_max_delay_s=0.3) as admin:
            registry = Registry.load([HANDLERS], entry_points=False)
            template = await import_template(admin, registry, "soak_job")
            (tmp_path / "records").mkdir()
            daemons = [_daemon_proc(tmp_path, port, n) for n in range(3)]
            for daemon in daemons:
                daemon.start()
            yield Soak(tmp_path, port, server, daemons, admin, template, random.Random(SEED))
    finally:
        for proc in [*daemons, server]:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.proc.kill()  # type: ignore[union-attr]
                proc.proc.wait()  # type: ignore[union-attr]


# -- the load and the chaos -----------------------------------------------------------------


async def _feed(soak: Soak, until: float, created: list[int]) -> None:
    """Create jobs at JOBS_PER_S until `until`; a few are meant to fail."""
    rng = soak.rng
    next_at = time.monotonic()
    while time.monotonic() < until:
        mode = "fail" if rng.random() < FAIL_SHARE else "ok"
        params = {"mode": {"value": mode, "type": "str"},
                  "seconds": {"value": round(_seconds(rng), 3), "type": "float"},
                  "record_dir": {"value": str(soak.record_dir), "type": "str"}}
        try:  # not repeated on a fault: a lost reply may still have made the job (the server counts)
            job = await soak.admin.create_job(soak.template_pk, {}, params, description="soak")
            created.append(int(job["pk"]))
        except ServerError:
            pass
        # On a schedule, not a fixed sleep after each create: a loaded machine's slow creates
        # would lower the rate (it catches up at most a second's worth after a stall).
        next_at = max(next_at + 1 / JOBS_PER_S, time.monotonic() - 1.0)
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def _seconds(rng: random.Random) -> float:
    """Mostly short jobs; some long enough to be cancelled or killed mid-run."""
    return rng.uniform(1.5, 3.0) if rng.random() < LONG_SHARE else rng.uniform(0.05, 0.6)


async def _restart_later(soak: Soak, proc: Proc, sig: int, expect: int | None) -> None:
    await proc.stop(sig, expect)
    await asyncio.sleep(soak.rng.uniform(0.3, 1.5))
    proc.start()


async def _pause(soak: Soak, proc: Proc) -> None:
    """SIGSTOP for three ping intervals: the server hears nothing from the node meanwhile."""
    proc.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    await asyncio.sleep(PING_INTERVAL_S * 3)
    proc.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]


async def _restart_server(soak: Soak) -> None:
    await soak.server.stop(signal.SIGKILL, None)
    await asyncio.sleep(soak.rng.uniform(0.5, 2.0))
    soak.server.start()
    await _listening(soak.port)


async def _cancel(soak: Soak, created: list[int]) -> None:
    recent = created[-10:]  # some of them are running
    for pk in soak.rng.sample(recent, min(len(recent), soak.rng.randint(1, 3))):
        soak.cancelled.add(pk)  # before the call: a lost reply may still have cancelled it
        with contextlib.suppress(ServerError):
            await soak.admin.cancel(pk)


ACTIONS = {"kill daemon": 4, "term daemon": 3, "stop daemon": 2, "kill server": 1.5, "cancel": 3}


async def _chaos(soak: Soak, until: float, created: list[int]) -> None:
    """Every few seconds one fault, chosen by the seeded generator; each runs as its own task.

    Each kind of fault comes once first (in a seeded order), so that the short variant sees them all."""
    rng, busy, tasks = soak.rng, set[str](), set[asyncio.Task[None]]()
    first_round = rng.sample(list(ACTIONS), len(ACTIONS))

    def launch(name: str, coro: Any) -> None:
        busy.add(name)
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(lambda t: (busy.discard(name), tasks.discard(t)))

    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(1.5, 4.0))
        for proc in [soak.server, *soak.daemons]:
            if proc.name not in busy:
                proc.check_unasked_exit()
        action = first_round.pop(0) if first_round else \
            rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        count = soak.actions[action]
        idle = [d for d in soak.daemons if d.name not in busy and (action != "term daemon" or d.started())]
        if action == "cancel" and created:
            soak.actions[action] += 1
            await _cancel(soak, created)
        elif action == "kill server" and "server" not in busy:
            soak.actions[action] += 1
            launch("server", _restart_server(soak))
        elif action.endswith("daemon") and idle:
            daemon = rng.choice(idle)
            soak.actions[action] += 1
            if action == "stop daemon":
                launch(daemon.name, _pause(soak, daemon))
            else:
                sig, expect = (signal.SIGKILL, None) if action == "kill daemon" else (signal.SIGTERM, 0)
                launch(daemon.name, _restart_later(soak, daemon, sig, expect))
        if soak.actions[action] == count == 0:
            first_round.insert(0, action)  # not possible yet (nothing to cancel, ...): at the next turn
    await asyncio.gather(*tasks)


# -- the accounting -----------------------------------------------------------------------------


def _mode(job: dict[str, Any]) -> str:
    return str(((job.get("parameter_values") or {}).get("mode") or {}).get("value", "ok"))


def _settled(job: dict[str, Any], cancelled: set[int]) -> bool:
    """Whether `job` is where it may end: a hand-back passes through ERRORED, so that alone is not."""
    p = str(phase(job))
    if _was_cancelled(job, cancelled) or p == "FINISHED":
        return True
    return p == "ERRORED" and job.get("error_reason") == FAIL_REASON


def _was_cancelled(job: dict[str, Any], cancelled: set[int]) -> bool:
    """Cancelled by the soak: CANCELLED, or (never started) CREATED with the reason "Cancelled"."""
    return job["pk"] in cancelled and bool(job.get("is_cancelled") or job.get("error_reason") == "Cancelled")


async def _settle(soak: Soak) -> list[dict[str, Any]]:
    """Wait (bounded) until every job the server has is where it may end; the last list."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        jobs = await _until_up(lambda: soak.admin.list_jobs({"expressions": []}))
        if all(_settled(j, soak.cancelled) for j in jobs) or time.monotonic() > deadline:
            return jobs
        await asyncio.sleep(0.5)


@dataclass
class Invocation:
    pid: int
    start: float
    end: float | None = None


def _invocations(soak: Soak) -> dict[int, list[Invocation]]:
    """Each job's handler invocations; one its daemon's SIGKILL cut short ends at that death."""
    deaths = {pid: when for proc in soak.daemons for pid, when in proc.deaths}
    runs: dict[int, list[Invocation]] = collections.defaultdict(list)
    for path in soak.record_dir.glob("*.inv"):
        open_runs: dict[int, Invocation] = {}
        for line in path.read_text().splitlines():
            what, pk, pid, when = line.split()
            if what == "start":
                open_runs[int(pid)] = run = Invocation(int(pid), float(when))
                runs[int(pk)].append(run)
            elif int(pid) in open_runs:
                open_runs.pop(int(pid)).end = float(when)
        for pid, run in open_runs.items():
            run.end = deaths.get(pid)  # None: it never ended, its process never died
    return runs


def _overlaps(runs: list[Invocation]) -> list[str]:
    ordered = sorted(runs, key=lambda r: r.start)
    found = []
    for before, after in itertools.pairwise(ordered):
        if before.end is None or after.start < before.end:
            found.append(f"pid {before.pid} [{before.start:.3f}, {before.end}] and pid {after.pid} "
                         f"from {after.start:.3f}")
    return found


async def _account(soak: Soak, jobs: list[dict[str, Any]]) -> list[str]:
    """Every job where it must be, with its output exactly once; one line per problem."""
    problems: list[str] = []
    runs = _invocations(soak)
    for job in jobs:
        pk, p, mode = job["pk"], str(phase(job)), _mode(job)
        results = [o for o in job.get("outputs") or [] if o["name"] == "result"]
        if _was_cancelled(job, soak.cancelled):
            continue
        if p == "FINISHED" and mode == "ok":
            if len(results) != 1:
                problems.append(f"job {pk}: FINISHED with {len(results)} result outputs")
                continue
            try:
                data = await _until_up(lambda pk=pk: soak.admin.download_output(
                    pk, "result", "bin", soak.tmp / "result.bin"))
            except RefusedError as e:
                problems.append(f"job {pk}: FINISHED, but its output cannot be read: {e}")
                continue
            if data.read_bytes() != soak_output(pk):
                problems.append(f"job {pk}: FINISHED with the wrong output")
        elif not (p == "ERRORED" and mode == "fail" and job.get("error_reason") == FAIL_REASON):
            problems.append(f"job {pk}: {p} ({mode}), error {job.get('error_reason')!r}, node {job['node']}")
        if not runs.get(pk) and p in ("FINISHED", "ERRORED"):
            problems.append(f"job {pk}: {p} without a handler invocation")
    for pk, job_runs in sorted(runs.items()):
        problems += [f"job {pk}: invocations overlap: {o}" for o in _overlaps(job_runs)]
    held = [j["pk"] for j in jobs if str(phase(j)) in ("CREATED", "STARTED") and j["node"] is not None
            and not j.get("is_cancelled")]
    problems += [f"job {pk}: still held or STARTED with every daemon stopped" for pk in held]
    nodes = await _until_up(lambda: soak.admin.list_nodes({"expressions": []}))
    problems += [f"node {n['pk']} ({n['ip']}/{n['index']}): stale current_job {n['current_job']}"
                 for n in nodes if n.get("current_job") is not None]
    for proc in [soak.server, *soak.daemons]:
        problems += proc.surprises + _log_problems(proc)
    _report(soak, jobs, runs)
    return problems


def _log_problems(proc: Proc) -> list[str]:
    """Errors and tracebacks in a process's log: a fault must be handled, not crash a task."""
    found = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if '"level": "error"' in line or '"level": "critical"' in line or "Traceback" in line:
            found.append(f"{proc.name} logged: {line[:300]}")
    return found[:20]


def _report(soak: Soak, jobs: list[dict[str, Any]], runs: dict[int, list[Invocation]]) -> None:
    phases = collections.Counter(str(phase(j)) for j in jobs)
    per_job = collections.Counter(len(runs.get(j["pk"], [])) for j in jobs)
    print(f"\nsoak: {MINUTES:g} min, seed {SEED}, {len(jobs)} jobs: {dict(phases)}")
    print(f"soak: chaos: {dict(soak.actions)}; cancelled {len(soak.cancelled)}")
    print(f"soak: handler invocations per job (invocations: jobs): {dict(sorted(per_job.items()))}")
    again = {pk: len(r) for pk, r in sorted(runs.items()) if len(r) > 1}
    shown = dict(itertools.islice(again.items(), 40))
    more = f" and {len(again) - len(shown)} more" if len(again) > len(shown) else ""
    print(f"soak: jobs run more than once (pk: invocations): {shown}{more}")


async def test_chaos_soak_loses_no_job_and_never_runs_one_twice_at_once(soak: Soak):
    """Kills, restarts, pauses, a server crash and cancels: every job accounted for, no overlapping runs."""
    until = time.monotonic() + MINUTES * 60
    created: list[int] = []
    await asyncio.gather(_feed(soak, until, created), _chaos(soak, until, created))
    for proc in soak.daemons:
        proc.check_unasked_exit()
    jobs = await _settle(soak)
    for proc in soak.daemons:
        await wait_for(proc.started, timeout_s=60, what=f"{proc.name} to start")
        await proc.stop(signal.SIGTERM, 0)
    jobs = await _until_up(lambda: soak.admin.list_jobs({"expressions": []}))
    problems = await _account(soak, jobs)
    # A floor that says the feed ran, not a rate: with server restarts on a loaded machine (load
    # 10, beside a parallel test run) the short variant once made 34 jobs where 45 were asked.
    assert len(jobs) >= JOBS_PER_S * MINUTES * 60 * 0.25, f"only {len(jobs)} jobs were made"
    assert not problems, "\n".join(problems)
