"""The batch-size frontier: one replay per setting, and which settings are worth having.

Small batches give each user fast tokens at a high cost per token; large batches are cheap and
slow. A row is Pareto-optimal when no other row is both cheaper per Mtoken and faster per user.
Runs are independent, so they go to local worker processes (executors.py); `sweep` is the
same machinery over any grid, several traces, seeds, and Ray.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from tokenfleet.atomic import atomic_dir
from tokenfleet.errors import UserError
from tokenfleet.replay.fleet import build_fleet
from tokenfleet.replay.run import trace_stats, unknown_tiers
from tokenfleet.replay.scenario import Scenario, with_overrides
from tokenfleet.study.executors import LocalExecutor, WorkerDied
from tokenfleet.study.seeds import run_seeds

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
    "enable_prefix_caching": ("enable_prefix_caching", bool),
    "engine": ("engine", str),
    "usd_per_gpu_hour": ("usd_per_gpu_hour", float),
    "client_timeout_s": ("client_timeout_s", float),
}
BOOLEANS = {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False}

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
    "cache_hit_rate": ("prefix_cache", "hit_rate_tokens"),
}
# With --seeds, these columns get `_ci_low` and `_ci_high` beside their means.
INTERVAL_COLUMNS = ("usd_per_mtoken", "tpot_p50_s", "ttft_p99_s")
# Whole-fleet counts (all pools together), apart from a varied per-pool `replicas`.
COUNTS: dict[str, tuple[str, ...]] = {
    "fleet_replicas": ("replicas",),
    "fleet_gpus": ("gpus",),
    "timed_out": ("economics", "fleet", "timed_out"),  # requests whose clients gave up
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
            if not item:
                raise UserError(
                    f"frontier: varied setting {name!r}: an empty value in {raw!r}; "
                    "separate the values by single commas"
                )
            if kind is bool:
                if item.lower() not in BOOLEANS:
                    raise UserError(
                        f"frontier: varied setting {name!r}: {item!r} is not true or false"
                    )
                values.append(BOOLEANS[item.lower()])
                continue
            try:
                values.append(kind(item))
            except ValueError:
                what = "a whole number" if kind is int else "a number"
                raise UserError(
                    f"frontier: varied setting {name!r}: {item!r} is not {what}"
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
    return safe_name(point_label(point), taken)


def safe_name(label: str, taken: set[str]) -> str:
    """`label` as a directory name (path separators and the like made `_`), with a suffix if
    it is already `taken`; it is added to `taken`."""
    name = re.sub(r"[^\w.,=+-]", "_", label)
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}#{n}", n + 1
    taken.add(unique)
    return unique


def _replay_point(task: tuple) -> tuple[int, dict, list[Warning]]:
    """One grid point's replay (in a worker process when jobs > 1), with the notices it
    issued; its errors name the run."""
    index, label, trace, scenario, run_dir, seeds = task
    with _in_run(label), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_seeds(trace, scenario, run_dir, seeds)
    return index, summary, [w.message for w in caught]


@contextlib.contextmanager
def _in_run(label: str) -> Iterator[None]:
    """A UserError of one grid point, as a plain UserError naming the point.

    Plain, because the flag a SettingError would name (`--max-num-seqs`) is not frontier's,
    and because only a plain one survives the trip back from a worker process."""
    try:
        yield
    except UserError as err:
        raise UserError(f"frontier: run {label}: {err}") from None


def _lookup(summary: dict, path: tuple[str, ...]) -> object:
    """The value at `path` in a summary, or None where a summary lacks it."""
    value: object = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _figure(summary: dict, path: tuple[str, ...]) -> float | None:
    value = _lookup(summary, path)
    return float(value) if isinstance(value, int | float) else None


def _replicated(summary: dict, path: tuple[str, ...]) -> tuple[float | None, ...]:
    """(mean, ci_low, ci_high) of a figure over a point's seeds (replay --seeds), or Nones."""
    block = summary.get("replications") or {}
    entry = block.get("figures", {}).get(".".join(path))
    if not isinstance(entry, dict):
        return None, None, None
    return entry["mean"], entry["ci_low"], entry["ci_high"]


