"""One replay from trace to output directory: resolve, simulate, write, summarise.

Everything a user can get wrong (trace, scenario, model that does not fit, output path) is
checked before the simulation starts, and the output directory appears only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tomli_w

from tokenfleet import __version__
from tokenfleet.atomic import atomic_dir, check_replaceable_dir
from tokenfleet.errors import SettingError, UserError
from tokenfleet.replay.fleet import Fleet, TraceLengths, build_fleet
from tokenfleet.replay.loop import TRACE_COLUMNS, simulate
from tokenfleet.replay.records import (
    RAW_REQUESTS_FILE,
    REQUESTS_FILE,
    SCENARIO_FILE,
    SUMMARY_FILE,
    TIMELINE_FILE,
)
from tokenfleet.replay.records.pools import pool_costs
from tokenfleet.replay.records.quantiles import SKETCH_NOTE
from tokenfleet.replay.records.requests import (
    ALL_RECORDS,
    RecordsPolicy,
    RequestWriter,
    price_requests,
    sample_requests,
)
from tokenfleet.replay.records.summary import summarise, write_summary
from tokenfleet.replay.records.timeline import Timeline, TimelineWriter
from tokenfleet.replay.scenario import AUTO, Scenario, scenario_to_dict
from tokenfleet.replay.tiers import PRICE_KEYS, Tier
from tokenfleet.traces.reader import read_trace_batches, trace_metadata
from tokenfleet.traces.schema import PREFIX_BLOCK_SIZE_KEY


def trace_stats(
    path: str | os.PathLike[str], keep_lengths: bool = True, select: RowSelection | None = None
) -> tuple[TraceLengths, dict[str, int]]:
    """Span, requests per tier and, for sizing, every request's lengths (8 bytes a request;
    `keep_lengths=False` when no pool is "auto"), streamed (the reader validates every batch
    on the way); of the rows `select` keeps, if given."""
    n = 0
    first = last = 0.0
    prompt: list[np.ndarray] = []
    output: list[np.ndarray] = []
    tiers: dict[str, int] = {}
    meta = trace_metadata(path)
    block = meta["prefix_block_size"]
    columns = ["arrival_s", "prompt_tokens", "output_tokens", "tier"]
    hashed = "prefix_hashes" in meta["columns"]
    if hashed:
        columns.append("prefix_hashes")
    if select is not None:
        columns += [c for c in select.columns if c not in columns]
    batches = read_trace_batches(path, batch_rows=batch_rows(meta), columns=columns)
    if select is not None:
        batches = select(batches)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if hashed:
            _check_hashes(path, batch, block, n)
        for item in batch.column("tier").value_counts().to_pylist():
            tiers[item["values"]] = tiers.get(item["values"], 0) + item["counts"]
        arrivals = batch.column("arrival_s")
        if n == 0:
            first = arrivals[0].as_py()
        last = arrivals[-1].as_py()
        n += batch.num_rows
        if keep_lengths:
            prompt.append(batch.column("prompt_tokens").to_numpy())
            output.append(batch.column("output_tokens").to_numpy())
    prompts = np.concatenate(prompt) if prompt else np.zeros(0, np.int32)
    outputs = np.concatenate(output) if output else np.zeros(0, np.int32)
    return TraceLengths(n, last - first, prompts, outputs, block), tiers


class RowSelection(Protocol):
    """Which trace rows a replay keeps (a cell's share): called on the trace's batches, which
    hold at least `columns`, it yields the kept rows' batches in order."""

    columns: tuple[str, ...]

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]: ...


def batch_rows(meta: dict) -> int:
    """Rows per batch read from a trace: fewer with prefix hashes, whose lists pyarrow's reader
    holds several copies of (a trace of Mooncake prompts 10x longer, 300 ids each, peaked
    at 645 MB read 65,536 rows at a time, at 290 MB read 8,192)."""
    return 8_192 if "prefix_hashes" in meta["columns"] else 65_536


