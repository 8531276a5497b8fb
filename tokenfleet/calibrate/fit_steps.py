"""Fit an engine preset's overheads to measured step times of a real serving engine
(read by `step_log`), and write the fitted preset into a copy of the GPU profile.

Only the engine preset's numeric keys move (step, per-sequence, per-layer launch or graph gap,
per all-reduce, activation passes), and only those the log can tell apart: the GPU profile's
peaks and efficiencies stay as they are, so one engine's logs never bend the hardware (see
DESIGN.md, StepTime).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from tokenfleet import __version__
from tokenfleet.calibrate.calibration import write_profile_with_table
from tokenfleet.calibrate.fit import FitQuality, least_squares, quality
from tokenfleet.calibrate.step_log import StepLog, resolve_model
from tokenfleet.hardware.profile import ENGINE_KEYS, EnginePreset, GpuProfile
from tokenfleet.perf.steptime import StepTime

# Every numeric engine key may move, bounded far beyond any real engine (by unit).
FIT_BOUNDS = {
    key: 1000.0 if key.endswith("_ms") else 100_000.0 if key.endswith("_us") else 1000.0
    for key in ENGINE_KEYS
    if key != "cuda_graphs"
}
# When two overheads move the predictions alike, the earlier one here is fitted and the later
# one keeps the base preset's value.
FIT_PRIORITY = (
    "step_overhead_ms",
    "seq_overhead_us",
    "layer_launch_us",
    "layer_graph_us",
    "act_passes",
    "allreduce_overhead_us",
    "prefill_overhead_ms",
)
VISIBLE_RMS = 1e-3  # a key must move predictions by 0.1% (rms) when it doubles
SEPARABLE_FRACTION = 0.1  # ... and 10% of that movement must be its own, not the others'
ROBUST_SCALE = 0.1  # soft-L1 loss beyond 10% log error: one outlier cannot steer the fit
PRIOR_WEIGHT = 1e-6  # holds directions the data cannot see at the base preset


@dataclass(frozen=True)
class EngineFit:
    """An engine fitted to a step log, the base it started from, and each point's errors."""

    preset: EnginePreset
    base: EnginePreset
    fitted_keys: tuple[str, ...]
    held_keys: tuple[str, ...]  # kept at the base preset: the log cannot tell them apart
    before: FitQuality
    after: FitQuality
    points: pa.Table


def predict_ms(
    log: StepLog, gpu: GpuProfile, engine: EnginePreset, dtype: str = "bf16"
) -> np.ndarray:
    """StepTime's prediction for every point (the mean over each point's samples), in ms."""
    out = np.empty(len(log.model))
    models = {name: resolve_model(name) for name in set(log.model)}
    groups: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(log.model, log.tp.tolist(), strict=True)):
        groups.setdefault(key, []).append(i)
    for (name, tp), rows in groups.items():
        step = StepTime(models[name], gpu, tp=tp, dtype=dtype, engine=engine)
        idx = np.array(rows)
        seconds = step.step_s_array(
            log.prefill_tokens[idx],
            log.prefill_attn_pairs[idx],
            log.decode_seqs[idx],
            log.decode_context_tokens[idx],
        )
        out[idx] = seconds.mean(axis=1) * 1e3
    return out


def fit_engine(
    log: StepLog,
    gpu: GpuProfile,
    base: EnginePreset,
    *,
    name: str,
    dtype: str = "bf16",
) -> EngineFit:
    """Least squares (log error, soft-L1) over the engine overheads the log can tell apart;
    the others keep the base preset's values (see `separable_keys`)."""
    measured = log.step_ms
    all_keys = sorted(FIT_BOUNDS, key=lambda k: FIT_PRIORITY.index(k) if k in FIT_PRIORITY else 99)
    scale_of = {k: max(float(getattr(base, k)), _typical(k)) for k in all_keys}

    def preset_of(keys: list[str], x: np.ndarray) -> EnginePreset:
        return dataclasses.replace(base, **dict(zip(keys, map(float, x), strict=True)))

    def log_error(keys: list[str], x: np.ndarray) -> np.ndarray:
        return np.log(predict_ms(log, gpu, preset_of(keys, x), dtype) / measured)

    x_all = np.array([float(getattr(base, k)) for k in all_keys])
    keys = separable_keys(
        lambda x: log_error(all_keys, x), all_keys, x_all, np.array([scale_of[k] for k in all_keys])
    )
    x0 = np.array([float(getattr(base, k)) for k in keys])
    scale = np.array([scale_of[k] for k in keys])

    def residuals(x: np.ndarray) -> np.ndarray:
        prior = np.sqrt(PRIOR_WEIGHT) * (x - x0) / scale
        return np.concatenate([log_error(keys, x), prior])

    lower = np.zeros(len(keys))
    upper = np.array([FIT_BOUNDS[k] for k in keys])
    best = (
        least_squares(residuals, x0, lower, upper, robust_scale=ROBUST_SCALE, x_scale=scale)
        if keys
        else x0  # no overhead shows in these steps: the base preset stands
    )
    fitted = dataclasses.replace(
        preset_of(keys, _tidy(keys, best)),
        name=name,
        aliases=(),
        description=(
            f"fitted by tokenfleet calibrate fit-steps to {Path(log.source).name} "
            f"({len(measured)} points) on {gpu.name}, starting from {base.name}"
        ),
    )
    before_ms = predict_ms(log, gpu, base, dtype)
    after_ms = predict_ms(log, gpu, fitted, dtype)
    points = pa.table(
        {
            "point": log.label,
            "phase": log.phase,
            "model": log.model,
            "tp": log.tp,
            # Counts, whole numbers (read_step_log refuses others): integers in the file too.
            "prefill_tokens": log.prefill_tokens[:, 0].astype(np.int64),
            "decode_seqs": log.decode_seqs[:, 0].astype(np.int64),
            "decode_context_tokens_mean": log.decode_context_tokens.mean(axis=1),
            "repeats": log.repeats,
            "measured_ms": measured,
            "before_ms": before_ms,
            "after_ms": after_ms,
            "before_error": before_ms / measured - 1.0,
            "after_error": after_ms / measured - 1.0,
        }
    )
    return EngineFit(
        preset=fitted,
        base=base,
        fitted_keys=tuple(keys),
        held_keys=tuple(k for k in all_keys if k not in keys),
        before=quality(before_ms, measured),
        after=quality(after_ms, measured),
        points=points,
    )


