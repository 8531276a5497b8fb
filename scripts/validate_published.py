"""Check (and fit) an engine preset against published offline-throughput benchmarks.

Replays each row of a published-throughput file (default: TensorRT-LLM's own trtllm-bench
tables for H100 FP8, tokenfleet/study/data/trtllm_h100_published.json;
`tokenfleet.study.published_throughput` says how a row becomes a trace and a scenario) and
prints predicted against published output tokens/s per row, with the median and maximum
|error|. With `--train MODEL,...` it first fits the preset's per-step, per-sequence and
per-TP-peer overheads to those models' rows (leave-model-out: the other models' rows are the
check), prints both halves before and after, and with `--out` writes the fitted preset.
A row takes about 0.3 s; the fit of trtllm to 40 rows about 30 minutes.

    python scripts/validate_published.py [--engine trtllm] [--train MODEL,...] [--out PRESET]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import load_engine
from tokenfleet.study.published_throughput import (
    SHIPPED,
    errors,
    fit_throughput,
    load_published,
    summary,
)
from tokenfleet.study.run_fit import write_preset


def show(title: str, rows: list[dict]) -> dict:
    print(title)
    for r in rows:
        print(
            f"  {r['run']:<38} {r['predicted']:>9,.0f} tok/s against {r['published']:>9,.0f}"
            f"  ({r['error_pct']:+.1f}%)"
        )
    s = summary(rows)
    median, worst = s["median_abs_pct"], s["max_abs_pct"]
    print(f"  over {len(rows)} rows: median |error| {median:.1f}%, max {worst:.1f}%")
    return s


def main() -> int:
    """Exit 2 with one line for a bad file, flag or row (e.g. a model the GPUs cannot hold)."""
    try:
        return run()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="trtllm", help="the engine preset replayed")
    parser.add_argument("--file", type=Path, default=SHIPPED, help="a published-throughput file")
    parser.add_argument("--train", help="fit to these models' rows, check on the rest")
    parser.add_argument("--out", type=Path, help="write the fitted preset here (with --train)")
    args = parser.parse_args()
    runs = load_published(args.file)
    load_engine(args.engine)
    if args.out and args.out.resolve() == args.file.resolve():
        print("error: --out is the published file itself: write the preset elsewhere",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.out and not args.train:
        print("error: --out writes a fitted preset: give --train MODEL,... too", file=sys.stderr)
        return 2
    if not args.train:
        show(f"engine {args.engine}, {args.file.name}:", errors(runs, args.engine))
        return 0
    wanted = set(args.train.split(","))
    models = {r.model for r in runs}
    if wanted - models:
        print(f"error: --train: no rows of {', '.join(sorted(wanted - models))} "
              f"(the file's models: {', '.join(sorted(models))})", file=sys.stderr)  # fmt: skip
        return 2
    halves = {
        "fitted to": [r for r in runs if r.model in wanted],
        "held out": [r for r in runs if r.model not in wanted],
    }
    fitted = fit_throughput(halves["fitted to"], base=args.engine)
    base = load_engine(args.engine)
    print(f"fitted to {', '.join(sorted(wanted))}:")
    for key in ("step_overhead_ms", "seq_overhead_us", "allreduce_peer_us"):
        print(f"  {key:<20}{getattr(fitted, key):>10.4g}  (was {getattr(base, key):g})")
    with tempfile.TemporaryDirectory() as tmp:
        engine = str(write_preset(fitted, Path(tmp) / "fitted.toml"))
        for half, group in halves.items():
            if group:
                before = summary(errors(group, args.engine))
                print(f"{half}: median |error| before {before['median_abs_pct']:.1f}%")
                show(f"{half}, after:", errors(group, engine))
    if args.out:
        write_preset(dataclasses.replace(fitted, name=args.out.stem), args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
