"""The run's summary: latency, throughput and money, from the files the run wrote.

requests.parquet is read once, a batch at a time: the latency columns of finished requests go
into their distributions (quantiles.py: every value where the records are kept whole, a sketch
where they are not), everything else is summed as it goes, and the same pass feeds the money
and goodput sums (economics.py). timeline.parquet, one row per replica per
interval, is read whole. Every figure printed can so be recomputed from the files. Means and
sums are taken in numpy in file order (Polars sums in parallel chunks, whose order, and last
bit, varies), so summaries are byte-identical run to run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenfleet.replay.records import REQUESTS_FILE, ROW_GROUP_ROWS, TIMELINE_FILE
from tokenfleet.replay.records.economics import (
    ECONOMICS_COLUMNS,
    GROUP_KEYS,
    Groups,
    economics_parts,
    fleet_economics,
    prefix_cache_figures,
)
from tokenfleet.replay.records.quantiles import distribution

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft_s", "tpot_s", "e2e_s", "queue_s", "gateway_wait_s")
SUMMARY_COLUMNS = ["arrival_s", "finish_s", "preemptions", *LATENCIES[1:]]


class _RequestTotals:
    """What the summary needs from requests.parquet, gathered a batch at a time."""

    def __init__(self, exact: bool) -> None:
        self.status_counts: dict[str, int] = {}
        self.finished = 0
        self.first_arrival_s: float | None = None
        self.last_finish_s: float | None = None
        self.input_tokens = self.output_tokens = self.preemptions = 0
        self.latencies = {col: distribution(exact) for col in LATENCIES}
        self.last_ttft = np.zeros(0)  # the last batch's finished TTFTs (for economics.py)

    def add(self, batch: pa.RecordBatch, done: np.ndarray) -> None:
        for item in pc.value_counts(batch.column("status")).to_pylist():
            name = item["values"]
            self.status_counts[name] = self.status_counts.get(name, 0) + item["counts"]
        n = int(done.sum())
        self.last_ttft = np.zeros(0)
        if n == 0:
            return
        self.finished += n

        def finished(name: str) -> np.ndarray:
            return batch.column(name).to_numpy(zero_copy_only=False)[done]

        first = float(finished("arrival_s").min())
        last = float(finished("finish_s").max())
        if self.first_arrival_s is None or first < self.first_arrival_s:
            self.first_arrival_s = first
        if self.last_finish_s is None or last > self.last_finish_s:
            self.last_finish_s = last
        self.input_tokens += int(finished("prompt_tokens").sum(dtype=np.int64))
        self.output_tokens += int(finished("output_tokens").sum(dtype=np.int64))
        self.preemptions += int(finished("preemptions").sum(dtype=np.int64))
        for col in LATENCIES:  # nulls (no TPOT below two output tokens) become NaN
            values = finished(col).astype(np.float64)
            self.latencies[col].add(values)
            if col == "ttft_s":
                self.last_ttft = values

    def queue_share(self) -> float | None:
        """Share of finished requests' time in the system spent waiting in a replica queue."""
        if not self.finished:
            return None
        queue, e2e = (self.latencies[c].nansum() for c in ("queue_s", "e2e_s"))
        return float(queue / e2e) if e2e > 0 else None


def summarise(
    out_dir: Path,
    fleet: dict,
    pools: list[dict],
    end_s: float,
    exact: bool = True,
    request_files: list[Path] | None = None,
) -> dict:
    """The run's figures, from requests.parquet (one pass) and timeline.parquet. `fleet` gives
    `gpus` (the GPU count at the start) and `replicas`; `pools` each pool's cost and time;
    `exact=False` takes the percentiles from sketches (quantiles.py) in bounded memory;
    `request_files` are read in turn in place of out_dir/requests.parquet (replay --cells).

    Per-GPU throughput divides by `gpus_mean`, the GPUs provisioned on average over the run:
    the timeline's provisioned replica-seconds times each pool's tp (`gpu_hours_provisioned`),
    over the timeline's span. For a fixed fleet that is `gpus`; an autoscaled pool counts each
    replica from the moment it is asked for (provisioning included, when it costs money and
    serves nothing) until it is released.
    """
    totals = _RequestTotals(exact)
    groups = {key: Groups(key, exact) for key in GROUP_KEYS}
    columns = list(dict.fromkeys(ECONOMICS_COLUMNS + SUMMARY_COLUMNS))
    for path in request_files or [out_dir / REQUESTS_FILE]:
        # pre_buffer=False: pyarrow's default read ahead held most of the file in memory.
        parquet = pq.ParquetFile(path, pre_buffer=False)
        for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS, columns=columns):
            parts = economics_parts(batch)
            done = parts["finished"]
            totals.add(batch, done)
            for g in groups.values():
                g.add(batch, parts, done, totals.last_ttft)
    summary = _figures(totals, _timeline_figures(out_dir, pools, end_s), fleet, pools)
    summary["economics"] = fleet_economics(groups, pools, end_s)
    summary["prefix_cache"] = prefix_cache_figures(groups, pools)
    summary["prefix_cache"]["evicted_blocks"] = _evicted_blocks(out_dir)
    return summary


