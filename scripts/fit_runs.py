"""Fit an engine preset's overheads to the measured vLLM runs, leave-model-out, and report
both halves (a script, not a test; prints figures).

Fits `study/run_fit.py`'s keys (the frontend's per-request time, the per-step and
per-sequence overheads) of --base on the unsaturated runs of the --train models only, then
replays every run with the fitted preset and prints the median and max |error| of E2E, TTFT
and ITL means (and p90/p99) on the runs fitted to and on the rest (no model is in both).
With --out, writes the preset TOML and, beside it, `<stem>.fit.json` with every run's errors.
About 6 s per evaluation of the training runs, a few minutes in all.

    python scripts/fit_runs.py [--base vllm-v1] [--train MODEL,...] [--out PRESET.toml]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tokenfleet.atomic import atomic_path
from tokenfleet.study.measured_runs import error_summary, errors_pct, load_runs, predict
from tokenfleet.study.run_fit import fit_overheads, write_preset

MEASURED = Path(__file__).resolve().parents[2] / "shared/data/measured/vllm_h100_runs.json"
# Leave-model-out: these models' runs are fitted to, the others' only checked.
TRAIN = ("llama-2-7b", "llama-3.1-70b", "mistral-nemo-12b", "llama-4-scout")


def evaluate(runs, engine: str) -> tuple[dict, list[dict]]:
    """Error summary over the unsaturated runs' stages, and every stage's errors."""
    rows, errors = [], []
    for run in runs:
        for k, (pred, meas) in enumerate(zip(predict(run, engine), run.measured, strict=True)):
            err = errors_pct(pred, meas)
            rows.append({"run": run.id, "model": run.model, "stage": k + 1,
                         "saturated": run.saturated, "error_pct": err})  # fmt: skip
            if not run.saturated:
                errors.append(err)
    return error_summary(errors), rows


def show(label: str, summary: dict) -> None:
    print(f"  {label}")
    for figure, s in summary.items():
        print(
            f"    {figure:<12} median |error| {s['median_abs_pct']:6.1f}%  "
            f"max {s['max_abs_pct']:6.1f}%"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="vllm-v1", help="the engine preset to start from")
    parser.add_argument("--train", default=",".join(TRAIN), help="models fitted to")
    parser.add_argument("--out", type=Path, help="write the fitted preset TOML here")
    args = parser.parse_args()
    runs = load_runs(MEASURED)
    train_models = set(args.train.split(","))
    unknown = train_models - {r.model for r in runs}
    if unknown:
        print(f"error: --train: no runs of {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    train = [r for r in runs if r.model in train_models]
    test = [r for r in runs if r.model not in train_models]
    start = time.perf_counter()
    fit = fit_overheads(train, base=args.base, name=f"{args.base}-fitted-runs")
    print(f"fitted {', '.join(fit.keys)} of {args.base} to {len(fit.runs)} unsaturated runs of "
          f"{', '.join(sorted(train_models))} in {time.perf_counter() - start:.0f} s:")  # fmt: skip
    for key in fit.keys:
        print(f"  {key} = {getattr(fit.preset, key):g} (was {getattr(fit.base, key):g})")
    report = {"base": args.base, "train_models": sorted(train_models),
              "preset": {k: getattr(fit.preset, k) for k in fit.keys}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        engine_path = write_preset(fit.preset, args.out or Path(tmp) / "fitted.toml")
        for label, half, engine in (
            ("before, fitted-to runs", train, args.base),
            ("after, fitted-to runs", train, str(engine_path)),
            ("before, held-out runs", test, args.base),
            ("after, held-out runs", test, str(engine_path)),
        ):
            summary, rows = evaluate(half, engine)
            show(label, summary)
            report[label] = {"summary": summary, "rows": rows}
    if args.out:
        with atomic_path(args.out.with_suffix(".fit.json")) as tmp:
            tmp.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
