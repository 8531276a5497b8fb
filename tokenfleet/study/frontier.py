"""The batch-size frontier: one replay per setting, and which settings are worth having.

Small batches give each user fast tokens at a high cost per token; large batches are cheap and
slow. A row is Pareto-optimal when no other row is both cheaper per Mtoken and faster per user.
Runs are independent, so they go to local worker processes.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import polars as pl

from tokenfleet.atomic import atomic_dir
from tokenfleet.errors import UserError
from tokenfleet.replay.run import run_replay
from tokenfleet.replay.scenario import Scenario, with_overrides

FRONTIER_FILE = "frontier.parquet"
RUNS_DIR = "runs"

# Settings a frontier can vary -> with_overrides keyword and the type of its values.
VARIABLES: dict[str, tuple[str, type]] = {
    "max_num_seqs": ("max_num_seqs", int),
    "max_batched_tokens": ("max_num_batched_tokens", int),
    "max_num_batched_tokens": ("max_num_batched_tokens", int),
    "replicas": ("replicas", int),
    "tp": ("tp", int),
    "gpu": ("gpu", str),
    "model": ("model", str),
    "batcher": ("batcher", str),
    "balancer": ("balancer", str),
    "seed": ("seed", int),
}

# Frontier columns -> where each figure sits in a run's summary.json.
FIGURES: dict[str, tuple[str, ...]] = {
    "usd_per_mtoken": ("economics", "fleet", "usd_per_mtoken", "blended"),
    "usd_per_mtoken_output": ("economics", "fleet", "usd_per_mtoken", "output"),
    "tpot_p50_s": ("latency_s", "tpot", "p50"),
    "ttft_p50_s": ("latency_s", "ttft", "p50"),
    "ttft_p99_s": ("latency_s", "ttft", "p99"),
    "goodput_frac": ("economics", "fleet", "goodput_frac"),
    "output_tokens_per_s_per_gpu": ("throughput", "output_tokens_per_s_per_gpu"),
    "mean_batch": ("mean_batch",),
}


def parse_vary(specs: list[str]) -> list[tuple[str, list]]:
    """`name=v1,v2,...` -> (name, typed values); names and values are checked here."""
    if not specs:
        raise UserError("frontier: no setting to vary; give NAME=V1,V2,... (e.g. max_num_seqs=1,8)")
    parsed: list[tuple[str, list]] = []
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not raw.strip():
            raise UserError(f"frontier: {spec!r}: expected NAME=V1,V2,...")
        if name not in VARIABLES:
            raise UserError(f"frontier: varied setting {name!r} is unknown; use one of "
                            + ", ".join(sorted(VARIABLES)))  # fmt: skip
        if name in (n for n, _ in parsed):
            raise UserError(
                f"frontier: varied setting {name!r} is given twice; list all its values at once"
            )
        kind = VARIABLES[name][1]
        values = []
        for item in raw.split(","):
            item = item.strip()
            try:
                values.append(kind(item))
            except ValueError:
                raise UserError(
                    f"frontier: varied setting {name!r}: {item!r} is not a whole number"
                ) from None
        if len(set(values)) != len(values):
            raise UserError(f"frontier: varied setting {name!r}: a value is listed twice")
        parsed.append((name, values))
    return parsed


def grid(varies: list[tuple[str, list]]) -> list[dict]:
    """Every combination of the varied settings, in the order given."""
    names = [n for n, _ in varies]
    return [
        dict(zip(names, combo, strict=True)) for combo in itertools.product(*(v for _, v in varies))
    ]


def point_label(point: dict) -> str:
    return ",".join(f"{name}={value}" for name, value in point.items())


def run_dir_name(point: dict, taken: set[str]) -> str:
    """A directory name for a point: its label with path separators (a varied gpu=./my.toml)
    made safe, and a suffix if two labels end up the same."""
    name = re.sub(r"[^\w.,=+-]", "_", point_label(point))
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}#{n}", n + 1
    taken.add(unique)
    return unique


def _replay_point(args: tuple) -> dict:
    trace, scenario, run_dir = args
    return run_replay(trace, scenario, run_dir, progress=False)


def _figure(summary: dict, path: tuple[str, ...]) -> float | None:
    value = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def pareto_mask(cost: list[float | None], speed: list[float | None]) -> list[bool]:
    """True where no other row is at least as cheap and as fast, and strictly better in one."""
    mask = []
    for i, (c, s) in enumerate(zip(cost, speed, strict=True)):
        if c is None or s is None:
            mask.append(False)
            continue
        dominated = any(
            j != i
            and oc is not None
            and os_ is not None
            and oc <= c
            and os_ >= s
            and (oc < c or os_ > s)
            for j, (oc, os_) in enumerate(zip(cost, speed, strict=True))
        )
        mask.append(not dominated)
    return mask


def run_frontier(
    trace: str | os.PathLike[str],
    scenario: Scenario,
    out_dir: str | os.PathLike[str],
    varies: list[tuple[str, list]],
    jobs: int = 0,
    on_done: Callable[[], None] | None = None,
) -> pl.DataFrame:
    """Replay every grid point into out_dir/runs/<label>/ and write out_dir/frontier.parquet."""
    points = grid(varies)
    scenarios = [
        with_overrides(scenario, **{VARIABLES[name][0]: value for name, value in point.items()})
        for point in points
    ]  # invalid combinations fail here, before any run starts
    workers = max(1, min(jobs or os.cpu_count() or 1, len(points)))
    with atomic_dir(out_dir, FRONTIER_FILE, inputs=(trace,)) as tmp:
        runs = Path(tmp) / RUNS_DIR
        runs.mkdir()
        taken: set[str] = set()
        tasks = [
            (trace, s, runs / run_dir_name(p, taken))
            for p, s in zip(points, scenarios, strict=True)
        ]
        summaries: list[dict] = []
        if workers == 1:
            for task in tasks:
                summaries.append(_replay_point(task))
                if on_done:
                    on_done()
        else:
            # spawn, not fork: forking a process that has started Polars' threads can hang.
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
                for summary in pool.map(_replay_point, tasks):
                    summaries.append(summary)
                    if on_done:
                        on_done()
        table = frontier_table(points, summaries)
        table.write_parquet(Path(tmp) / FRONTIER_FILE)
    return table


def frontier_table(points: list[dict], summaries: list[dict]) -> pl.DataFrame:
    """One row per point: its settings, the figures, tokens/s per user, and the Pareto flag."""
    columns: dict[str, list] = {"run": [point_label(p) for p in points]}
    for name in points[0]:
        columns[name] = [p[name] for p in points]
    for column, path in FIGURES.items():
        columns[column] = [_figure(s, path) for s in summaries]
    columns["output_tokens_per_s_per_user"] = [
        1.0 / t if t else None for t in columns["tpot_p50_s"]
    ]
    columns["pareto"] = pareto_mask(
        columns["usd_per_mtoken"], columns["output_tokens_per_s_per_user"]
    )
    floats = {name: pl.Float64 for name in [*FIGURES, "output_tokens_per_s_per_user"]}
    return pl.DataFrame(columns, schema_overrides=floats, strict=False)
