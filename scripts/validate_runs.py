"""Validate replays against real vLLM runs: ../shared/data/measured/vllm_h100_runs.json.

Replays each of the 21 measured vLLM v0.15.1 runs on H100 as tokenfleet serves it
(`tokenfleet.study.measured_runs.py` says how a run becomes a trace and a scenario) and prints, per
run and load stage, the predicted and measured client figures (E2E, TTFT: mean, p90, p99; ITL
mean), their errors, and the median and maximum absolute error of each figure over all stages;
then, per stage, the decode step StepTime prices at the batch the measurements imply (Little's
law) beside the measured ITL, and each replica's KV blocks as tokenfleet plans them beside the
count vLLM logged.
Runs the file marks saturated are shown and counted apart. A run takes about a second.

    python scripts/validate_runs.py [--engine vllm-v1] [--runs ID,ID,...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from tokenfleet.atomic import atomic_path
from tokenfleet.errors import UserError
from tokenfleet.study.measured_runs import (
    FIGURES,
    decode_check,
    error_summary,
    errors_pct,
    implied_outputs,
    load_runs,
    planned_kv_blocks,
    predict,
)

MEASURED = Path(__file__).resolve().parents[2] / "shared/data/measured/vllm_h100_runs.json"
SHORT = {"e2e": "E2E", "ttft": "TTFT", "itl": "ITL"}


def label(figure: str) -> str:
    kind, stat, _ = figure.split("_")
    return f"{SHORT[kind]} {stat}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="vllm-v1", help="the engine preset replayed")
    parser.add_argument("--runs", help="comma-separated run ids (default: all)")
    parser.add_argument("--file", type=Path, default=MEASURED, help="a measured-runs file")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON")
    args = parser.parse_args()
    try:
        runs = load_runs(args.file)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.runs:
        wanted = args.runs.split(",")
        unknown = sorted(set(wanted) - {r.id for r in runs})
        if unknown:
            print(f"error: --runs: no run {', '.join(unknown)} in {args.file}", file=sys.stderr)
            return 2
        runs = [r for r in runs if r.id in wanted]
    print(f"engine {args.engine}; data {args.file.name}: {len(runs)} runs")
    print(f"{'run':<34} {'model':<16} {'tp':>2} {'stage':>5} {'figure':<9} "
          f"{'measured':>9} {'predicted':>9} {'error_%':>8}")  # fmt: skip
    rows, errors, saturated = [], [], []
    for run in runs:
        predicted = predict(run, args.engine)
        for k, (pred, meas) in enumerate(zip(predicted, run.measured, strict=True)):
            err = errors_pct(pred, meas)
            (saturated if run.saturated else errors).append(err)
            for figure in FIGURES:
                print(
                    f"{run.id[:34]:<34} {run.model:<16} {run.tp:>2} {k + 1:>5} "
                    f"{label(figure):<9} {meas[figure]:>9.1f} {pred[figure]:>9.1f} "
                    f"{err[figure]:>+8.1f}{'  saturated' if run.saturated else ''}"
                )
            lost = run.failed[k] if run.failed else None
            if lost or pred["timed_out"]:  # requests the client gave up on (300 s)
                print(
                    f"{run.id[:34]:<34} {run.model:<16} {run.tp:>2} {k + 1:>5} {'lost':<9} "
                    f"{'-' if lost is None else f'{lost:,}':>9} {pred['timed_out']:>9,}"
                )
            rows.append(
                {"run": run.id, "model": run.model, "tp": run.tp, "stage": k + 1,
                 "saturated": run.saturated, "output_count_implied": implied_outputs(meas),
                 "measured": meas, "predicted": pred, "error_pct": err,
                 "lost_measured": run.failed[k] if run.failed else None}
            )  # fmt: skip
    print(
        "Decode step at the batch the measurements imply (rate x (E2E - TTFT)) against "
        "(E2E - TTFT) / (generated tokens - 1):"
    )
    decode = []
    for run in runs:
        for k, check in enumerate(decode_check(run, args.engine)):
            if not run.saturated:
                decode.append(check["error_pct"])
            terms = check["terms_ms"]
            named = ("overhead", "weights_or_gemm", "experts", "attention", "allreduce")
            other = sum(terms.values()) - sum(terms[k] for k in named)
            print(
                f"  {run.id[:34]:<34} {run.model:<16} tp {run.tp} stage {k + 1}: batch "
                f"{check['batch']:6.1f}, {check['step_measured_ms']:6.2f} ms per token measured, "
                f"step {check['decode_step_ms']:6.2f} ms ({check['error_pct']:+.1f}%)"
                f"{'  saturated' if run.saturated else ''}\n      = overhead "
                f"{terms['overhead']:.2f} + weights/GEMM {terms['weights_or_gemm']:.2f} + "
                f"experts {terms['experts']:.2f} + attention {terms['attention']:.2f} + "
                f"all-reduce {terms['allreduce']:.2f} + other {other:.2f} ms"
            )
    if decode:
        print(
            f"  over {len(decode)} unsaturated stages: median |error| "
            f"{statistics.median(abs(e) for e in decode):.1f}%, max {max(map(abs, decode)):.1f}%"
        )
    print("KV blocks of one replica, tokenfleet's memory plan against vLLM's log:")
    for run in runs:
        planned = planned_kv_blocks(run)
        logged = f"{run.kv_blocks:,} ({planned / run.kv_blocks - 1:+.1%})" if run.kv_blocks else "-"
        print(f"  {run.id[:34]:<34} {run.model:<16} tp {run.tp}: {planned:,} against {logged}")
    summary = error_summary(errors) if errors else {}
    print(f"over {len(errors)} stages of unsaturated runs (|error|, %):")
    for figure, s in summary.items():
        print(
            f"  {label(figure):<9} median {s['median_abs_pct']:6.1f}  max {s['max_abs_pct']:6.1f}"
        )
    if saturated:
        print(
            f"over {len(saturated)} stages of saturated runs, not counted above (|error|, %; "
            "their clients' 300 s timeout replayed):"
        )
        for figure, s in error_summary(saturated).items():
            print(
                f"  {label(figure):<9} median {s['median_abs_pct']:6.1f}  "
                f"max {s['max_abs_pct']:6.1f}"
            )
    if args.json:
        doc = {"engine": args.engine, "file": str(args.file), "summary": summary, "rows": rows}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
