"""`replay --seeds N`: N independent replications of one replay, and a mean with a 95%
confidence interval for every summary figure.

Replication k (k = 0 .. N-1) runs with the scenario's seed + k. The seed draws the balancer's
random choices (random, power-of-two, the session ring), the clients' retry jitter, and, for a
synthetic trace (`traces synth` keeps its spec in the file's footer), the trace itself: it is
re-drawn from that spec with its seed + k (arrivals, lengths, tenants, sessions), so the
replications sample the traffic's randomness too. A real trace is replayed as it is: there
only the scenario's random choices vary, and a figure that no seed moves is reported as such
(`varies: false`) rather than as a certain value.

The interval is a percentile bootstrap of the mean over the replications (RESAMPLES resamples
of the N values, drawn with a fixed seed so the summary is deterministic): replications are
independent and identically distributed by construction, which is what the bootstrap needs,
and it makes no normality assumption about tail figures such as a p99. With few replications
it is too narrow (for a normal figure it covered the true mean 82% of the time at N = 5, 91%
at N = 10 and 93% at N = 20, 1,000 draws each), so the README recommends N >= 10.

Replication 0 writes the run's records (requests.parquet, timeline.parquet) as a single replay
does; every replication's summary is kept under `seeds/seed-S.json`, and summary.json gains a
`replications` block.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tokenfleet.atomic import check_replaceable_dir
from tokenfleet.errors import UserError
from tokenfleet.replay.records import SUMMARY_FILE
from tokenfleet.replay.records.requests import ALL_RECORDS, RecordsPolicy
from tokenfleet.replay.records.summary import write_summary
from tokenfleet.replay.run import run_replay
from tokenfleet.replay.scenario import Scenario
from tokenfleet.study.compare import flatten
from tokenfleet.study.intervals import LEVEL, RESAMPLES, bootstrap_interval
from tokenfleet.traces.reader import open_trace
from tokenfleet.traces.synth import SYNTH_METADATA_KEY, SynthSpec, synth_trace

SEEDS_DIR = "seeds"
# Figures that describe the run rather than measure it: not given an interval.
NOT_FIGURES = ("seed", "step_by_step", "run.")


def run_seeds(
    trace: str | os.PathLike[str],
    scenario: Scenario,
    out_dir: str | os.PathLike[str],
    seeds: int,
    *,
    step_by_step: bool = False,
    progress: bool = False,
    inputs: tuple = (),
    records: RecordsPolicy = ALL_RECORDS,
    replay_fn: Callable[..., dict] = run_replay,
) -> dict:
    """Replay `seeds` replications into `out_dir` (see the module docstring); return
    replication 0's summary with the `replications` block. `replay_fn` is run_replay or one
    with its signature (cells.run_cells with its cell count bound)."""
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: expected at least 1 replication")
    replay = functools.partial(
        replay_fn, step_by_step=step_by_step, progress=progress, records=records
    )
    if seeds == 1:
        return replay(trace, scenario, out_dir, inputs=inputs)
    check_replaceable_dir(out_dir, SUMMARY_FILE, inputs=(trace, *inputs))
    spec = synthetic_spec(trace)
    others = []
    with tempfile.TemporaryDirectory(prefix="tokenfleet-seeds-") as tmp:
        for k in range(1, seeds):
            source = replication_trace(trace, spec, k, Path(tmp))
            others.append(
                replay(
                    source,
                    dataclasses.replace(scenario, seed=scenario.seed + k),
                    Path(tmp) / f"run-{k}",
                )
            )
            if source != trace:
                os.unlink(source)

    def annotate(folder: Path, summary: dict) -> None:
        runs = [summary, *others]
        (folder / SEEDS_DIR).mkdir()
        for run in runs:
            write_summary(folder / SEEDS_DIR / f"seed-{run['seed']}.json", run)
        summary["replications"] = replications(runs, redrawn=spec is not None)

    return replay(trace, scenario, out_dir, inputs=inputs, annotate=annotate)


def replication_trace(
    trace: str | os.PathLike[str], spec: SynthSpec | None, k: int, folder: Path
) -> str | os.PathLike[str]:
    """The trace replication k replays: the trace itself, or, for a synthetic trace (its
    `spec`) and k > 0, the spec re-drawn with its seed + k, written into `folder`."""
    if spec is None or k == 0:
        return trace
    path = folder / f"trace-{k}.parquet"
    synth_trace(path, dataclasses.replace(spec, seed=spec.seed + k))
    return path


def synthetic_spec(trace: str | os.PathLike[str]) -> SynthSpec | None:
    """The spec `traces synth` wrote into the trace's footer, or None for any other trace."""
    raw = (open_trace(trace).schema_arrow.metadata or {}).get(SYNTH_METADATA_KEY)
    if raw is None:
        return None
    try:
        spec = SynthSpec(**json.loads(raw))
    except (ValueError, TypeError) as err:
        raise UserError(
            f"{trace}: footer key {SYNTH_METADATA_KEY.decode()} is not a synthetic trace's "
            f"spec ({err}); re-write the trace with `tokenfleet traces synth`"
        ) from None
    if spec.lengths_from and not Path(spec.lengths_from).is_file():
        raise UserError(
            f"{trace}: re-drawing this synthetic trace per seed needs --lengths-from "
            f"{spec.lengths_from}, which is gone; put it back or run --seeds 1"
        )
    return spec


def replications(runs: list[dict], redrawn: bool) -> dict:
    """The `replications` block: per numeric figure every run has, the values in seed order,
    their mean and the bootstrap interval of the mean."""
    return {
        "seeds": [run["seed"] for run in runs],
        "level": LEVEL,
        "method": (
            f"percentile bootstrap of the mean over {len(runs)} independent replications "
            f"({RESAMPLES:,} resamples)"
        ),
        "trace_redrawn": redrawn,
        "figures": interval_figures(runs),
    }


def interval_figures(runs: list[dict]) -> dict:
    """Per numeric figure all `runs` (summaries) have: their values in order, the mean and
    the bootstrap interval of the mean, and whether the values vary at all."""
    flats = [flatten(run) for run in runs]
    names = [
        key
        for key, value in flats[0].items()
        if _is_number(value)
        and not key.startswith(NOT_FIGURES)
        and all(_is_number(flat.get(key)) for flat in flats[1:])
    ]
    values = np.array([[flat[key] for flat in flats] for key in names], dtype=np.float64)
    low, high = bootstrap_interval(values)
    return {
        key: {
            "mean": float(row.mean()),
            "ci_low": float(lo),
            "ci_high": float(hi),
            "varies": bool(row.min() != row.max()),
            "values": row.tolist(),
        }
        for key, row, lo, hi in zip(names, values, low, high, strict=True)
    }


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
