"""Handlers for the daemon's tests: each mode is one behaviour a real handler can show."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from ufdl_node.api import JobContext, JobFailed, Needs, Parameter, RetryJob, TemplateDescription, handler

PARAMETERS = (
    Parameter("mode", ("String",), default="ok",
              help="ok, fail, crash, retry, hang, subprocess, stubborn, gated"),
    Parameter("seconds", ("Float",), default=0.0, help="how long the job runs (gated: at most)"),
    Parameter("size", ("Integer",), default=4096, help="bytes of the `result` output"),
    Parameter("marker_dir", ("String",), default="", help="where each run leaves a line"),
)


def expected_output(pk: int, size: int) -> bytes:
    """The bytes job `pk` uploads as `result`: tests recompute them to compare."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{pk}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _runs(ctx: JobContext) -> int:
    marker = Path(ctx.params["marker_dir"]) / f"{ctx.job['pk']}.runs"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


@handler("test_job", description=TemplateDescription(job_type="Export", parameters=PARAMETERS,
                                                    description="ufdl-node test job"))
async def run(ctx: JobContext) -> None:
    pk = int(ctx.job["pk"])
    mode, seconds = ctx.params["mode"], float(ctx.params["seconds"])
    if ctx.params["marker_dir"]:
        marker = Path(ctx.params["marker_dir"]) / f"{pk}.runs"
        with marker.open("a") as f:
            f.write(f"{os.getpid()} {time.time()}\n")
    ctx.log.info("test job running", mode=mode)
    if mode == "subprocess":
        pid_file = Path(ctx.params["marker_dir"]) / f"{pk}.pids"
        script = f"sleep 300 & echo $! > {pid_file}; echo $$ >> {pid_file}; wait"
        await ctx.run(["sh", "-c", script])
        return
    if mode == "stubborn":
        # A badly written handler: it swallows cancellation and carries on for `seconds`, or
        # until the test lets it end (the gate of mode "gated"), so that it does not outlive the test.
        gate, end = Path(ctx.params["marker_dir"]) / f"{pk}.go", time.monotonic() + seconds
        while time.monotonic() < end and not (ctx.params["marker_dir"] and gate.exists()):
            try:
                await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))
            except asyncio.CancelledError:
                ctx.log.warning("ignoring cancellation")
        return
    if mode == "gated":
        # Runs until the test lets it end (Jobs.release_gate: `<marker_dir>/<pk>.go`), `seconds`
        # at most: what a test checks while the job runs cannot lose a race with its end.
        gate, end = Path(ctx.params["marker_dir"]) / f"{pk}.go", time.monotonic() + seconds
        ctx.progress(0.1)
        while True:  # a file, not an event: the test runs in another process, or loop
            if gate.exists() or time.monotonic() >= end:
                break
            await asyncio.sleep(0.05)
        await ctx.upload("result", "bin", expected_output(pk, int(ctx.params["size"])))
        return
    if mode == "odd_progress":
        # Not JSON, and keys the real server reserves: the job must still finish.
        ctx.progress(0.5, when=object(), where=Path("/tmp"), node="n1", transition="x")
        # A job that succeeds at once sends no progress (its finish shows it done): wait for it.
        await asyncio.sleep(0.5)
    if mode == "disk_full":
        Path("/dev/full").write_bytes(b"model weights")  # ENOSPC, as on a full disk
    if mode == "flood":
        # 2000 progress reports in about a second: the handler must never wait on the network.
        began = time.monotonic()
        for i in range(1, 2001):
            ctx.progress(i / 2000, i=i)
            if i % 100 == 0:
                await asyncio.sleep(0.05)
        elapsed = time.monotonic() - began
        await ctx.upload("timing", "json", json.dumps({"elapsed_s": elapsed}).encode())
        return
    steps = 10
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds / steps)
        ctx.progress(step / steps, step=step)
        if mode == "hang" and step == steps // 2:
            await asyncio.Event().wait()
    if mode == "fail":
        raise JobFailed("the test asked this job to fail")
    if mode == "crash":
        raise ZeroDivisionError("division by zero in a test handler")
    if mode == "retry":
        raise RetryJob("a transient fault the test made up")
    if mode == "upload_then_retry" and _runs(ctx) == 1:
        await ctx.upload("result", "bin", expected_output(pk, int(ctx.params["size"])))
        raise RetryJob("uploaded, then a transient fault")
    print("handler stdout line", file=sys.stderr)
    await ctx.upload("result", "bin", expected_output(pk, int(ctx.params["size"])))


@handler("gpu_job", needs=Needs(gpu=True, min_gpu_mem_bytes=20 * 2**30, min_compute_capability=8.0),
         description=TemplateDescription(job_type="Export", description="needs a big, recent GPU"))
async def gpu_job(ctx: JobContext) -> None:
    # What a subprocess of this job sees of the GPUs, as the job's output.
    script = 'printf "%s %s" "$CUDA_VISIBLE_DEVICES" "$CUDA_DEVICE_ORDER" > seen.txt'
    await ctx.run(["sh", "-c", script], cwd=ctx.work_dir)
    await ctx.upload("seen", "text", "seen.txt")
