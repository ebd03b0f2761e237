"""The soak's handler: an output derived from the job pk, and a record of every invocation.

Each invocation appends ``start <pk> <pid> <time>`` to ``<record_dir>/<pk>.inv`` when it
begins and ``end <pk> <pid> <time>`` after its ``ctx.upload`` (``made`` after it, in mode
``early``), so that a test can count runs, find two runs of one job that overlapped in
time, and know when the handler's work is done. The daemon stages an output and sends it
once the handler has returned: ``end`` does not mean the output is on the server yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from pathlib import Path

from ufdl_node.api import JobContext, JobFailed, Parameter, TemplateDescription, handler

PARAMETERS = (
    Parameter("mode", ("String",), default="ok",
              help="ok, fail (meant to fail), env, early (the output first, then the wait), "
                   "die (SIGKILL the daemon after the wait) or block (a synchronous sleep)"),
    Parameter("seconds", ("Float",), default=0.0,
              help="how long the job runs (less once <record_dir>/<pk>.go exists)"),
    Parameter("record_dir", ("String",), default="", help="where each invocation is recorded"),
)
FAIL_REASON = "the soak asked this job to fail"


def soak_output(pk: int) -> bytes:
    """The bytes job `pk` uploads as result/bin: the tests recompute them."""
    return b"".join(hashlib.sha256(f"soak:{pk}:{i}".encode()).digest() for i in range(64))


def _record(ctx: JobContext, what: str) -> None:
    pk = int(ctx.job["pk"])
    with (Path(ctx.params["record_dir"]) / f"{pk}.inv").open("a") as f:
        f.write(f"{what} {pk} {os.getpid()} {time.time():.6f}\n")
        f.flush()
        os.fsync(f.fileno())  # the record must outlive a SIGKILL of the daemon right after


async def _wait(seconds: float, gate: Path) -> None:
    """`seconds`, or less once `gate` exists: a test holds a job with a long `seconds` while it
    checks the job running, and ends it by making the gate (SoakJobs.release_gate)."""
    end = time.monotonic() + seconds
    await asyncio.sleep(0)
    while True:  # a file, not an event: the test runs in another process
        left = end - time.monotonic()
        if left <= 0 or gate.exists():
            break
        await asyncio.sleep(min(0.05, left))


@handler("soak_job", description=TemplateDescription(job_type="Export", parameters=PARAMETERS,
                                                    description="ufdl-node soak job"))
async def run(ctx: JobContext) -> None:
    pk = int(ctx.job["pk"])
    _record(ctx, "start")
    try:
        if ctx.params["mode"] == "early":
            await ctx.upload("result", "bin", soak_output(pk))
            _record(ctx, "made")
        seconds = float(ctx.params["seconds"])
        if ctx.params["mode"] == "die":  # a poison job: it takes the daemon down with it
            await asyncio.sleep(seconds)
            os.kill(os.getpid(), signal.SIGKILL)
        if ctx.params["mode"] == "block":  # the mistake a loop-lag warning must name
            time.sleep(seconds)
            seconds = 0.0
        gate = Path(ctx.params["record_dir"]) / f"{pk}.go"
        for step in range(1, 5):
            await _wait(seconds / 4, gate)
            ctx.progress(step / 4)
        if ctx.params["mode"] == "fail":
            raise JobFailed(FAIL_REASON)
        if ctx.params["mode"] == "env":
            # what a job's subprocess finds of the daemon's password in its environment
            await ctx.run('printf "%s" "${UFDL_NODE_PASSWORD:-absent}" > env.txt')
            await ctx.upload("env", "text", "env.txt")
        if ctx.params["mode"] != "early":
            await ctx.upload("result", "bin", soak_output(pk))
    finally:
        _record(ctx, "end")  # after the upload: the work is on the server
