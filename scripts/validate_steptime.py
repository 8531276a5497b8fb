"""Validate StepTime against real measurements: Splitwise's DGX-A100 latencies.

Predicts every configuration of ../shared/data/measured/splitwise_a100_llama2_bloom.csv
(Llama-2-70B and BLOOM-176B in FP16 on A100-80GB, TP 2/4/8; whole-batch prefill time and mean
decode step time) with the built-in A100 profile and the engine preset of that 2023 setup, and
prints predicted vs measured per point and the median and maximum absolute % error.

One point per configuration: the median of its repeats. Prefill: P = prompt x batch tokens in one
step. Decode: `token_time` is the mean over the generated tokens, so D = batch sequences at the
mean context prompt + tokens / 2.

Data: Splitwise (Patel et al., ISCA'24), via Mutinifni/splitwise-sim data/perf_model.csv, MIT.

    python scripts/validate_steptime.py [--gpu a100-80gb] [--engine splitwise-2023] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tokenfleet.atomic import atomic_path
from tokenfleet.hardware.profile import GpuProfile, load_engine, load_profile
from tokenfleet.models import get_model
from tokenfleet.perf.memory import plan_memory
from tokenfleet.perf.steptime import StepTime

MEASURED = (
    Path(__file__).resolve().parents[2] / "shared/data/measured/splitwise_a100_llama2_bloom.csv"
)
MODELS = {"llama2-70b": "llama-2-70b", "bloom-176b": "bloom-176b"}


@dataclass(frozen=True)
class Point:
    model: str
    tp: int
    prompt: int
    batch: int
    tokens: int  # generated tokens (decode points); 0 for prefill points
    phase: str  # "prefill" or "decode"
    measured_ms: float
    predicted_ms: float
    excluded: str  # why the point is left out of the error figures, or ""

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted_ms - self.measured_ms) / self.measured_ms


def exclusion_reason(model: str, tp: int, prompt: int, batch: int, tokens: int, gpu) -> str:
    """Points that do not measure what they claim, decided by physics, not by the error.

    A batch whose KV cache (prompt + all generated tokens per sequence) exceeds the replica's
    capacity cannot run as one batch: the engine preempts and recomputes, so its times are not a
    step of that batch (Splitwise's TP2 / prompt 512 / batch 64 rows: a 0.79 s prefill of 32,768
    tokens would need several times the two GPUs' peak FLOPs, and e2e is 17x prompt + decode).
    """
    spec = get_model(MODELS[model])
    plan = plan_memory(spec, gpu, tp, dtype="fp16")
    need = batch * (prompt + tokens)
    if need > plan.kv_capacity_tokens:
        return (
            f"KV cache needs {need:,} tokens > capacity {plan.kv_capacity_tokens:,} "
            f"at TP{tp}: the engine preempted, not a batch-{batch} step"
        )
    return ""


def predict(gpu: GpuProfile, engine: str, path: Path = MEASURED) -> list[Point]:
    """Every configuration of the Splitwise file, predicted and measured."""
    df = pl.read_csv(path)
    preset = load_engine(engine, gpu)
    steptimes = {}
    points: list[Point] = []
    prefill = (
        df.group_by("model", "tensor_parallel", "prompt_size", "batch_size")
        .agg(pl.col("prompt_time").median(), pl.col("token_size").max())
        .sort("model", "tensor_parallel", "prompt_size", "batch_size")
    )
    decode = (
        df.group_by("model", "tensor_parallel", "prompt_size", "batch_size", "token_size")
        .agg(pl.col("token_time").median())
        .sort("model", "tensor_parallel", "prompt_size", "batch_size", "token_size")
    )
    for phase, table in (("prefill", prefill), ("decode", decode)):
        for row in table.iter_rows(named=True):
            model, tp = row["model"], row["tensor_parallel"]
            prompt, batch, tokens = row["prompt_size"], row["batch_size"], row["token_size"]
            key = (model, tp)
            if key not in steptimes:
                steptimes[key] = StepTime(
                    get_model(MODELS[model]), gpu, tp=tp, dtype="fp16", engine=preset
                )
            st = steptimes[key]
            if phase == "prefill":
                measured = row["prompt_time"]
                pairs = batch * prompt * (prompt + 1) / 2
                predicted = st.step_s(prompt * batch, pairs, 0, 0) * 1e3
            else:
                measured = row["token_time"]
                context = batch * (prompt + tokens / 2)
                predicted = st.step_s(0, 0.0, batch, round(context)) * 1e3
            reason = exclusion_reason(model, tp, prompt, batch, tokens, gpu)
            points.append(
                Point(
                    model,
                    tp,
                    prompt,
                    batch,
                    tokens if phase == "decode" else 0,
                    phase,
                    measured,
                    predicted,
                    reason,
                )
            )
    return points


def summary(points: list[Point]) -> dict[str, dict[str, float]]:
    """Median and max absolute % error per phase over the points kept."""
    out = {}
    for phase in ("prefill", "decode"):
        errors = [abs(p.error_pct) for p in points if p.phase == phase and not p.excluded]
        out[phase] = {
            "points": len(errors),
            "median_abs_pct": statistics.median(errors),
            "max_abs_pct": max(errors),
        }
    return out


def batching_floor(points: list[Point]) -> tuple[float, Point, Point]:
    """The smallest max |error| ANY step model can reach on the batched prefills, if batching
    never makes work slower (one step of b2 prompts costs at most b2/b1 steps of b1 prompts).

    For measured times m1, m2 with ratio r = m2/m1 above c = b2/b1, the best a model can do
    is to miss both by (r - c) / (r + c). Returns the worst such pair.
    """
    worst = (0.0, points[0], points[0])
    prefill = [p for p in points if p.phase == "prefill" and not p.excluded]
    for p1 in prefill:
        for p2 in prefill:
            same = (p1.model, p1.tp, p1.prompt) == (p2.model, p2.tp, p2.prompt)
            if same and p2.batch > p1.batch:
                r, c = p2.measured_ms / p1.measured_ms, p2.batch / p1.batch
                if (r - c) / (r + c) > worst[0]:
                    worst = ((r - c) / (r + c), p1, p2)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="a100-80gb")
    parser.add_argument("--engine", default="splitwise-2023")
    parser.add_argument("--json", type=Path, help="also write points and summary as JSON")
    args = parser.parse_args()
    gpu = load_profile(args.gpu)
    points = predict(gpu, args.engine)
    print(f"GPU profile {gpu.name}, engine {args.engine}; data {MEASURED.name}")
    header = f"{'phase':7} {'model':10} {'tp':>2} {'prompt':>6} {'batch':>5} {'tokens':>6} "
    print(header + f"{'measured_ms':>11} {'predicted_ms':>12} {'error_%':>8}")
    for p in points:
        note = f"  EXCLUDED: {p.excluded}" if p.excluded else ""
        print(
            f"{p.phase:7} {p.model:10} {p.tp:>2} {p.prompt:>6} {p.batch:>5} {p.tokens or '':>6} "
            f"{p.measured_ms:>11.1f} {p.predicted_ms:>12.1f} {p.error_pct:>+8.1f}{note}"
        )
    stats = summary(points)
    for phase, s in stats.items():
        print(
            f"{phase}: {s['points']} points, median |error| {s['median_abs_pct']:.1f}%, "
            f"max |error| {s['max_abs_pct']:.1f}%"
        )
    floor, p1, p2 = batching_floor(points)
    print(
        f"data floor: {p1.model} TP{p1.tp} prefill of {p2.batch} x {p2.prompt} tokens took "
        f"{p2.measured_ms / p1.measured_ms:.2f}x the time of {p1.batch} x {p1.prompt} "
        f"(work ratio {p2.batch / p1.batch:.0f}x): any model in which batching never slows a "
        f"step misses one of them by >= {100 * floor:.1f}%"
    )
    if args.json:
        doc = {
            "gpu": gpu.name,
            "engine": args.engine,
            "summary": stats,
            "batching_floor_pct": 100 * floor,
            "points": [p.__dict__ | {"error_pct": p.error_pct} for p in points],
        }
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
