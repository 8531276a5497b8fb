"""How long `tokenfleet report` takes on a large replay (a script, not a test; prints figures).

Replays the Azure conv trace tiled to --requests (1,000,000) on --replicas (64) at the sizing
rule's load (bench_replay.py's main case), once, then draws its report --repeat times, each in
a fresh process as a user runs it (`python -m tokenfleet report RUN --out DIR`, interpreter
start and imports included), and prints the wall time, the peak RSS and each figure's time.
The issue's target: under 15 s wall and under 1 GB RSS, no figure over 1 s.

    python scripts/bench_report.py [--requests 1000000] [--replicas 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import ROOT, fleet_rate, tiled_trace  # noqa: E402

CHILD = """
import json, sys, time
start = time.perf_counter()
from tokenfleet.report.build import write_report
report = write_report([sys.argv[1]], sys.argv[2])
print(json.dumps({"inner_s": time.perf_counter() - start, "figures": report.seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"python {platform.python_version()} ({sys.executable}), {platform.node()}")
    from tokenfleet.replay.run import run_replay
    from tokenfleet.replay.scenario import load_scenario, with_overrides

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trace = tmp / "trace.parquet"
        tiled_trace(trace, args.requests, fleet_rate("h100-sxm", args.replicas, 1), 1)
        scenario = with_overrides(load_scenario(None), replicas=args.replicas)
        start = time.perf_counter()
        run = tmp / "run"
        summary = run_replay(trace, scenario, run)
        sizes = {p.name: p.stat().st_size for p in run.iterdir()}
        print(
            f"replay: {summary['requests']:,} requests on {args.replicas} replicas in "
            f"{time.perf_counter() - start:.1f} s; requests.parquet "
            f"{sizes['requests.parquet'] / 1e6:.0f} MB, timeline.parquet "
            f"{sizes['timeline.parquet'] / 1e6:.1f} MB"
        )
        for i in range(args.repeat):
            out = tmp / f"report-{i}"
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(run), str(out)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            wall = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            result = json.loads(done.stdout.strip().splitlines()[-1])
            figures = ", ".join(f"{k} {v:.2f} s" for k, v in result["figures"].items())
            rss = f"{peak / 1e3:,.0f} MB" if peak > before else "<= the previous run's"
            print(
                f"report {i + 1}: {wall:.2f} s wall (process start to exit; "
                f"{result['inner_s']:.2f} s from the first import), peak RSS {rss}; {figures}"
            )


if __name__ == "__main__":
    main()