def _evicted_blocks(out_dir: Path) -> int:
    column = pq.read_table(out_dir / TIMELINE_FILE, columns=["evicted_blocks"]).column(0)
    return int(pc.sum(column).as_py() or 0)


def _timeline_figures(out_dir: Path, pools: list[dict], end_s: float) -> dict:
    """Sums and peaks over timeline.parquet, fleet-wide and per pool: none depends on the
    interval length (means are taken over steps or over the run, never over intervals)."""
    timeline = pl.read_parquet(
        out_dir / TIMELINE_FILE,
        columns=[
            "pool",
            "busy_s",
            "kv_peak_frac",
            "mean_batch",
            "max_batch",
            "steps",
            "prefill_tokens",
            "decode_tokens",
            "provisioned_s",
        ],
    )
    tp = {p["name"]: p["tp"] for p in pools}
    pool_tp = timeline["pool"].replace_strict(tp, return_dtype=pl.Int64).to_numpy()
    by_pool = {p["name"]: _load(timeline.filter(pl.col("pool") == p["name"]), p) for p in pools}
    return {
        "provisioned_gpu_s": float(np.sum(timeline["provisioned_s"].to_numpy() * pool_tp)),
        "span_s": end_s,
        "busy_s": float(np.sum(timeline["busy_s"].to_numpy())),
        "provisioned_s": float(np.sum(timeline["provisioned_s"].to_numpy())),
        "kv_max_peak": timeline["kv_peak_frac"].max(),
        "load": by_pool,
        "steps": int(timeline["steps"].sum()),
        "batch_sum": float(
            np.sum(timeline["mean_batch"].to_numpy() * timeline["steps"].to_numpy())
        ),
    }


def _load(rows: pl.DataFrame, pool: dict) -> dict:
    """What a planner reads as a pool's load: how full its steps run (sequences against
    max_num_seqs, tokens against the token budget), its KV peak, and the share of provisioned
    time a replica is running a step at all (near 1 at any real load: not headroom)."""
    steps = int(rows["steps"].sum())
    batch_sum = float(np.sum(rows["mean_batch"].to_numpy() * rows["steps"].to_numpy()))
    tokens = int(rows["prefill_tokens"].sum()) + int(rows["decode_tokens"].sum())
    provisioned = float(np.sum(rows["provisioned_s"].to_numpy()))
    mean_batch = batch_sum / steps if steps else None
    budget = pool.get("max_num_batched_tokens")
    return {
        "mean_batch": mean_batch,
        "peak_batch": int(rows["max_batch"].max() or 0),
        "batch_frac_mean": mean_batch / pool["max_num_seqs"] if steps else None,
        "tokens_per_step_mean": tokens / steps if steps else None,
        "token_budget_frac_mean": tokens / steps / budget if steps and budget else None,
        "kv_peak_frac": rows["kv_peak_frac"].max(),
        "step_busy_frac": float(np.sum(rows["busy_s"].to_numpy())) / provisioned
        if provisioned > 0
        else None,
    }


def _figures(totals: _RequestTotals, tl: dict, fleet: dict, pools: list[dict]) -> dict:
    finished = totals.finished
    start = totals.first_arrival_s or 0.0
    duration = (totals.last_finish_s - start) if finished else 0.0
    gpus = fleet["gpus"]
    span_s = tl["span_s"]
    gpus_mean = tl["provisioned_gpu_s"] / span_s if span_s > 0 else float(gpus)

    def per_s(x: float) -> float:
        return x / duration if duration > 0 else 0.0

    def per_gpu(x: float) -> float:
        return x / gpus_mean if gpus_mean > 0 else 0.0

    return {
        "requests": sum(totals.status_counts.values()),
        "finished": finished,
        "status_counts": totals.status_counts,
        "duration_s": duration,
        "replicas": fleet["replicas"],
        "gpus": gpus,
        "gpus_mean": gpus_mean,
        "gpu_hours_provisioned": tl["provisioned_gpu_s"] / 3600.0,
        "pools": pools,
        "throughput": {
            "requests_per_s": per_s(finished),
            "input_tokens_per_s": per_s(totals.input_tokens),
            "output_tokens_per_s": per_s(totals.output_tokens),
            "output_tokens_per_s_per_gpu": per_gpu(per_s(totals.output_tokens)),
            "input_tokens_per_s_per_gpu": per_gpu(per_s(totals.input_tokens)),
        },
        "tokens": {"input": totals.input_tokens, "output": totals.output_tokens},
        "latency_s": {col[:-2]: totals.latencies[col].figures(PERCENTILES) for col in LATENCIES},
        "preemptions": totals.preemptions,
        "steps": tl["steps"] or 0,
        "mean_batch": tl["batch_sum"] / tl["steps"] if tl["steps"] else None,
        # Share of provisioned replica time spent running a step (autoscaled pools change
        # size): busy, not loaded; the load figures are under "load", per pool.
        "step_busy_frac": tl["busy_s"] / tl["provisioned_s"] if tl["provisioned_s"] > 0 else None,
        "kv_peak_frac_max": tl["kv_max_peak"],
        "load": tl["load"],
        "queue_share": totals.queue_share(),
    }


def write_summary(path: Path, summary: dict) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
