"""A plain script for the `command` handler's demo: no ufdl-node import, like an existing training script.

Prints "step N/M value=X" lines (the handler parses progress from them), writes a JSON report and a
few sample files into --out.
"""

import argparse
import json
import random
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()
    (args.out / "samples").mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.steps)
    values = []
    for step in range(1, args.steps + 1):
        time.sleep(args.seconds)
        value = round(rng.random(), 4)
        values.append(value)
        (args.out / "samples" / f"sample-{step}.txt").write_text(f"{value}\n")
        print(f"step {step}/{args.steps} value={value}", flush=True)
    report = {"steps": args.steps, "mean": sum(values) / len(values)}
    (args.out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
