"""Fit an engine preset's overheads to measured step times of a real serving engine.

It lives in replay because it needs StepTime (imports flow replay -> calibrate, never back).
Only the engine preset's numeric keys move (step, per-sequence, per-layer launch or graph gap,
per all-reduce, activation passes), and only those the log can tell apart: the GPU profile's
peaks and efficiencies stay as they are, so one engine's logs never bend the hardware (see
DESIGN.md, StepTime).

Two input shapes:

- `steps`: one row per measured step with `prefill_tokens`, `decode_seqs`,
  `decode_context_tokens`, `step_ms`, and optionally `prefill_attn_pairs` (else every step's
  prefill is taken as `prefill_seqs` whole prompts, default 1, with nothing cached), `model`
  and `tp`. `--columns step_ms=latency,...` maps other names.
- `splitwise`: the Splitwise perf-model CSV (`prompt_size`, `batch_size`, `token_size`,
  `prompt_time`, `token_time`, `model`, `tensor_parallel`): each row gives a whole-batch
  prefill (batch_size prompts of prompt_size) and the mean decode step over the token_size - 1
  steps that follow (contexts prompt_size + 1 .. prompt_size + token_size - 1).
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
from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import ENGINE_KEYS, EnginePreset, GpuProfile
from tokenfleet.models import ModelSpec, get_model, list_models
from tokenfleet.perf.steptime import StepTime
from tokenfleet.traces.convert import parse_column_mapping

STEP_COLUMNS = ("prefill_tokens", "decode_seqs", "decode_context_tokens", "step_ms")
OPTIONAL_STEP_COLUMNS = ("prefill_attn_pairs", "prefill_seqs", "model", "tp")
SPLITWISE_COLUMNS = ("prompt_size", "batch_size", "token_size", "prompt_time", "token_time")
FORMATS = ("auto", "steps", "splitwise")
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
DECODE_SAMPLES = 16  # contexts at which a mean decode step is evaluated
ROBUST_SCALE = 0.1  # soft-L1 loss beyond 10% log error: one outlier cannot steer the fit
PRIOR_WEIGHT = 1e-6  # holds directions the data cannot see at the base preset


@dataclass(frozen=True)
class StepLog:
    """Measured points, each the mean of `samples` steps (columns of the 2-D arrays)."""

    source: str
    label: list[str]
    phase: list[str]  # "prefill", "decode" or "mixed"
    model: list[str]
    tp: np.ndarray
    prefill_tokens: np.ndarray  # (points, samples)
    prefill_attn_pairs: np.ndarray
    decode_seqs: np.ndarray
    decode_context_tokens: np.ndarray
    step_ms: np.ndarray  # (points,)
    repeats: np.ndarray  # raw rows behind each point (repeats are folded into their median)


@dataclass(frozen=True)
class EngineFit:
    preset: EnginePreset
    base: EnginePreset
    fitted_keys: tuple[str, ...]
    held_keys: tuple[str, ...]  # kept at the base preset: the log cannot tell them apart
    before: FitQuality
    after: FitQuality
    points: pa.Table


def read_step_log(
    path: str | Path,
    *,
    fmt: str = "auto",
    columns: str | None = None,
    model: str | None = None,
    tp: int | None = None,
) -> StepLog:
    """Read, validate and fold repeats of a step log; `model`/`tp` select rows of files that
    have those columns, and supply them for files that do not."""
    path = Path(path)
    frame = _read_frame(path)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = "splitwise" if set(SPLITWISE_COLUMNS) <= set(frame.columns) else "steps"
    if fmt == "splitwise":
        if columns:
            raise UserError("--columns applies to --format steps; the splitwise format is fixed")
        frame = _splitwise_to_steps(path, frame)
    else:
        frame = _map_columns(path, frame, parse_column_mapping(columns or ""))
    frame = _select(path, frame, "model", model)
    frame = _select(path, frame, "tp", tp)
    _validate(path, frame)
    return _fold(path, frame)


def _read_frame(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: steps file not found")
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix == ".csv":
            return pl.read_csv(path, infer_schema_length=10_000)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise UserError(f"{path}: cannot read ({str(err).splitlines()[0]})") from None
    raise UserError(f"{path}: a steps file is .csv or .parquet")


def _map_columns(path: Path, frame: pl.DataFrame, mapping: dict[str, str]) -> pl.DataFrame:
    known = STEP_COLUMNS + OPTIONAL_STEP_COLUMNS
    for out, src in mapping.items():
        if out not in known:
            raise UserError(f"--columns {out}={src}: {out!r} is not one of {', '.join(known)}")
        if src not in frame.columns:
            raise UserError(
                f"{path}: --columns {out}={src}: no column {src!r} "
                f"(found: {', '.join(frame.columns)})"
            )
    frame = frame.rename({src: out for out, src in mapping.items() if src != out})
    missing = [c for c in STEP_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path}: missing column {missing[0]!r} (found: {', '.join(frame.columns)}; "
            f"map one with --columns {missing[0]}=NAME, or use --format splitwise)"
        )
    phase = (
        pl.when(pl.col("decode_seqs") == 0)
        .then(pl.lit("prefill"))
        .when(pl.col("prefill_tokens") == 0)
        .then(pl.lit("decode"))
        .otherwise(pl.lit("mixed"))
    )
    return frame.select([c for c in known if c in frame.columns]).with_columns(phase.alias("phase"))


def _splitwise_to_steps(path: Path, frame: pl.DataFrame) -> pl.DataFrame:
    """Each Splitwise row becomes a prefill step and a (mean) decode step."""
    missing = [c for c in SPLITWISE_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column {missing[0]!r} for --format splitwise")
    extra = [pl.col("model")] if "model" in frame.columns else []
    if "tensor_parallel" in frame.columns:
        extra.append(pl.col("tensor_parallel").alias("tp"))
    base = frame.with_row_index("row")
    prefill = base.select(
        pl.col("row"),
        pl.lit("prefill").alias("phase"),
        (pl.col("batch_size") * pl.col("prompt_size")).alias("prefill_tokens"),
        pl.col("batch_size").alias("prefill_seqs"),
        pl.lit(0).alias("decode_seqs"),
        pl.lit(0).alias("decode_context_tokens"),
        pl.lit(0).alias("context_span"),
        pl.col("prompt_time").cast(pl.Float64).alias("step_ms"),
        *extra,
    )
    decode = base.filter(pl.col("token_size") > 1).select(
        pl.col("row"),
        pl.lit("decode").alias("phase"),
        pl.lit(0).alias("prefill_tokens"),
        pl.lit(0).alias("prefill_seqs"),
        pl.col("batch_size").alias("decode_seqs"),
        # Contexts run from prompt_size + 1 to prompt_size + token_size - 1 during decoding.
        (pl.col("batch_size") * (pl.col("prompt_size") + 1)).alias("decode_context_tokens"),
        (pl.col("batch_size") * (pl.col("token_size") - 2)).alias("context_span"),
        pl.col("token_time").cast(pl.Float64).alias("step_ms"),
        *extra,
    )
    return pl.concat([prefill, decode], how="vertical_relaxed")


def _select(path: Path, frame: pl.DataFrame, column: str, value: str | int | None) -> pl.DataFrame:
    if value is None:
        if column not in frame.columns:
            flag = "--model" if column == "model" else "--tp"
            if column == "tp":
                return frame.with_columns(pl.lit(1).alias("tp"))
            raise UserError(f"{path}: no {column!r} column; give {flag}")
        return frame
    if column not in frame.columns:
        return frame.with_columns(pl.lit(value).alias(column))
    if column == "model":
        wanted = _resolve_model(str(value)).name
        names = frame["model"].unique().to_list()
        keep = [n for n in names if _same_model(str(n), wanted)]
    else:
        names = frame["tp"].unique().to_list()
        keep = [n for n in names if n == value]
    if not keep:
        flag = "--model" if column == "model" else "--tp"
        raise UserError(
            f"{path}: no rows for {flag} {value}; the file has {', '.join(map(str, sorted(names)))}"
        )
    return frame.filter(pl.col(column).is_in(keep))


def _validate(path: Path, frame: pl.DataFrame) -> None:
    if frame.height == 0:
        raise UserError(f"{path}: no step rows")
    checks = [
        ("step_ms", pl.col("step_ms") > 0, "a time > 0 ms"),
        ("prefill_tokens", pl.col("prefill_tokens") >= 0, "a token count >= 0"),
        ("decode_seqs", pl.col("decode_seqs") >= 0, "a sequence count >= 0"),
        ("decode_context_tokens", pl.col("decode_context_tokens") >= 0, "a token count >= 0"),
        (
            "prefill_tokens",
            (pl.col("prefill_tokens") > 0) | (pl.col("decode_seqs") > 0),
            "prefill_tokens or decode_seqs > 0 (a step does some work)",
        ),
        ("tp", pl.col("tp") >= 1, "an integer >= 1"),
    ]
    if "prefill_attn_pairs" in frame.columns:
        checks.append(("prefill_attn_pairs", pl.col("prefill_attn_pairs") >= 0, "a count >= 0"))
    for column, ok, expected in checks:
        if not frame[column].dtype.is_numeric():
            raise UserError(f"{path}: column {column!r} must be numeric, got {frame[column].dtype}")
        bad = frame.with_row_index("_row").filter(~ok.fill_null(False) | pl.col(column).is_nan())
        if bad.height:
            first = bad.row(0, named=True)
            raise UserError(
                f"{path}: column {column!r}, row {first['_row'] + 1}: got {first[column]}, "
                f"expected {expected}"
            )


def _fold(path: Path, frame: pl.DataFrame) -> StepLog:
    """Repeats of one configuration become one point at their median."""
    for column in ("prefill_seqs", "prefill_attn_pairs", "context_span"):
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.Float64).alias(column))
    keys = [
        "model", "tp", "phase", "prefill_tokens", "prefill_seqs", "prefill_attn_pairs",
        "decode_seqs", "decode_context_tokens", "context_span",
    ]  # fmt: skip
    folded = (
        frame.with_row_index("_order")
        .group_by(keys, maintain_order=True)
        .agg(pl.col("step_ms").median(), pl.len().alias("repeats"))
    )
    samples = DECODE_SAMPLES if folded["context_span"].fill_null(0).max() > 0 else 1
    fraction = np.linspace(0.0, 1.0, samples)[None, :]
    prefill = folded["prefill_tokens"].cast(pl.Float64).to_numpy()[:, None]
    seqs = folded["prefill_seqs"].fill_null(1).cast(pl.Float64).to_numpy()[:, None]
    seqs = np.where(prefill > 0, np.maximum(seqs, 1.0), 1.0)
    chunk = prefill / seqs
    pairs = folded["prefill_attn_pairs"].cast(pl.Float64).to_numpy()[:, None]
    pairs = np.where(np.isnan(pairs), seqs * chunk * (chunk + 1.0) / 2.0, pairs)
    span = folded["context_span"].fill_null(0).cast(pl.Float64).to_numpy()[:, None]
    context = folded["decode_context_tokens"].cast(pl.Float64).to_numpy()[:, None] + span * fraction
    ones = np.ones((1, samples))
    phases = folded["phase"].to_list()
    labels = [
        _label(r) for r in folded.select("model", "tp", "prefill_tokens", "prefill_seqs",
                                         "decode_seqs", "decode_context_tokens", "context_span")
        .iter_rows(named=True)
    ]  # fmt: skip
    return StepLog(
        source=str(path),
        label=labels,
        phase=phases,
        model=[str(m) for m in folded["model"].to_list()],
        tp=folded["tp"].cast(pl.Int64).to_numpy(),
        prefill_tokens=prefill * ones,
        prefill_attn_pairs=pairs * ones,
        decode_seqs=folded["decode_seqs"].cast(pl.Float64).to_numpy()[:, None] * ones,
        decode_context_tokens=context,
        step_ms=folded["step_ms"].to_numpy(),
        repeats=folded["repeats"].to_numpy(),
    )


def _label(row: dict[str, Any]) -> str:
    parts = [f"{row['model']} tp{row['tp']}"]
    if row["prefill_tokens"]:
        seqs = int(row["prefill_seqs"] or 1)
        parts.append(f"prefill {seqs}x{int(row['prefill_tokens']) // seqs}")
    if row["decode_seqs"]:
        span = int(row["context_span"] or 0)
        ctx = int(row["decode_context_tokens"])
        parts.append(
            f"decode {int(row['decode_seqs'])} seqs ctx {ctx}" + (f"-{ctx + span}" if span else "")
        )
    return ", ".join(parts)


def _same_model(name: str, wanted: str) -> bool:
    try:
        return _resolve_model(name).name == wanted
    except UserError:  # a model of the file we do not know, and were not asked for
        return False


def _resolve_model(name: str) -> ModelSpec:
    """A catalog model, also from spellings like Splitwise's `llama2-70b` for `llama-2-70b`."""
    squash = re.sub(r"[^a-z0-9]", "", name.lower())
    for known in list_models():
        if re.sub(r"[^a-z0-9]", "", known) == squash:
            return get_model(known)
    return get_model(name)


def predict_ms(
    log: StepLog, gpu: GpuProfile, engine: EnginePreset, dtype: str = "bf16"
) -> np.ndarray:
    """StepTime's prediction for every point (the mean over each point's samples), in ms."""
    out = np.empty(len(log.model))
    models = {name: _resolve_model(name) for name in set(log.model)}
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
            "prefill_tokens": log.prefill_tokens[:, 0],
            "decode_seqs": log.decode_seqs[:, 0],
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
