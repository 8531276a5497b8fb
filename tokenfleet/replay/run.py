"""One replay from trace to output directory: resolve, simulate, write, summarise.

Everything a user can get wrong (trace, scenario, model that does not fit, output path) is
checked before the simulation starts, and the output directory appears only when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import tomli_w

from tokenfleet.atomic import atomic_dir
from tokenfleet.replay.engine import TRACE_COLUMNS, simulate
from tokenfleet.replay.fleet import TraceStats, build_fleet
from tokenfleet.replay.metrics import (
    REQUESTS_FILE,
    SUMMARY_FILE,
    TIMELINE_FILE,
    RequestWriter,
    TimelineWriter,
    summarise,
    write_summary,
)
from tokenfleet.replay.scenario import Scenario, scenario_to_dict
from tokenfleet.traces.reader import read_trace_batches

SCENARIO_FILE = "scenario.toml"


def trace_stats(path: str | os.PathLike[str]) -> TraceStats:
    """Rate and mean lengths, streamed (the reader validates every batch on the way)."""
    n = 0
    first = last = 0.0
    prompt = output = 0
    for batch in read_trace_batches(path, columns=["arrival_s", "prompt_tokens", "output_tokens"]):
        if batch.num_rows == 0:
            continue
        arrivals = batch.column("arrival_s")
        if n == 0:
            first = arrivals[0].as_py()
        last = arrivals[-1].as_py()
        n += batch.num_rows
        prompt += int(batch.column("prompt_tokens").to_numpy().sum(dtype="int64"))
        output += int(batch.column("output_tokens").to_numpy().sum(dtype="int64"))
    return TraceStats(n, last - first, prompt / max(n, 1), output / max(n, 1))


def run_replay(
    trace: str | os.PathLike[str],
    scenario: Scenario,
    out_dir: str | os.PathLike[str],
    *,
    step_by_step: bool = False,
    progress: bool = False,
) -> dict:
    """Replay `trace` through the scenario's fleet into `out_dir`; return the summary."""
    stats = trace_stats(trace)
    fleet, resolved = build_fleet(scenario, stats, step_by_step)
    batches = read_trace_batches(trace, columns=TRACE_COLUMNS)
    first = next(batches)
    id_type = first.schema.field("request_id").type
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        (tmp / SCENARIO_FILE).write_text(tomli_w.dumps(scenario_to_dict(resolved)))
        requests = RequestWriter(tmp / REQUESTS_FILE, id_type, fleet.pool_of)
        timeline = TimelineWriter(
            tmp / TIMELINE_FILE, resolved.interval_s, fleet.pool_of, fleet.kv_blocks
        )
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=round(stats.span_s), unit="s", desc="simulated", leave=False)

        def advance(now: float) -> None:
            bar.update(max(0, min(round(now), bar.total) - bar.n))

        try:
            simulate(
                _chain(first, batches),
                fleet.replicas,
                fleet.balancer,
                fleet.finished,
                requests.write,
                timeline.write,
                resolved.interval_s,
                advance if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()
            requests.close()
            timeline.close()
        summary = summarise(
            tmp, {"gpus": fleet.gpus, "replicas": len(fleet.replicas), "pools": fleet.pools}
        )
        summary["seed"] = resolved.seed
        summary["step_by_step"] = step_by_step
        write_summary(tmp / SUMMARY_FILE, summary)
    return summary


def _chain(first: pa.RecordBatch, rest):
    yield first
    yield from rest
