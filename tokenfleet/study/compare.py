"""Side-by-side summaries of finished runs, with each run's difference from the first.

Works on the flattened `summary.json` of each run directory, so every figure a summary gains
later (per tier, per tenant, economics) is compared without changes here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import polars as pl

from tokenfleet.atomic import atomic_path
from tokenfleet.errors import UserError

SUMMARY_FILE = "summary.json"


def load_summary(run_dir: str | os.PathLike[str]) -> dict:
    """A finished run's summary; refuses directories that are not replay outputs."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no {SUMMARY_FILE}; give the output directory of a replay")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def flatten(summary: dict, prefix: str = "") -> dict[str, float | str]:
    """Nested summary -> {"dotted.key": value}, keeping numbers and strings, dropping lists."""
    flat: dict[str, float | str] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, int | float):  # bools too: True -> 1.0
            flat[name] = float(value)
        elif isinstance(value, str):
            flat[name] = value
    return flat


def compare_runs(run_dirs: list[str | os.PathLike[str]]) -> pl.DataFrame:
    """One row per figure: its value in each run, and for numbers the change from the first run
    in absolute terms and in percent (null where the first run's value is zero or missing)."""
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two run directories")
    labels = _labels(run_dirs)
    flats = [flatten(load_summary(d)) for d in run_dirs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    columns: dict[str, list] = {"figure": keys}
    for label, flat in zip(labels, flats, strict=True):
        columns[label] = [_as_text(flat.get(k)) for k in keys]
    base = flats[0]
    for label, flat in zip(labels[1:], flats[1:], strict=True):
        deltas, percents = [], []
        for key in keys:
            a, b = base.get(key), flat.get(key)
            if isinstance(a, float) and isinstance(b, float):
                deltas.append(b - a)
                percents.append((b - a) / abs(a) * 100.0 if a != 0 else None)
            else:
                deltas.append(None)
                percents.append(None)
        columns[f"{label} - {labels[0]}"] = deltas
        columns[f"{label} vs {labels[0]} %"] = percents
    return pl.DataFrame(columns, strict=False)


def write_table(table: pl.DataFrame, path: str | os.PathLike[str]) -> None:
    """The comparison as Parquet, written atomically; an existing directory is refused."""
    if Path(path).is_dir():
        raise UserError(f"{path}: is a directory; give a file path such as cmp.parquet")
    with atomic_path(path) as tmp:
        table.write_parquet(tmp)


def _labels(run_dirs: list[str | os.PathLike[str]]) -> list[str]:
    """Run names for column headers: the directory names, made unique."""
    labels: list[str] = []
    for d in run_dirs:
        name = Path(d).resolve().name or str(d)
        label, n = name, 2
        while label in labels:
            label, n = f"{name}#{n}", n + 1
        labels.append(label)
    return labels


def _as_text(value: float | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"
