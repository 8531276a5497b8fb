"""Fit an engine preset's overheads (and only those: the GPU's coefficients stay) to measured
serving runs, by replaying them (study/measured_runs.py) and minimising the relative errors of
what their clients saw.

The residuals are log(predicted / measured) of each stage's E2E mean, TTFT mean and ITL mean,
so a 10% miss weighs the same on a 7B and a 70B model; Levenberg-Marquardt within bounds
(calibrate/fit.py's `least_squares`, soft-L1 so one odd run cannot steer the fit). Runs are
replayed whole (an evaluation of all 17 unsaturated runs takes about 6 s): cut to a minute a
stage, a run's first 100 requests, whose prompts the cache has not seen yet, weigh ten times
as much in its means, and a run's log errors moved by up to 0.87. Saturated runs are left out:
their figures depend on how long their queues have grown.

Fitted by default: `frontend_out_ms` (standing for the frontend's whole per-request time: on
constant-rate single-replica runs `frontend_in_ms` and `frontend_out_ms` move TTFT and E2E
alike, so the data cannot tell them apart), `step_overhead_ms`, `seq_overhead_us`, and the
per-step terms `allreduce_peer_us`, `sampler_filter_ms` and `sampler_filter_ns_per_logit`
(hardware/profile.py STEP_TERM_KEYS).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tomli_w

from tokenfleet.atomic import atomic_path
from tokenfleet.calibrate.fit import least_squares
from tokenfleet.hardware.profile import ENGINE_FORMAT, EnginePreset, load_engine
from tokenfleet.study.measured_runs import MeasuredRun, error_summary, errors_pct, predict

FITTED_KEYS = (
    "frontend_out_ms",
    "step_overhead_ms",
    "seq_overhead_us",
    "allreduce_peer_us",
    "sampler_filter_ms",
    "sampler_filter_ns_per_logit",
)
FIT_FIGURES = ("e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms")
# Bounds far beyond any real engine, by unit. The finite differences step each key by 1e-6 of
# `least_squares`' scale: 0.01 ms and 0.1 us here, far above the 1e-6 ms a smooth function
# would take, because a replay is piecewise: a key moved by a nanosecond a step can reorder an
# arrival and a step end, and such jumps swamped the slope (the fit did not move).
# ns per logit: 0.005 ns a step, ~20 us on a step of 30 sequences of a 128k vocabulary.
BOUNDS = {"_ms": (0.0, 200.0), "_us": (0.0, 2000.0), "_ns_per_logit": (0.0, 100.0)}
TYPICAL = {"_ms": 1e4, "_us": 1e5, "_ns_per_logit": 5e3}
ROBUST_SCALE = 0.25  # soft-L1 beyond a 25% log error


@dataclasses.dataclass(frozen=True)
class RunFit:
    """The fitted preset, the one it started from, and the keys it moved."""

    preset: EnginePreset
    base: EnginePreset
    keys: tuple[str, ...]
    runs: tuple[str, ...]  # the ids fitted to


def shortened(run: MeasuredRun, span_s: float) -> MeasuredRun:
    """The run with each stage cut to `span_s` seconds (the same rates)."""
    stages = tuple((rate, min(seconds, span_s)) for rate, seconds in run.stages)
    return dataclasses.replace(run, stages=stages)


def write_preset(preset: EnginePreset, path: str | Path) -> Path:
    """The preset as an engine TOML (`tokenfleet-engine/1`), written atomically."""
    doc = {"format": ENGINE_FORMAT, **asdict(preset), "aliases": list(preset.aliases)}
    with atomic_path(path) as tmp:
        tmp.write_text(tomli_w.dumps(doc))
    return Path(path)


def residuals_of(runs: list[MeasuredRun], engine: str) -> np.ndarray:
    """log(predicted / measured) of FIT_FIGURES, every stage of every run, in order."""
    out = []
    for run in runs:
        for predicted, measured in zip(predict(run, engine), run.measured, strict=True):
            out.extend(math.log(predicted[k] / measured[k]) for k in FIT_FIGURES)
    return np.array(out)


def fit_overheads(
    runs: list[MeasuredRun],
    base: str = "vllm-v1",
    keys: tuple[str, ...] = FITTED_KEYS,
    span_s: float | None = None,
    name: str | None = None,
) -> RunFit:
    """The base preset with `keys` fitted to the unsaturated `runs` (see the module); with
    `span_s`, each stage cut to that many seconds (for quick checks)."""
    base_preset = load_engine(base)
    fitted = [r if span_s is None else shortened(r, span_s) for r in runs if not r.saturated]
    preset = fit_preset(
        base_preset,
        keys,
        lambda engine: residuals_of(fitted, engine),
        name or f"{base_preset.name}-fitted",
    )
    return RunFit(preset, base_preset, keys, tuple(r.id for r in fitted))


def fit_preset(
    base: EnginePreset,
    keys: tuple[str, ...],
    residuals_for: Callable[[str], np.ndarray],
    name: str,
) -> EnginePreset:
    """The base preset with `keys` moved to minimise `residuals_for(path of a candidate
    preset)` (log errors of replays), within BOUNDS; shared by every fit to replays."""
    unit = [next(u for u in BOUNDS if k.endswith(u)) for k in keys]
    lower = np.array([BOUNDS[u][0] for u in unit])
    upper = np.array([BOUNDS[u][1] for u in unit])
    x0 = np.array([getattr(base, k) for k in keys], dtype=float)
    with tempfile.TemporaryDirectory() as tmp:

        def residuals(x: np.ndarray) -> np.ndarray:
            path = write_preset(_with(base, name, keys, x), Path(tmp) / "candidate.toml")
            return residuals_for(str(path))

        x = least_squares(
            residuals,
            x0,
            lower,
            upper,
            robust_scale=ROBUST_SCALE,
            x_scale=np.array([TYPICAL[u] for u in unit]),
            max_iter=30,
        )
    # Rounded only now: the finite differences move the keys by far less than 1e-4.
    return _with(base, name, keys, np.round(x, 4))


def _with(base: EnginePreset, name: str, keys: tuple[str, ...], x: np.ndarray) -> EnginePreset:
    values = {k: float(v) for k, v in zip(keys, x, strict=True)}
    return dataclasses.replace(
        base,
        name=name,
        aliases=(),
        description=f"{base.name} with {', '.join(keys)} fitted to measured serving runs",
        **values,
    )


def with_provenance(fit: RunFit, runs_file: str, models: list[str], results: dict) -> EnginePreset:
    """The fitted preset saying what it was fitted to and its errors on each half (`results`:
    half -> {"after": {"summary": error_summary}}), for `gpus show`."""
    halves = "; ".join(
        f"{half.replace('_', ' ')}: median |error| "
        + ", ".join(
            f"{label} {result['after']['summary'][key]['median_abs_pct']:.1f}%"
            for label, key in zip(("E2E mean", "TTFT mean", "ITL mean"), FIT_FIGURES, strict=True)
        )
        for half, result in results.items()
    )
    return dataclasses.replace(
        fit.preset,
        fitted_to=f"{len(fit.runs)} unsaturated runs of {', '.join(models)} in {runs_file}",
        fit_error=halves,
    )


POOR_FIT_PCT = 25.0  # a fit whose median |error| of a fitted figure is above this is refused


def evaluate(runs: list[MeasuredRun], engine: str) -> tuple[dict, list[dict]]:
    """The error summary over the unsaturated runs' stages (FIGURES), and every stage's
    errors (saturated runs too, marked)."""
    rows, errors = [], []
    for run in runs:
        for k, (pred, meas) in enumerate(zip(predict(run, engine), run.measured, strict=True)):
            err = errors_pct(pred, meas)
            rows.append({"run": run.id, "model": run.model, "stage": k + 1,
                         "saturated": run.saturated, "error_pct": err})  # fmt: skip
            if not run.saturated:
                errors.append(err)
    return (error_summary(errors) if errors else {}), rows


def poor_fit(summary: dict, rows: list[dict]) -> str | None:
    """Why a fit is too poor to keep (a fitted figure's median |error| above POOR_FIT_PCT),
    naming the runs that dominate the error; None when it is not."""
    bad = [k for k in FIT_FIGURES if summary[k]["median_abs_pct"] > POOR_FIT_PCT]
    if not bad:
        return None
    weight: dict[str, float] = {}
    for row in rows:
        if not row["saturated"]:
            weight[row["run"]] = weight.get(row["run"], 0.0) + sum(
                abs(row["error_pct"][k]) for k in bad
            )
    worst = sorted(weight, key=weight.get, reverse=True)[:3]
    figures = ", ".join(f"{k} {summary[k]['median_abs_pct']:.1f}%" for k in bad)
    return f"median |error| above {POOR_FIT_PCT:.0f}% ({figures}); worst runs: {', '.join(worst)}"