def _count(summary: dict, path: tuple[str, ...]) -> int | None:
    value = _lookup(summary, path)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
    jobs: int | None = None,
    on_done: Callable[[], None] | None = None,
    seeds: int = 1,
) -> pl.DataFrame:
    """Replay every grid point into out_dir/runs/<label>/ and write out_dir/frontier.parquet.

    Everything a user can get wrong (a setting, a combination, the trace, a model that does
    not fit, the output directory) is refused before the first replay starts. With `seeds` > 1
    each point is replicated (seeds.py) and its row holds the means, with 95% intervals.
    """
    if seeds < 1:
        raise UserError(f"frontier: --seeds {seeds}: expected at least 1 replication")
    if jobs is not None and jobs < 1:
        raise UserError(f"frontier: jobs = {jobs} must be >= 1 (leave it out for one per core)")
    points = grid(varies)
    labels = [point_label(p) for p in points]
    scenarios = []
    for point, label in zip(points, labels, strict=True):
        with _in_run(label):
            overrides = {VARIABLES[name][0]: value for name, value in point.items()}
            scenarios.append(with_overrides(scenario, **overrides))
    stats, trace_tiers = trace_stats(trace)
    for label, point_scenario in zip(labels, scenarios, strict=True):
        with _in_run(label):
            build_fleet(point_scenario, stats)
            unknown_tiers(point_scenario, trace_tiers, point_scenario.gateway.unknown_tier)
    workers = max(1, min(jobs or os.cpu_count() or 1, len(points)))
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(atomic_dir(out_dir, FRONTIER_FILE, inputs=(trace,))))
        runs = tmp / RUNS_DIR
        runs.mkdir()
        taken: set[str] = set()
        tasks = [
            (i, label, trace, s, runs / run_dir_name(p, taken), seeds)
            for i, (p, label, s) in enumerate(zip(points, labels, scenarios, strict=True))
        ]
        summaries = _replay_all(tasks, workers, on_done or (lambda: None))
        table = frontier_table(points, summaries)
        table.write_parquet(tmp / FRONTIER_FILE)
    return table


def _replay_all(tasks: list[tuple], workers: int, on_done: Callable[[], None]) -> list[dict]:
    """Each task's summary, in task order, on `workers` local processes (executors.py).

    A failed or interrupted run stops the others (closing the executor's stream kills and
    joins them) before the caller removes the half-written output. Notices of the runs are
    issued here, so a worker's reach the terminal as one line too (and a message shared by
    every run once)."""
    summaries: dict[int, dict] = {}
    outcomes = LocalExecutor(workers).run(_replay_point, tasks)
    with contextlib.closing(outcomes):
        try:
            for index, result, error in outcomes:
                if error is not None:
                    raise error
                _, summary, notices = result
                summaries[index] = summary
                for notice in notices:
                    warnings.warn(notice, stacklevel=1)
                on_done()
        except WorkerDied as err:
            raise UserError(f"frontier: {err}") from None
    return [summaries[i] for i in range(len(tasks))]


def frontier_table(points: list[dict], summaries: list[dict]) -> pl.DataFrame:
    """One row per point: its settings, the figures, tokens/s per user, and the Pareto flag."""
    columns: dict[str, list] = {"run": [point_label(p) for p in points]}
    for name in points[0]:
        columns[name] = [p[name] for p in points]
    for column, path in COUNTS.items():
        columns[column] = [_count(s, path) for s in summaries]
    for column, path in FIGURES.items():
        columns[column] = [_figure(s, path) for s in summaries]
        if any("replications" in s for s in summaries):  # --seeds: the means, and intervals
            spans = [_replicated(s, path) for s in summaries]
            columns[column] = [m if m is not None else v for (m, _, _), v in zip(
                spans, columns[column], strict=True)]  # fmt: skip
            if column in INTERVAL_COLUMNS:
                columns[f"{column}_ci_low"] = [lo for _, lo, _ in spans]
                columns[f"{column}_ci_high"] = [hi for _, _, hi in spans]
    columns["output_tokens_per_s_per_user"] = [
        1.0 / t if t else None for t in columns["tpot_p50_s"]
    ]
    columns["pareto"] = pareto_mask(
        columns["usd_per_mtoken"], columns["output_tokens_per_s_per_user"]
    )
    types = {name: pl.Float64 for name in columns if name not in ("run", *points[0], *COUNTS)}
    types.pop("pareto", None)
    types |= {name: pl.Int64 for name in COUNTS}
    return pl.DataFrame(columns, schema_overrides=types, strict=False)
