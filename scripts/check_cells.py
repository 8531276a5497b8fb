"""Do K cells of R/K replicas give the figures of one process of R? (a script, not a test;
prints figures).

Synthesises a trace without sessions (hash-balanced traffic: nothing for a cell to keep),
replays it with --seeds N on R replicas in one process and in K cells, prefix caching off, and
prints, for the figures a planner decides on, each run's mean over the seeds with its 95%
bootstrap interval, the difference, and whether it is beyond the seeds' noise (compare's
test). Run it again with --sessions to see what cells change for conversations: each session
stays in one cell, which is session affinity, and the prefix cache hits more.

    python scripts/check_cells.py [--requests 20000] [--rate 80] [--replicas 16] [--cells 2]
                                  [--seeds 8] [--sessions]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

FIGURES = {
    "economics.fleet.usd_per_mtoken.blended": "$/Mtoken",
    "throughput.requests_per_s": "requests/s",
    "economics.fleet.utilisation": "utilisation",
    "latency_s.ttft.p50": "TTFT p50 s",
    "latency_s.ttft.p99": "TTFT p99 s",
    "latency_s.tpot.p50": "TPOT p50 s",
    "latency_s.e2e.p50": "E2E p50 s",
    "latency_s.e2e.p99": "E2E p99 s",
    "prefix_cache.hit_rate_tokens": "cache hit",
}


def tokenfleet(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tokenfleet", *args, "-q"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=80.0)
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--cells", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--sessions", action="store_true", help="a chat trace, caching on")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tokenfleet.study.intervals import differs_beyond_noise

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.parquet"
        synth = ["traces", "synth", str(trace), "--requests", str(args.requests)]
        synth += ["--rate", str(args.rate), "--seed", "5"]
        if args.sessions:
            synth += ["--turns", "uniform:1,4", "--system-prompts", "4"]
            synth += ["--system-prompt-tokens", "600"]
        tokenfleet(*synth)
        common = ["--replicas", str(args.replicas), "--seeds", str(args.seeds)]
        if not args.sessions:
            common.append("--no-prefix-caching")
        runs = {}
        for k in (1, args.cells):
            out = Path(tmp) / f"cells-{k}"
            tokenfleet("replay", str(trace), "--out", str(out), *common, "--cells", str(k))
            runs[k] = json.loads((out / "summary.json").read_text())["replications"]["figures"]
    kind = "sessions, prefix caching on" if args.sessions else "no sessions, prefix caching off"
    print(f"{args.requests:,} requests at {args.rate:g}/s ({kind}), {args.replicas} replicas, "
          f"{args.seeds} seeds: 1 process against {args.cells} cells")  # fmt: skip
    print(f"{'figure':<13}{'1 process [95%]':>34}{f'{args.cells} cells [95%]':>34}"
          f"{'diff':>9}  beyond noise")  # fmt: skip
    for key, label in FIGURES.items():
        a, b = runs[1].get(key), runs[args.cells].get(key)
        if a is None or b is None:
            continue

        def cell(f: dict) -> str:
            return f"{f['mean']:.5g} [{f['ci_low']:.5g}, {f['ci_high']:.5g}]"

        diff = (b["mean"] - a["mean"]) / a["mean"] * 100 if a["mean"] else float("nan")
        noisy = differs_beyond_noise(a["values"], b["values"])
        print(f"{label:<13}{cell(a):>34}{cell(b):>34}{diff:>+8.2f}%  {'yes' if noisy else 'no'}")


if __name__ == "__main__":
    main()
