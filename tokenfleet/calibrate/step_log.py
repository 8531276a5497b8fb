"""Step logs of a real serving engine, read into the points `fit_steps` fits: validated, with
repeats folded into their median.

Two input shapes:

- `steps`: one row per measured step with `prefill_tokens`, `decode_seqs`,
  `decode_context_tokens`, `step_ms`, and optionally `prefill_attn_pairs` (else every step's
  prefill is taken as `prefill_seqs` whole prompts, default 1, with nothing cached), `model`
  and `tp`. A column mapping (`step_ms=latency,...`) maps other names.
- `splitwise`: the Splitwise perf-model CSV (`prompt_size`, `batch_size`, `token_size`,
  `prompt_time`, `token_time`, `model`, `tensor_parallel`): each row gives a whole-batch
  prefill (batch_size prompts of prompt_size) and the mean decode step over the token_size - 1
  steps that follow (contexts prompt_size + 1 .. prompt_size + token_size - 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tokenfleet.errors import UserError
from tokenfleet.models import ModelSpec, get_model, list_models
from tokenfleet.traces.convert import parse_column_mapping

STEP_COLUMNS = ("prefill_tokens", "decode_seqs", "decode_context_tokens", "step_ms")
OPTIONAL_STEP_COLUMNS = ("prefill_attn_pairs", "prefill_seqs", "model", "tp")
SPLITWISE_COLUMNS = ("prompt_size", "batch_size", "token_size", "prompt_time", "token_time")
FORMATS = ("auto", "steps", "splitwise")
DECODE_SAMPLES = 16  # contexts at which a mean decode step is evaluated


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
        raise UserError(f"format = {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = "splitwise" if set(SPLITWISE_COLUMNS) <= set(frame.columns) else "steps"
    if fmt == "splitwise":
        if columns:
            raise UserError(
                "a column mapping applies to the steps format; the splitwise format is fixed"
            )
        frame = _splitwise_to_steps(path, frame)
    else:
        frame = _map_columns(path, frame, parse_column_mapping(columns or ""))
    frame = _select(path, frame, "model", model)
    frame = _select(path, frame, "tp", tp)
    _validate(path, frame)
    return _fold(path, frame if "phase" in frame.columns else _tag_phase(frame))


def _read_frame(path: Path) -> pl.DataFrame:
    """The file as a frame: a steps file is .csv or .parquet."""
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a .csv or .parquet steps file")
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
    """Rename mapped columns to the step names and check none is missing."""
    known = STEP_COLUMNS + OPTIONAL_STEP_COLUMNS
    for out, src in mapping.items():
        if out not in known:
            raise UserError(f"column mapping {out}={src}: {out!r} is not one of {', '.join(known)}")
        if src not in frame.columns:
            raise UserError(
                f"{path}: column mapping {out}={src}: no column {src!r} "
                f"(found: {', '.join(frame.columns)})"
            )
    frame = frame.rename({src: out for out, src in mapping.items() if src != out})
    missing = [c for c in STEP_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path}: missing column {missing[0]!r} (found: {', '.join(frame.columns)}; "
            f"map one with {missing[0]}=NAME in the column mapping, or use the splitwise format)"
        )
    return frame.select([c for c in known if c in frame.columns])


def _tag_phase(frame: pl.DataFrame) -> pl.DataFrame:
    """Each step's phase from what it did (once the counts are known to be numbers)."""
    phase = (
        pl.when(pl.col("decode_seqs") == 0)
        .then(pl.lit("prefill"))
        .when(pl.col("prefill_tokens") == 0)
        .then(pl.lit("decode"))
        .otherwise(pl.lit("mixed"))
    )
    return frame.with_columns(phase.alias("phase"))


def _splitwise_to_steps(path: Path, frame: pl.DataFrame) -> pl.DataFrame:
    """Each Splitwise row becomes a prefill step and a (mean) decode step."""
    missing = [c for c in SPLITWISE_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column {missing[0]!r} for the splitwise format")
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
    """Keep the rows for `value`, or supply the column where the file has none."""
    if value is None:
        if column not in frame.columns:
            if column == "tp":
                return frame.with_columns(pl.lit(1).alias("tp"))
            raise UserError(f"{path}: no {column!r} column; give the {column} setting")
        return frame
    if column not in frame.columns:
        return frame.with_columns(pl.lit(value).alias(column))
    if column == "model":
        wanted = resolve_model(str(value)).name
        names = frame["model"].unique().to_list()
        keep = [n for n in names if _same_model(str(n), wanted)]
    else:
        names = frame["tp"].unique().to_list()
        keep = [n for n in names if n == value]
    if not keep:
        raise UserError(
            f"{path}: no rows for {column} = {value}; the file has "
            f"{', '.join(map(str, sorted(names)))}"
        )
    return frame.filter(pl.col(column).is_in(keep))


def _validate(path: Path, frame: pl.DataFrame) -> None:
    """Refuse non-numeric or out-of-range values, naming the first bad row."""
    if frame.height == 0:
        raise UserError(f"{path}: no step rows")

    def whole(column: str) -> pl.Expr:
        return (pl.col(column) >= 0) & (pl.col(column) == pl.col(column).round(0))

    checks = [
        ("step_ms", pl.col("step_ms") > 0, "a time > 0 ms"),
        ("prefill_tokens", whole("prefill_tokens"), "a whole token count >= 0"),
        ("decode_seqs", whole("decode_seqs"), "a whole sequence count >= 0"),
        ("decode_context_tokens", whole("decode_context_tokens"), "a whole token count >= 0"),
        (
            "prefill_tokens",
            (pl.col("prefill_tokens") > 0) | (pl.col("decode_seqs") > 0),
            "prefill_tokens or decode_seqs > 0 (a step does some work)",
        ),
        ("tp", whole("tp") & (pl.col("tp") >= 1), "an integer >= 1"),
    ]
    if "prefill_seqs" in frame.columns:
        checks.append(("prefill_seqs", whole("prefill_seqs"), "a whole sequence count >= 0"))
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
    """A readable name for a point, as printed and as written to the points file."""
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
    """Whether the file's model name spells the model asked for."""
    try:
        return resolve_model(name).name == wanted
    except UserError:  # a model of the file we do not know, and were not asked for
        return False


def resolve_model(name: str) -> ModelSpec:
    """A catalog model, also from spellings like Splitwise's `llama2-70b` for `llama-2-70b`."""
    squash = re.sub(r"[^a-z0-9]", "", name.lower())
    for known in list_models():
        if re.sub(r"[^a-z0-9]", "", known) == squash:
            return get_model(known)
    return get_model(name)