def _check_hashes(path, batch: pa.RecordBatch, block: int | None, first_row: int) -> None:
    """Prefix hashes need their block size, and at most one id per block of the prompt."""
    lengths = pc.list_value_length(batch.column("prefix_hashes")).fill_null(0).to_numpy()
    if not lengths.any():
        return
    if not block:
        raise UserError(
            f"{path}: prefix_hashes has no block size (the footer key "
            f"{PREFIX_BLOCK_SIZE_KEY.decode()} is {'0' if block == 0 else 'missing'}); "
            "write the trace with `tokenfleet traces convert` or set it to the tokens per id"
        )
    prompts = batch.column("prompt_tokens").to_numpy()
    over = np.flatnonzero(lengths > -(-prompts // block))
    if over.size:
        i = int(over[0])
        raise UserError(
            f"{path}: row {first_row + i}: prefix_hashes has {int(lengths[i]):,} ids, but its "
            f"{int(prompts[i]):,}-token prompt has {-(-int(prompts[i]) // block):,} blocks of "
            f"{block} tokens; one id per block, at most"
        )


def unknown_tiers(scenario: Scenario, trace_tiers: dict[str, int], policy: str) -> dict[str, int]:
    """Trace tiers missing from the scenario with their counts; refused under "reject"."""
    known = {t.name for t in scenario.tiers}
    unknown = {str(k): v for k, v in sorted(trace_tiers.items(), key=str) if k not in known}
    if unknown and policy == "reject":
        listed = ", ".join(f"{k!r} ({v:,} requests)" for k, v in unknown.items())
        raise SettingError(
            "unknown_tier",
            f"trace tiers {listed} are not in the scenario's tiers "
            f"({', '.join(sorted(known))}); add [[tiers]] for them or set "
            'unknown_tier = "default" under [gateway]',
        )
    return unknown


def run_replay(
    trace: str | os.PathLike[str],
    scenario: Scenario,
    out_dir: str | os.PathLike[str],
    *,
    step_by_step: bool = False,
    progress: bool = False,
    inputs: tuple = (),
    annotate: Callable[[Path, dict], None] | None = None,
    records: RecordsPolicy = ALL_RECORDS,
    replica_offset: int = 0,
    select: RowSelection | None = None,
    pool_timeline: bool = False,
) -> dict:
    """Replay `trace` through the scenario's fleet into `out_dir`; return the summary.
    `inputs` are the other files the run reads (scenario, model, profile): `out_dir` may not
    be replaced if that would delete one. `annotate(dir, summary)` may add to the summary and
    write files beside it before the directory appears (`replay --seeds`). `records` says
    what requests.parquet keeps (`--records`); a cell of `replay --cells` numbers its replicas
    from `replica_offset` and replays only the trace rows `select` keeps. `pool_timeline`
    writes one timeline row per pool per interval (`--timeline pool`)."""
    check_replaceable_dir(out_dir, SUMMARY_FILE, inputs=(trace, *inputs))
    stats, trace_tiers = trace_stats(trace, any(p.replicas == AUTO for p in scenario.pools), select)
    _check_interval(scenario.interval_s, stats)
    unknown = unknown_tiers(scenario, trace_tiers, scenario.gateway.unknown_tier)
    fleet, resolved = build_fleet(scenario, stats, step_by_step)
    rows = batch_rows(trace_metadata(trace))
    batches = read_trace_batches(trace, batch_rows=rows, columns=TRACE_COLUMNS)
    if select is not None:
        batches = select(batches)
    first = next(batches)
    id_type = first.schema.field("request_id").type
    with atomic_dir(out_dir, SUMMARY_FILE, inputs=(trace, *inputs)) as tmp:
        tmp = Path(tmp)
        (tmp / SCENARIO_FILE).write_text(tomli_w.dumps(scenario_to_dict(resolved)))
        requests = RequestWriter(
            tmp / RAW_REQUESTS_FILE,
            id_type,
            fleet.pool_of,
            [r.tp for r in fleet.replicas],
            replica_offset,
        )
        metadata = run_metadata(trace, resolved, fleet)
        timeline = TimelineWriter(
            tmp / TIMELINE_FILE,
            resolved.interval_s,
            fleet.pool_of,
            fleet.kv_blocks,
            fleet.rates,
            metadata,
            replica_offset,
            pool_timeline,
        )
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=round(stats.span_s), unit="s", desc="simulated", leave=False)

        def advance(now: float) -> None:
            bar.update(max(0, min(round(now), bar.total) - bar.n))

        try:
            end_s = simulate(
                _chain(first, batches),
                fleet.replicas,
                fleet.gateway,
                fleet.events,
                Timeline(
                    fleet.replicas,
                    resolved.interval_s,
                    timeline,
                    fleet.billers,
                    advance if bar is not None else None,
                ),
                fleet.ended,
                requests.write,
            )
        finally:
            if bar is not None:
                bar.close()
            requests.close()
            timeline.close()
        pools = pool_costs(fleet, timeline, end_s)
        gpu_s = requests.gpu_s_by_pool
        price_requests(
            tmp / RAW_REQUESTS_FILE,
            tmp / REQUESTS_FILE,
            resolved.tiers,
            {
                p["name"]: p["cost_usd"] / gpu_s[p["name"]] if gpu_s[p["name"]] else 0.0
                for p in pools
            },
            metadata,
        )
        (tmp / RAW_REQUESTS_FILE).unlink()
        replicas = sum(p["replicas"] for p in pools)
        summary = summarise(
            tmp, {"gpus": fleet.gpus, "replicas": replicas}, pools, end_s, records.exact
        )
        if not records.exact:
            rows = _keep_records(tmp / REQUESTS_FILE, records, resolved.seed, summary["requests"])
            summary["records"] = records_note(records, rows)
        summary["run"] = {
            key.removeprefix("tokenfleet."): value
            for key, value in metadata.items()
            if key not in ("tokenfleet.scenario", "tokenfleet.pools")
        }
        _label_tiers(summary["economics"]["tiers"], resolved.tiers)
        summary["gateway"] = _gateway_figures(fleet, unknown, resolved.gateway.default_tier)
        summary["seed"] = resolved.seed
        summary["step_by_step"] = step_by_step
        if pool_timeline:
            summary["timeline"] = "pool"
        if annotate is not None:
            annotate(tmp, summary)
        write_summary(tmp / SUMMARY_FILE, summary)
    return summary


def _keep_records(path: Path, records: RecordsPolicy, seed: int, rows: int) -> int:
    """Cut requests.parquet, summarised whole, down to what `--records` keeps; the rows kept.
    (Written whole first: the pricing pass needs every request, and the file is what the
    summary reads; what `none` saves is the output's disk and the summary's memory, not the
    writing.)"""
    if records.mode == "none":
        path.unlink()
        return 0
    if records.mode == "sample":
        return sample_requests(path, records.fraction, seed)
    return rows  # every record kept, percentiles sketched (a cell of replay --cells)


def records_note(records: RecordsPolicy, rows_written: int) -> dict:
    """The summary's `records` block: what requests.parquet keeps, and where the
    percentiles come from."""
    return {
        "mode": records.mode,
        "fraction": records.fraction,
        "rows_written": rows_written,
        "percentiles": SKETCH_NOTE,
    }


def run_metadata(trace, scenario: Scenario, fleet: Fleet) -> dict[str, str]:
    """What was simulated, as `tokenfleet.*` key-value metadata of both Parquet files (and the
    summary's "run"): per-pool values are joined with commas in pool order, and
    `tokenfleet.pools` (JSON) and `tokenfleet.scenario` (the resolved TOML) hold everything."""
    pools = fleet.pools

    def each(key: str) -> str:
        return ",".join("" if p[key] is None else str(p[key]) for p in pools)

    model = scenario.model
    return {
        "tokenfleet.version": __version__,
        "tokenfleet.trace": os.fspath(trace),
        "tokenfleet.model": model.name,
        "tokenfleet.dtype": model.dtype,
        "tokenfleet.kv_dtype": model.kv_dtype or model.dtype,
        "tokenfleet.max_model_len": str(fleet.max_model_len or ""),
        "tokenfleet.gpu": each("gpu"),
        "tokenfleet.tp": each("tp"),
        "tokenfleet.engine": each("engine"),
        "tokenfleet.batcher": each("batcher"),
        "tokenfleet.usd_per_gpu_hour": each("usd_per_gpu_hour"),
        "tokenfleet.seed": str(scenario.seed),
        "tokenfleet.pools": json.dumps(pools, sort_keys=True),
        "tokenfleet.scenario": tomli_w.dumps(scenario_to_dict(scenario)),
    }


MAX_INTERVALS = 10_000_000


def _check_interval(interval_s: float, stats: TraceLengths) -> None:
    """A timeline of billions of rows would exhaust memory long before it is written."""
    intervals = stats.span_s / interval_s
    if intervals > MAX_INTERVALS:
        raise SettingError(
            "interval_s",
            f"interval_s = {interval_s} gives {intervals:,.0f} timeline intervals over the "
            f"trace's {stats.span_s:,.0f} s; use interval_s = "
            f"{stats.span_s / MAX_INTERVALS:.3g} or more",
        )


def _label_tiers(figures: dict[str, dict], tiers: tuple[Tier, ...]) -> None:
    """Say of each tier whether it promises anything (goodput means nothing without an SLO)
    and whether its prices are the defaults (revenue the user never priced)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Tier)}
    for tier in tiers:
        if tier.name in figures:
            figures[tier.name]["has_slo"] = any(
                getattr(tier, k) > 0 for k in ("ttft_slo_s", "tpot_slo_s", "deadline_s")
            )
            figures[tier.name]["default_prices"] = all(
                getattr(tier, k) == defaults[k] for k in PRICE_KEYS
            )


def _gateway_figures(fleet: Fleet, unknown: dict[str, int], default_tier: str) -> dict:
    return {
        "unknown_tiers": unknown,
        "default_tier": default_tier,
        "retries": fleet.gateway.retries,
    }


def _chain(first: pa.RecordBatch, rest):
    yield first
    yield from rest
