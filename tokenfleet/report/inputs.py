"""What a report reads: finished replay and frontier directories, checked before any figure is
drawn, and their Parquet files read a few columns at a time (a 1M-request run's records are
~100 MB; a figure needs two or three of their 26 columns)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tokenfleet.errors import UserError
from tokenfleet.replay.records import (
    REQUESTS_DIR,
    REQUESTS_FILE,
    SCENARIO_FILE,
    SUMMARY_FILE,
    TIMELINE_FILE,
)
from tokenfleet.replay.scenario import Scenario, load_scenario
from tokenfleet.study.compare import load_summary
from tokenfleet.study.frontier import FRONTIER_FILE

WHAT = "give the output directory of a finished replay or frontier"


@dataclass(frozen=True)
class ReplayRun:
    """A finished replay: its summary, its resolved scenario (tiers' SLOs and prices, pools'
    pricing) and where its records are."""

    path: Path
    label: str
    summary: dict
    scenario: Scenario

    def requests(self, columns: list[str]) -> pl.DataFrame:
        return pl.concat([read_columns(p, columns) for p in request_files(self.path)])

    def timeline(self, columns: list[str]) -> pl.DataFrame:
        return read_columns(self.path / TIMELINE_FILE, columns)


@dataclass(frozen=True)
class FrontierRun:
    """A finished frontier: one row per replayed setting (study/frontier.py's table)."""

    path: Path
    label: str
    table: pl.DataFrame

    @property
    def varied(self) -> list[str]:
        """The settings the frontier varied: the columns between `run` and the figures."""
        columns = self.table.columns
        return columns[1 : columns.index("fleet_replicas")] if "fleet_replicas" in columns else []


Run = ReplayRun | FrontierRun

FRONTIER_COLUMNS = (
    "run",
    "usd_per_mtoken",
    "output_tokens_per_s_per_gpu",
    "output_tokens_per_s_per_user",
    "pareto",
)


def load_run(path: str | os.PathLike[str], label: str) -> Run:
    """A replay or frontier output directory, with every file a figure reads checked now (a
    truncated or foreign file is one line naming it, before anything is drawn)."""
    folder = Path(path)
    if not folder.is_dir():
        problem = "no such directory" if not folder.exists() else "is a file"
        raise UserError(f"{path}: {problem}; {WHAT}")
    if (folder / FRONTIER_FILE).is_file():
        table = read_columns(folder / FRONTIER_FILE, None)
        missing = [c for c in FRONTIER_COLUMNS if c not in table.columns]
        if missing:
            raise UserError(
                f"{folder / FRONTIER_FILE}: no column {missing[0]!r}; not a tokenfleet frontier "
                "table (rerun the frontier)"
            )
        if table.height == 0:
            raise UserError(f"{folder / FRONTIER_FILE}: holds no runs; rerun the frontier")
        return FrontierRun(folder, label, table)
    if not (folder / SUMMARY_FILE).is_file():
        raise UserError(f"{path}: no {SUMMARY_FILE} or {FRONTIER_FILE}; {WHAT}")
    summary = load_summary(folder)
    for key in ("latency_s", "pools", "economics", "run"):
        if key not in summary:
            raise UserError(
                f"{folder / SUMMARY_FILE}: no {key!r} block; not a replay summary ({WHAT})"
            )
    if (summary.get("records") or {}).get("mode") == "none":
        raise UserError(
            f"{path}: replayed with --records none, so it has no request records to draw; "
            "replay it with --records all or sample:F"
        )
    for part in [*request_files(folder), folder / TIMELINE_FILE]:
        _check_parquet(part)
    if not (folder / SCENARIO_FILE).is_file():
        raise UserError(f"{path}: no {SCENARIO_FILE}; {WHAT}")
    return ReplayRun(folder, label, summary, load_scenario(folder / SCENARIO_FILE))


def _check_parquet(path: Path) -> None:
    """The file is there and its footer reads (a copy cut short has none)."""
    if not path.is_file():
        raise UserError(f"{path.parent}: no {path.name}; {WHAT}")
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException) as err:
        raise UserError(
            f"{path}: not readable as Parquet ({_reason(err)}); truncated? rerun the replay"
        ) from None


def request_files(folder: Path) -> list[Path]:
    """A run's request records: requests.parquet, or a --cells run's one part per cell (in
    cell order)."""
    parts = list((folder / REQUESTS_DIR).glob("cell=*/*.parquet"))
    if parts and not (folder / REQUESTS_FILE).exists():
        return sorted(parts, key=lambda p: int(p.parent.name.removeprefix("cell=")))
    return [folder / REQUESTS_FILE]


def read_columns(path: Path, columns: list[str] | None) -> pl.DataFrame:
    """Only these columns (None: all), as Polars; a missing column or a damaged file is one
    line naming the file."""
    try:
        schema = pq.read_schema(path)
        if columns is not None:
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise UserError(
                    f"{path}: no column {missing[0]!r}; written by another tokenfleet version? "
                    "rerun it"
                )
        return pl.from_arrow(pq.read_table(path, columns=columns))
    except (OSError, pa.ArrowException) as err:
        raise UserError(
            f"{path}: not readable as Parquet ({_reason(err)}); truncated? rerun the run"
        ) from None


def _reason(err: Exception) -> str:
    return str(err).splitlines()[0][:160] if str(err) else type(err).__name__


def sorted_finite(values: pl.Series) -> np.ndarray:
    """The positive finite values, sorted: what a log-x CDF can draw."""
    array = values.drop_nulls().to_numpy()
    array = array[np.isfinite(array) & (array > 0)]
    array.sort()
    return array
