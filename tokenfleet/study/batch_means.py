"""`replay --batches B`: a confidence interval from one run, by the method of batch means.

`--seeds` replicates a run, but a real trace replayed by a scenario without random choices is
the same run for every seed (its figures are marked `varies: false`): one long run is all the
evidence there is. Batch means cuts it, by arrival time, into B + 1 consecutive windows of whole
timeline intervals, leaves out the first (the warm-up: an empty fleet filling up), and computes
every summary figure for each of the other B as the summary does for the run: `summarise` over
the requests that arrived in the window, the window's timeline rows, and each pool's cost in
proportion to its provisioned time there (a rented pool's cost is; an owned pool's energy
follows its busy time, so its share is approximate). The interval is the same percentile
bootstrap of the mean as over replications (`intervals.py`), over the B window values.

It is valid when the windows are long against the system's memory (queues, caches, sessions):
then the window values are nearly independent. The block says how far that holds: the lag-1
autocorrelation of the window values of a few key figures, and `correlated: true` where one of
them is above CORRELATED (then the interval is too narrow: use fewer, longer windows). A
window's requests are the ones that arrived in it, finishing whenever they do; its figures
mix in the tails of its neighbours' work, which is what makes the windows of a long steady
run comparable.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenfleet.errors import UserError
from tokenfleet.replay.records import REQUESTS_FILE, TIMELINE_FILE
from tokenfleet.replay.records.summary import summarise
from tokenfleet.study.intervals import LEVEL, RESAMPLES
from tokenfleet.study.seeds import interval_figures

CORRELATED = 0.5  # lag-1 autocorrelation above which the windows are called dependent
# Figures whose windows' autocorrelation the block reports.
WATCHED = ("latency_s.ttft.mean", "latency_s.ttft.p99", "latency_s.e2e.mean", "latency_s.tpot.p50")


def batch_means(folder: Path, summary: dict, batches: int) -> dict:
    """The `batch_means` block of a finished run in `folder` (its requests.parquet with every
    record, timeline.parquet, and `summary`)."""
    if batches < 2:
        raise UserError(f"--batches {batches}: expected at least 2 windows")
    requests = pq.read_table(folder / REQUESTS_FILE)
    timeline = pq.read_table(folder / TIMELINE_FILE)
    arrivals = requests.column("arrival_s").to_numpy()
    interval = float(pc.max(timeline.column("interval_s")).as_py() or 0.0)
    first = math.floor(arrivals.min() / interval) if len(arrivals) and interval > 0 else 0
    last = math.floor(arrivals.max() / interval) if len(arrivals) and interval > 0 else -1
    count = last - first + 1
    if count < batches + 1:
        raise UserError(
            f"--batches {batches}: the trace's arrivals span {max(count, 0)} timeline intervals "
            f"of {interval:g} s, and batch means needs {batches + 1} (one of warm-up); use "
            "fewer batches or a shorter --interval"
        )
    # B windows of equal whole intervals; what does not divide evenly joins the warm-up.
    width = count // (batches + 1)
    warmup = count - batches * width
    edges = [(first + warmup + k * width) * interval for k in range(-1, batches)]
    edges[0] = first * interval
    edges.append((first + count) * interval)
    starts = timeline.column("interval_start_s").to_numpy()
    windows = []
    with tempfile.TemporaryDirectory(prefix="tokenfleet-batches-") as tmp:
        for k in range(1, batches + 1):
            lo, hi = edges[k], edges[k + 1]
            part = Path(tmp) / f"window-{k}"
            part.mkdir()
            pq.write_table(
                requests.filter((arrivals >= lo) & (arrivals < hi)), part / REQUESTS_FILE
            )
            rows = timeline.filter((starts >= lo) & (starts < hi))
            pq.write_table(rows, part / TIMELINE_FILE)
            fleet = {"gpus": summary["gpus"], "replicas": summary["replicas"]}
            pools = _pools_in(summary["pools"], rows, timeline)
            windows.append(_per_window(summarise(part, fleet, pools, hi - lo), hi - lo))
    figures = interval_figures(windows)
    lag1 = {key: _lag1(figures[key]["values"]) for key in WATCHED if key in figures}
    return {
        "batches": batches,
        "window_s": edges[2] - edges[1],
        "warmup_s": edges[1] - edges[0],
        "windows_s": [[edges[k], edges[k + 1]] for k in range(1, batches + 1)],
        "level": LEVEL,
        "method": (
            f"batch means: percentile bootstrap of the mean over {batches} windows of one run "
            f"({RESAMPLES:,} resamples), after a warm-up window"
        ),
        "lag1_autocorrelation": lag1,
        "correlated": any(r is not None and r > CORRELATED for r in lag1.values()),
        "figures": figures,
    }


def _per_window(summary: dict, length_s: float) -> dict:
    """A window's summary with its throughput over the window's length (the run's summary
    divides by first arrival to last finish, which for a window would add its requests'
    tails to a window's worth of arrivals)."""
    duration = summary["duration_s"]
    summary["throughput"] = {
        key: value * duration / length_s for key, value in summary["throughput"].items()
    }
    summary["duration_s"] = length_s
    return summary


def _pools_in(pools: list[dict], rows, timeline) -> list[dict]:
    """Each pool's cost and GPU time over a window: its share of the pool's provisioned (and
    busy) time falls in the window's rows."""

    def by_pool(table, column: str) -> dict:
        sums: dict = {}
        for name, value in zip(
            table.column("pool").to_pylist(), table.column(column).to_numpy(), strict=True
        ):
            sums[name] = sums.get(name, 0.0) + float(value)
        return sums

    held, held_all = by_pool(rows, "provisioned_s"), by_pool(timeline, "provisioned_s")
    busy, busy_all = by_pool(rows, "busy_s"), by_pool(timeline, "busy_s")
    out = []
    for pool in pools:
        name = pool["name"]
        share = held.get(name, 0.0) / held_all[name] if held_all.get(name) else 0.0
        busy_share = busy.get(name, 0.0) / busy_all[name] if busy_all.get(name) else 0.0
        out.append(
            {
                **pool,
                "cost_usd": pool["cost_usd"] * share,
                "charged_gpu_s": pool["charged_gpu_s"] * share,
                "busy_gpu_s": pool["busy_gpu_s"] * busy_share,
            }
        )
    return out


def _lag1(values: list[float]) -> float | None:
    """The lag-1 autocorrelation of a series (None when it does not vary)."""
    x = np.asarray(values, np.float64) - np.mean(values)
    denominator = float(np.dot(x, x))
    return float(np.dot(x[:-1], x[1:]) / denominator) if denominator > 0 else None
