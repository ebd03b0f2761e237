"""What one ``ctx.progress()`` costs a handler, through the daemon's real job IO and pump.

A ``JobContext`` over the daemon's ``SlotJobIO`` and ``ProgressPump`` (no server:
the pump is not started, so nothing is sent; reporting is what a training loop
pays per call). Baselines from the same run: an empty function with the same
signature (the floor of a Python call with keyword data), and the check every
call made before (``json.dumps`` of the data).

    python bench/bench_progress.py [--calls 200000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

from _common import machine

from ufdl_node.api import JobContext
from ufdl_node.daemon.job import JobRecord, SlotJobIO
from ufdl_node.daemon.progress import ProgressPump
from ufdl_node.logs import get_logger


def floor(amount: float, **data: Any) -> None:
    """The least a call with keyword data costs."""


def old_progress(io: SlotJobIO, amount: float, **data: Any) -> None:
    """ctx.progress as it was: clamp with math, and json.dumps of the data on every call."""
    value = float(amount)
    value = 0.0 if math.isnan(value) else min(1.0, max(0.0, value))
    try:
        json.dumps(data)
    except (TypeError, ValueError):
        data = json.loads(json.dumps(data, default=str))
    io.report_progress(value, data)


async def measure(calls: int, repeats: int) -> dict[str, dict[str, float]]:
    async def send(_amount: float, _data: dict[str, Any]) -> None:
        return None

    pump = ProgressPump(send, 1.0)
    with tempfile.TemporaryDirectory(prefix="ufdl-bench-progress-") as tmp:
        io = SlotJobIO(pk=1, node_pk=1, client=None, reporter=None, pump=pump,  # type: ignore[arg-type]
                       log_path=Path(tmp) / "job.log", log=get_logger("bench"),
                       record=JobRecord(pk=1, template="bench"))
        ctx = JobContext.__new__(JobContext)  # only what progress() reads: the job IO
        ctx.io = io
        cases = {
            "no data": ((0.5,), {}),
            "two values": ((0.5,), {"loss": 0.25, "epoch": 3}),
        }
        results: dict[str, dict[str, float]] = {}
        for name, (args, kwargs) in cases.items():
            def best(func: Any, *prefix: Any, a: Any = args, k: Any = kwargs) -> float:
                timer = timeit.Timer(lambda: func(*prefix, *a, **k))
                return min(timer.repeat(repeats, calls)) / calls * 1e6

            results[name] = {"progress": best(ctx.progress), "floor": best(floor),
                             "old": best(old_progress, io)}
        io.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}; best of {args.repeats} x {args.calls} calls")
    for name, r in asyncio.run(measure(args.calls, args.repeats)).items():
        print(f"  {name:10s}: ctx.progress {r['progress']:5.2f} µs  (empty call {r['floor']:4.2f} µs, "
              f"ratio {r['progress'] / r['floor']:4.1f}; before this change {r['old']:5.2f} µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
