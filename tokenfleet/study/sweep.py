"""`tokenfleet sweep GRID.toml`: one replay per cell of a grid of scenario overrides, over
one or more traces and seeds, into one Parquet table, resumable, on local processes or Ray.

The grid file:

    traces = ["conv.parquet", "code.parquet"]  # paths relative to the grid file
    scenario = "base.toml"                     # optional: the scenario the cells override
    seeds = 3                                  # optional: replications per cell (seeds.py)
    records = "none"                           # optional: --records of every cell

    [grid]                                     # every combination of these
    max_num_seqs = [64, 256]
    gpu = ["h100-sxm", "a100-80gb"]

    [[cells]]                                  # and/or cells listed one by one
    batcher = "sglang"
    replicas = 4

The settings are frontier's (`frontier.VARIABLES`). A cell is a (trace, settings, seed): its
replay goes to `cells/<name>/` (a full run directory plus `cell.json`, what it is), so a
finished cell is found again and not rerun; an interrupted sweep keeps the cells it finished.
A cell that fails (its settings do not fit, a bug) is named with why, and the others go on.
`sweep.parquet` has one row per finished cell: the trace, the settings, the seed, then every
numeric figure of its summary (dotted names, as `compare` shows them), tokens/s per user and
`pareto` (no other cell of the same trace is both cheaper per Mtoken and faster per user, on
their means over the seeds).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import polars as pl

from tokenfleet.atomic import atomic_path, check_replaceable_dir
from tokenfleet.errors import UserError
from tokenfleet.replay.records import SUMMARY_FILE
from tokenfleet.replay.records.requests import RecordsPolicy
from tokenfleet.replay.run import run_replay
from tokenfleet.replay.scenario import Scenario, load_scenario, with_overrides
from tokenfleet.study.compare import flatten
from tokenfleet.study.frontier import (
    BOOLEANS,
    VARIABLES,
    grid,
    pareto_mask,
    point_label,
    safe_name,
)
from tokenfleet.study.seeds import NOT_FIGURES, replication_trace, synthetic_spec
from tokenfleet.tomlfile import read_toml

SWEEP_FILE = "sweep.parquet"
GRID_COPY = "sweep.toml"  # the grid as run: also what marks a directory as a sweep's
CELLS_DIR = "cells"
CELL_FILE = "cell.json"
GRID_KEYS = ("traces", "scenario", "seeds", "records", "grid", "cells")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One replay of the sweep: a trace, the settings it overrides, a replication."""

    trace: str
    settings: dict
    seed: int  # replication k: the scenario's seed + k

    @property
    def name(self) -> str:
        stem = Path(self.trace).stem
        return f"{stem},{point_label(self.settings) or 'base'},seed={self.seed}"

    def identity(self) -> dict:
        return {"trace": self.trace, "settings": self.settings, "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class Plan:
    grid_path: Path
    scenario_path: Path | None
    scenario: Scenario
    cells: list[Cell]
    records: RecordsPolicy
    axes: list[str]  # every setting some cell sets, in first-seen order


@dataclasses.dataclass
class SweepResult:
    table: pl.DataFrame
    failed: list[tuple[str, str]]  # (cell name, why)
    reused: int  # finished cells found from an earlier run


def load_plan(grid_path: str | os.PathLike[str], seeds: int | None = None) -> Plan:
    """The grid file, checked: unknown keys, empty axes and wrong types are one line each."""
    grid_path = Path(grid_path)
    doc = read_toml(grid_path)
    where = str(grid_path)
    unknown = sorted(set(doc) - set(GRID_KEYS))
    if unknown:
        raise UserError(
            f"{where}: unknown key {unknown[0]!r}; a grid file has {', '.join(GRID_KEYS)}"
        )
    base = grid_path.parent
    traces = doc.get("traces")
    if isinstance(traces, str):
        traces = [traces]
    if not traces or not isinstance(traces, list) or not all(isinstance(t, str) for t in traces):
        raise UserError(
            f'{where}: traces must list at least one trace path (traces = ["a.parquet"])'
        )
    traces = [str((base / t).resolve()) for t in traces]  # as found again from any directory
    for trace in traces:
        if not Path(trace).is_file():
            raise UserError(f"{where}: trace {trace}: no such file")
    scenario_path = doc.get("scenario")
    if scenario_path is not None:
        if not isinstance(scenario_path, str):
            raise UserError(f'{where}: scenario must be a path (scenario = "base.toml")')
        scenario_path = base / scenario_path
    replications = doc.get("seeds", 1) if seeds is None else seeds
    if not isinstance(replications, int) or isinstance(replications, bool) or replications < 1:
        raise UserError(f"{where}: seeds = {replications!r}: expected a whole number >= 1")
    records = doc.get("records", "all")
    if not isinstance(records, str):
        raise UserError(f'{where}: records must be "all", "none" or "sample:F"')
    policy = RecordsPolicy.parse(records)
    points = _grid_points(doc.get("grid", {}), where) + _listed_cells(doc.get("cells", []), where)
    if not points:
        raise UserError(f"{where}: no cell; give a [grid] table of axes or [[cells]] tables")
    axes = list(dict.fromkeys(name for point in points for name in point))
    cells = [
        Cell(trace, point, k) for trace in traces for point in points for k in range(replications)
    ]
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: two cells are the same ({_first_repeat(names)})")
    scenario = load_scenario(scenario_path)
    return Plan(grid_path, scenario_path, scenario, cells, policy, axes)


def _grid_points(table: object, where: str) -> list[dict]:
    if not isinstance(table, dict):
        raise UserError(f"{where}: [grid] must be a table of setting = [values]")
    axes = []
    for name, values in table.items():
        _check_name(name, f"{where}: [grid]")
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise UserError(f"{where}: [grid] {name} = []: an axis needs at least one value")
        typed = [_typed(name, v, f"{where}: [grid]") for v in values]
        if len(set(map(repr, typed))) != len(typed):
            raise UserError(f"{where}: [grid] {name}: a value is listed twice")
        axes.append((name, typed))
    return grid(axes) if axes else []


def _listed_cells(cells: object, where: str) -> list[dict]:
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise UserError(f"{where}: cells must be [[cells]] tables of setting = value")
    points = []
    for i, cell in enumerate(cells):
        owner = f"{where}: [[cells]] #{i + 1}"
        if not cell:
            raise UserError(f"{owner}: empty; give at least one setting")
        for name in cell:
            _check_name(name, owner)
        points.append({name: _typed(name, value, owner) for name, value in cell.items()})
    return points


def _check_name(name: str, owner: str) -> None:
    if name not in VARIABLES:
        raise UserError(
            f"{owner}: unknown setting {name!r}; use one of {', '.join(sorted(VARIABLES))}"
        )


def _typed(name: str, value: object, owner: str):
    """A TOML value as the setting's type (frontier.VARIABLES), or one line saying why not."""
    kind = VARIABLES[name][1]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in BOOLEANS:
            return BOOLEANS[value.lower()]
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    expected = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    raise UserError(f"{owner}: {name} = {value!r}: expected {expected[kind]}")


def _first_repeat(names: list[str]) -> str:
    seen = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return ""


def run_sweep(
    plan: Plan,
    out_dir: str | os.PathLike[str],
    executor,
    on_done: Callable[[], None] | None = None,
) -> SweepResult:
    """Replay every cell not already finished in `out_dir`, then write sweep.parquet."""
    out = Path(out_dir)
    inputs = (*{c.trace for c in plan.cells}, plan.grid_path, plan.scenario_path)
    check_replaceable_dir(out, GRID_COPY, inputs=inputs)
    (out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    (out / GRID_COPY).write_text(plan.grid_path.read_text())
    summaries: dict[int, dict] = {}
    failed: dict[int, str] = {}
    tasks, task_cells = [], []
    taken: set[str] = set()
    for i, cell in enumerate(plan.cells):
        folder = out / CELLS_DIR / safe_name(cell.name, taken)
        done = _finished(folder, cell)
        if done is not None:
            summaries[i] = done
            if on_done:
                on_done()
            continue
        try:
            scenario = with_overrides(
                plan.scenario,
                **{VARIABLES[k][0]: v for k, v in cell.settings.items()},
                seed=plan.scenario.seed + cell.seed,
            )
        except UserError as err:
            failed[i] = str(err)
            continue
        tasks.append((cell, scenario, str(folder), plan.records))
        task_cells.append(i)
    reused = len(summaries)
    for index, result, error in executor.run(run_cell, tasks):
        i = task_cells[index]
        if error is None:
            summaries[i], notices = result
            for notice in notices:
                warnings.warn(notice, stacklevel=1)
        else:
            failed[i] = _why(error)
        if on_done:
            on_done()
    table = sweep_table(plan, summaries)
    with atomic_path(out / SWEEP_FILE) as tmp:
        table.write_parquet(tmp)
    return SweepResult(table, [(plan.cells[i].name, failed[i]) for i in sorted(failed)], reused)


def run_cell(task: tuple) -> tuple[dict, list]:
    """One cell's replay (in a worker process or a Ray task), with the notices it issued."""
    cell, scenario, folder, records = task
    with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("always")
        trace = replication_trace(cell.trace, synthetic_spec(cell.trace), cell.seed, Path(tmp))

        def annotate(run_dir: Path, summary: dict) -> None:
            (run_dir / CELL_FILE).write_text(json.dumps(cell.identity(), sort_keys=True) + "\n")

        summary = run_replay(trace, scenario, folder, records=records, annotate=annotate)
    return summary, [w.message for w in caught]


def _finished(folder: Path, cell: Cell) -> dict | None:
    """The summary of this cell from an earlier run of the sweep, if it finished."""
    try:
        identity = json.loads((folder / CELL_FILE).read_text())
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary if identity == json.loads(json.dumps(cell.identity())) else None


def _why(error: BaseException) -> str:
    """A failed cell's reason in one line: a UserError's message, else the exception's."""
    if isinstance(error, UserError):
        return str(error)
    return f"{type(error).__name__}: {error}".splitlines()[0]


def sweep_table(plan: Plan, summaries: dict[int, dict]) -> pl.DataFrame:
    """One row per finished cell, in the plan's order (see the module docstring)."""
    order = sorted(summaries)
    cells = [plan.cells[i] for i in order]
    flats = [flatten(summaries[i]) for i in order]
    figures = sorted(  # by name: a fresh summary and one read back from disk alike
        {
            key
            for flat in flats
            for key, value in flat.items()
            if isinstance(value, int | float) and not key.startswith(NOT_FIGURES)
        }
    )
    columns: dict[str, pl.Series] = {
        "cell": pl.Series([c.name for c in cells], dtype=pl.String),
        "trace": pl.Series([c.trace for c in cells], dtype=pl.String),
    }
    for axis in plan.axes:
        values = [c.settings.get(axis) for c in cells]
        kind = {bool: pl.Boolean, int: pl.Int64, float: pl.Float64, str: pl.String}
        columns[axis] = pl.Series(values, dtype=kind[VARIABLES[axis][1]])
    columns["seed"] = pl.Series([c.seed for c in cells], dtype=pl.Int64)
    for key in figures:
        values = [flat.get(key) for flat in flats]
        columns[key] = pl.Series(
            [float(v) if isinstance(v, int | float) else None for v in values], dtype=pl.Float64
        )
    tpot = [flat.get("latency_s.tpot.p50") for flat in flats]
    columns["output_tokens_per_s_per_user"] = pl.Series(
        [1.0 / t if isinstance(t, int | float) and t > 0 else None for t in tpot], dtype=pl.Float64
    )
    table = pl.DataFrame(columns)
    return table.with_columns(pareto=_pareto(table, cells))


def _pareto(table: pl.DataFrame, cells: list[Cell]) -> pl.Series:
    """Per row, whether its cell (its means over the seeds) is Pareto-optimal among the cells
    of its trace: no other is both cheaper per Mtoken and faster per user."""
    cost_key = "economics.fleet.usd_per_mtoken.blended"
    if cost_key not in table.columns or table.height == 0:
        return pl.Series("pareto", [False] * table.height)
    key = [f"{c.trace}\0{point_label(c.settings)}" for c in cells]
    means = (
        table.select(
            pl.Series("key", key),
            pl.col("trace"),
            pl.col(cost_key).alias("cost"),
            pl.col("output_tokens_per_s_per_user").alias("speed"),
        )
        .group_by("key", maintain_order=True)
        .agg(pl.col("trace").first(), pl.col("cost").mean(), pl.col("speed").mean())
    )
    optimal: dict[str, bool] = {}
    for trace in means["trace"].unique(maintain_order=True).to_list():
        part = means.filter(pl.col("trace") == trace)
        mask = pareto_mask(part["cost"].to_list(), part["speed"].to_list())
        optimal.update(zip(part["key"].to_list(), mask, strict=True))
    return pl.Series("pareto", [optimal[k] for k in key])
