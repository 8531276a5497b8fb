"""Speed and memory of the trace pipeline on 10 million rows: synth, convert a CSV, inspect.

Each step runs in its own process, so its peak RSS (from os.wait4) is its own. Rows/s is
measured inside the process around the library call (imports excluded); the process wall time
is printed beside it. Targets (issue 2): inspect >= 5 million rows/s, peak RSS < 500 MB.

    python scripts/bench_traces.py [--rows 10000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RSS_TARGET_MB = 500
INSPECT_TARGET_RPS = 5e6

# Child programs: each does one step and prints {"rows": n, "seconds": s} on its last line.
SYNTH = """
import json, sys, time
from tokenfleet.traces.synth import SynthSpec, parse_shares, synth_trace
t = time.perf_counter()
tiers = parse_shares("fast=0.2,standard=0.7,batch=0.1", "--tiers")
tenants = parse_shares("50", "--tenants")
spec = SynthSpec(requests=int(sys.argv[2]), seed=1, tenants=tenants, tiers=tiers)
r = synth_trace(sys.argv[1], spec)
print(json.dumps({"rows": r["rows"], "seconds": time.perf_counter() - t}))
"""
# Azure 2024 style: wall-clock UTC timestamps with 7 fractional digits and a zone offset.
WRITE_CSV = """
import json, sys, time
import polars as pl
t = time.perf_counter()
start = pl.datetime(2024, 5, 10, time_zone="UTC")
(pl.scan_parquet(sys.argv[1])
   .select(
       (start + pl.duration(nanoseconds=(pl.col("arrival_s") * 1e9).cast(pl.Int64)))
       .dt.strftime("%Y-%m-%d %H:%M:%S%.6f0+00:00").alias("TIMESTAMP"),
       pl.col("prompt_tokens").alias("ContextTokens"),
       pl.col("output_tokens").alias("GeneratedTokens"))
   .sink_csv(sys.argv[2]))
rows = pl.scan_parquet(sys.argv[1]).select(pl.len()).collect().item()
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t}))
"""
CONVERT = """
import json, sys, time
from tokenfleet.traces.convert import convert_trace
t = time.perf_counter()
r = convert_trace(sys.argv[1], sys.argv[2])
print(json.dumps({"rows": r["rows_written"], "seconds": time.perf_counter() - t}))
"""
INSPECT = """
import json, sys, time
from tokenfleet.traces.inspect import inspect_trace
t = time.perf_counter()
r = inspect_trace(sys.argv[1])
print(json.dumps({"rows": r["rows"], "seconds": time.perf_counter() - t}))
"""
VALIDATE = """
import json, sys, time
from tokenfleet.traces.validate import validate_trace
t = time.perf_counter()
r = validate_trace(sys.argv[1])
print(json.dumps({"rows": r["rows"], "seconds": time.perf_counter() - t}))
"""


def run_step(program: str, *args: str) -> dict:
    """Run one child; return its own timing plus wall time and peak RSS (MB) from wait4."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", program, *args], stdout=subprocess.PIPE, text=True
    )
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"step failed with exit code {child.returncode}: {args}")
    result = json.loads(out.strip().splitlines()[-1])
    peak_mb = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return result | {"wall_s": wall_s, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", type=Path, help="Work in this directory and keep the files.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        synth_pq, csv, conv_pq = work / "synth.parquet", work / "azure.csv", work / "conv.parquet"
        steps = {
            "synth": run_step(SYNTH, str(synth_pq), str(args.rows)),
            "write csv (setup)": run_step(WRITE_CSV, str(synth_pq), str(csv)),
            "convert azure csv": run_step(CONVERT, str(csv), str(conv_pq)),
            "inspect": run_step(INSPECT, str(conv_pq)),
            "validate": run_step(VALIDATE, str(conv_pq)),
        }
        sizes = {"synth parquet": synth_pq, "azure csv": csv, "converted parquet": conv_pq}
        size_mb = {name: path.stat().st_size / 1e6 for name, path in sizes.items()}
    print(f"{'step':<20}{'rows':>12}{'call s':>9}{'rows/s':>14}{'wall s':>9}{'peak RSS MB':>13}")
    for name, r in steps.items():
        rate = r["rows"] / r["seconds"]
        print(
            f"{name:<20}{r['rows']:>12,}{r['seconds']:>9.2f}{rate:>14,.0f}"
            f"{r['wall_s']:>9.2f}{r['peak_rss_mb']:>13.0f}"
        )
    print("file sizes: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in size_mb.items()))
    inspect = steps["inspect"]
    measured = {k: v for k, v in steps.items() if k != "write csv (setup)"}
    worst_rss = max(r["peak_rss_mb"] for r in measured.values())
    print(
        f"targets: inspect {inspect['rows'] / inspect['seconds'] / 1e6:.1f} M rows/s "
        f"(>= {INSPECT_TARGET_RPS / 1e6:.0f}), worst peak RSS {worst_rss:.0f} MB "
        f"(< {RSS_TARGET_MB})"
    )
    print(json.dumps({"rows": args.rows, "steps": steps, "file_mb": size_mb}))


if __name__ == "__main__":
    main()
