"""A week of traffic in one replay on this machine: `replay --cells 2 --records none` (a script,
not a test; prints figures).

Synthesises a week of diurnal traffic (peak 3x the trough at 14:00; 5 tenants, 3 tiers,
conversations of 1 to 4 turns; 100 million requests by default, at --rate requests/s on
average, by default --requests over 7 days), replays it on a fixed fleet (--replicas: enough
for that rate's peak) with --cells 2 --records none, and prints the wall time, simulated
requests per wall-second and the peak RSS of the replay's own process and of the largest cell
process (target: every process under 2 GB). First, on a trace of the same kind and rate of
10 million requests (--slice: the week's first hours), --cells 1 against --cells 2: the
speed-up (target >= 1.8x on 2 cores). Each replay is its own process.

    python scripts/bench_week.py [--requests 100000000] [--slice 10000000] [--replicas 40]
                                 [--rate R]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = """
import resource, sys
from pathlib import Path
from tokenfleet.cli.main import cli
try:
    cli(sys.argv[1:], standalone_mode=False)
finally:
    own = next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines()
               if l.startswith("VmHWM:"))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"RSS {own} {kids}", file=sys.stderr)
"""


def replay(trace: Path, out: Path, replicas: int, cells: int) -> dict:
    """One replay in its own process: wall seconds, its peak RSS and its largest child's."""
    command = [sys.executable, "-c", MEASURE, "replay", str(trace), "--out", str(out)]
    command += ["--replicas", str(replicas), "--cells", str(cells), "--records", "none", "-q"]
    command += ["--no-prefix-caching"]
    start = time.perf_counter()
    done = subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)  # fmt: skip
    wall = time.perf_counter() - start
    own, kids = (int(x) for x in done.stderr.strip().splitlines()[-1].split()[1:])
    return {"wall_s": wall, "rss": own, "child_rss": kids}


def synth(path: Path, requests: int, rate: float) -> float:
    """A trace of `requests` requests at `rate` a second on average; the seconds it took."""
    sessions_per_s = rate / 2.5  # uniform 1..4 turns: 2.5 a session
    command = [sys.executable, "-m", "tokenfleet", "traces", "synth", str(path)]
    command += ["--requests", str(requests), "--arrivals", "diurnal", "--peak-trough", "3"]
    command += ["--rate", f"{sessions_per_s:.6g}", "--turns", "uniform:1,4", "--tenants", "5"]
    command += ["--tiers", "fast=0.2,standard=0.6,batch=0.2", "--seed", "1", "-q"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def show(label: str, requests: int, r: dict) -> None:
    print(f"{label:<34} {r['wall_s']:8.1f} s wall, {requests / r['wall_s']:>9,.0f} req/s; "
          f"peak RSS {r['rss'] / 1e9:.2f} GB (replay), {r['child_rss'] / 1e9:.2f} GB "
          f"(largest cell process)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000_000)
    parser.add_argument("--slice", type=int, default=10_000_000)
    parser.add_argument("--replicas", type=int, default=40)
    parser.add_argument("--rate", type=float, help="requests/s (default: --requests over 7 days)")
    args = parser.parse_args()
    rate = args.rate or args.requests / (7 * 86400)
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        small = tmp / "slice.parquet"
        print(f"synth {args.slice:,} requests: {synth(small, args.slice, rate):.1f} s")
        one = replay(small, tmp / "one", args.replicas, 1)
        two = replay(small, tmp / "two", args.replicas, 2)
        show("slice, --cells 1", args.slice, one)
        show("slice, --cells 2", args.slice, two)
        print(f"speed-up of --cells 2 over --cells 1: {one['wall_s'] / two['wall_s']:.2f}x "
              "(target >= 1.8x on 2 cores)")  # fmt: skip
        small.unlink()
        week = tmp / "week.parquet"
        took = synth(week, args.requests, rate)
        days = args.requests / rate / 86400
        print(f"synth {args.requests:,} requests, {days:.1f} days: {took:.1f} s")
        r = replay(week, tmp / "week", args.replicas, 2)
        show("week, --cells 2 --records none", args.requests, r)
        peak = max(r["rss"], r["child_rss"], one["rss"], two["rss"], two["child_rss"])
        print(f"largest process: {peak / 1e9:.2f} GB (target < 2 GB)")


if __name__ == "__main__":
    main()