def separable_keys(
    log_error: Callable[[np.ndarray], np.ndarray],
    keys: list[str],
    x: np.ndarray,
    scale: np.ndarray,
) -> list[str]:
    """The keys, in priority order, whose effect on the predictions the log can see and can
    tell apart from the keys already chosen (Gram-Schmidt on the Jacobian's columns). With one
    model at one tp, for example, the all-reduce overhead is a fixed cost per step exactly like
    the step overhead, so fitting both would only trade one against the other."""
    base = log_error(x)
    chosen: list[str] = []
    basis: list[np.ndarray] = []
    for i, key in enumerate(keys):
        shifted = x.copy()
        shifted[i] += 0.01 * scale[i]
        column = (log_error(shifted) - base) / 0.01
        size = float(np.sqrt(np.mean(column**2)))
        if size < VISIBLE_RMS:
            continue
        own = column.copy()
        for unit in basis:
            own -= (own @ unit) * unit
        if float(np.sqrt(np.mean(own**2))) > SEPARABLE_FRACTION * size:
            chosen.append(key)
            basis.append(own / np.linalg.norm(own))
    return chosen


def _typical(key: str) -> float:
    """The size a key's value is judged against when its base value is 0 (1 ms, 10 us, 1)."""
    return 1.0 if key.endswith("_ms") else 10.0 if key.endswith("_us") else 1.0


def _tidy(keys: list[str], values: np.ndarray) -> np.ndarray:
    """Four significant digits (the data support no more) and exact zeros for values the fit
    pushed to its lower bound."""
    return np.array(
        [
            float(f"{v:.4g}") if v > 1e-9 * FIT_BOUNDS[k] else 0.0
            for k, v in zip(keys, values, strict=True)
        ]
    )


def default_engine_name(steps: str | Path) -> str:
    """The fitted engine's name from the steps file's, when none is given."""
    return "fit-" + re.sub(r"[^a-z0-9]+", "-", Path(steps).stem.lower()).strip("-")


def write_fit(
    gpu: GpuProfile,
    fit: EngineFit,
    log: StepLog,
    out: str | Path,
    *,
    dtype: str,
    name: str | None = None,
) -> Path:
    """The base GPU profile, hardware untouched, carrying the fitted engine as its default,
    written with the per-point errors as `<stem>.steps-fit.parquet` beside it. No clock time
    goes in: the same steps file gives byte-identical outputs."""
    profile = dataclasses.replace(
        gpu,
        name=name or f"{gpu.name}-{fit.preset.name}",
        engine=fit.preset,
        default_engine=fit.preset.name,
        meta=None,
    )
    meta = {
        "kind": "engine fit",
        "measurement": f"step times of a real engine from {Path(log.source).name}",
        "steps_file": log.source,
        "steps_sha256": hashlib.sha256(Path(log.source).read_bytes()).hexdigest(),
        "tokenfleet_version": __version__,
        "base_profile": gpu.name,
        "base_kind": "cpu" if gpu.measured_on_cpu else "gpu",
        "base_engine": fit.base.name,
        "dtype": dtype,
        "fitted_keys": list(fit.fitted_keys),
        "held_keys": list(fit.held_keys),
        "hardware": "coefficients and peaks are the base profile's, unchanged by this fit",
        "fit": {"before": fit.before.as_dict(), "after": fit.after.as_dict()},
        "errors": error_summary(fit),
    }
    return write_profile_with_table(profile, meta, fit.points, out, "steps-fit")


def error_summary(fit: EngineFit) -> dict[str, Any]:
    """Median and max |error| before and after, overall and per phase (machine-readable)."""
    table = pl.from_arrow(fit.points)
    summary: dict[str, Any] = {}
    for phase in ["all", *sorted(set(table["phase"].to_list()))]:
        part = table if phase == "all" else table.filter(pl.col("phase") == phase)
        summary[phase] = {
            "points": part.height,
            **{
                f"{when}_{stat}_abs_error": float(getattr(part[f"{when}_error"].abs(), stat)())
                for when in ("before", "after")
                for stat in ("median", "max")
            },
        }
    return summary
