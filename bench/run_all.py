"""Run every ``bench/bench_*.py`` with this interpreter, one after the other, and summarise.

    python bench/run_all.py [-k SUBSTRING]

Each benchmark prints its own figures; this prints which passed and how long
each took, and exits non-zero when any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run every bench/bench_*.py")
    parser.add_argument("-k", default="", help="only benchmarks whose file name contains this")
    args = parser.parse_args(argv)
    benches = sorted(p for p in HERE.glob("bench_*.py") if args.k in p.name)
    if not benches:
        print("no benchmarks found", file=sys.stderr)
        return 1
    results = []
    for bench in benches:
        print(f"== {bench.name}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(bench)], cwd=HERE.parent)
        results.append((bench.name, code, time.monotonic() - started))
    print("\n== summary")
    for name, code, seconds in results:
        print(f"  {'ok  ' if code == 0 else 'FAIL'} {name} ({seconds:.1f} s)")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
