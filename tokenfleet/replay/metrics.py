"""Records of a replay: one row per request, one per replica per interval, and the summary.

The two Parquet files are written in batches as the simulation goes (memory stays bounded by
the requests in flight); the summary is computed afterwards from those files with Polars, so
every figure printed can be recomputed from the files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tokenfleet.replay.replica import Seq

REQUESTS_FILE = "requests.parquet"
TIMELINE_FILE = "timeline.parquet"
SUMMARY_FILE = "summary.json"


def requests_schema(request_id_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            ("request_id", request_id_type),
            ("tenant", pa.string()),
            ("tier", pa.string()),
            ("pool", pa.string()),
            ("replica", pa.int32()),
            ("arrival_s", pa.float64()),
            ("start_s", pa.float64()),
            ("first_token_s", pa.float64()),
            ("finish_s", pa.float64()),
            ("prompt_tokens", pa.int32()),
            ("output_tokens", pa.int32()),
            ("ttft_s", pa.float64()),
            ("tpot_s", pa.float64()),
            ("e2e_s", pa.float64()),
            ("queue_s", pa.float64()),
            ("preemptions", pa.int32()),
            ("status", pa.string()),
        ]
    )


TIMELINE_SCHEMA = pa.schema(
    [
        ("pool", pa.string()),
        ("replica", pa.int32()),
        ("interval_start_s", pa.float64()),
        ("interval_s", pa.float64()),
        ("busy_s", pa.float64()),
        ("steps", pa.int64()),
        ("mean_batch", pa.float64()),
        ("max_batch", pa.int32()),
        ("prefill_tokens", pa.int64()),
        ("decode_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("kv_peak_blocks", pa.int64()),
        ("kv_peak_frac", pa.float64()),
        ("requests_arrived", pa.int64()),
        ("requests_finished", pa.int64()),
        ("mean_in_system", pa.float64()),
    ]
)


class RequestWriter:
    """Appends finished (or refused) requests to requests.parquet in batches."""

    def __init__(self, path: Path, request_id_type: pa.DataType, pools: list[str]) -> None:
        self.schema = requests_schema(request_id_type)
        self.writer = pq.ParquetWriter(path, self.schema)
        self.pools = pools  # pool name of each replica index

    def write(self, seqs: list[Seq]) -> None:
        if not seqs:
            return
        arrival = np.array([s.arrival_s for s in seqs], dtype=np.float64)
        first = np.array(
            [math.nan if s.first_token_s is None else s.first_token_s for s in seqs], np.float64
        )
        finish = np.array(
            [math.nan if s.finish_s is None else s.finish_s for s in seqs], np.float64
        )
        start = np.array([math.nan if s.start_s is None else s.start_s for s in seqs], np.float64)
        out = np.array([s.output_tokens for s in seqs], dtype=np.int32)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(out >= 2, (finish - first) / (out - 1), math.nan)
        pools = self.pools
        columns = [
            pa.array([s.request_id for s in seqs], self.schema.field("request_id").type),
            pa.array([s.tenant for s in seqs], pa.string()),
            pa.array([s.tier for s in seqs], pa.string()),
            pa.array([pools[s.replica] if s.replica >= 0 else None for s in seqs], pa.string()),
            pa.array(np.array([s.replica for s in seqs], dtype=np.int32)),
            pa.array(arrival),
            _nullable(start),
            _nullable(first),
            _nullable(finish),
            pa.array(np.array([s.prompt_tokens for s in seqs], dtype=np.int32)),
            pa.array(out),
            _nullable(first - arrival),
            _nullable(tpot),
            _nullable(finish - arrival),
            _nullable(start - arrival),
            pa.array(np.array([s.preemptions for s in seqs], dtype=np.int32)),
            pa.array([s.status for s in seqs], pa.string()),
        ]
        self.writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def _nullable(arr: np.ndarray) -> pa.Array:
    return pa.array(arr, mask=np.isnan(arr))


class TimelineWriter:
    """Appends per-replica per-interval rows to timeline.parquet."""

    def __init__(self, path: Path, interval_s: float, pools: list[str], kv_blocks: list[int]):
        self.writer = pq.ParquetWriter(path, TIMELINE_SCHEMA)
        self.interval_s = interval_s
        self.pools = pools
        self.kv_blocks = kv_blocks

    def write(self, rows: list[tuple[int, int, list]]) -> None:
        """rows: (interval number, replica, accumulator) in output order."""
        if not rows:
            return
        size = self.interval_s
        acc = [r[2] for r in rows]
        replica = [r[1] for r in rows]
        steps = np.array([a[1] for a in acc], dtype=np.int64)
        batch_sum = np.array([a[2] for a in acc], dtype=np.float64)
        kv_peak = np.array([a[6] for a in acc], dtype=np.int64)
        capacity = np.array([self.kv_blocks[i] for i in replica], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_batch = np.where(steps > 0, batch_sum / steps, 0.0)
        columns = [
            pa.array([self.pools[i] for i in replica], pa.string()),
            pa.array(np.array(replica, dtype=np.int32)),
            pa.array(np.array([r[0] * size for r in rows], dtype=np.float64)),
            pa.array(np.full(len(rows), size, dtype=np.float64)),
            pa.array(np.array([a[0] for a in acc], dtype=np.float64)),
            pa.array(steps),
            pa.array(mean_batch),
            pa.array(np.array([a[3] for a in acc], dtype=np.int32)),
            pa.array(np.array([a[4] for a in acc], dtype=np.int64)),
            pa.array(np.array([a[5] for a in acc], dtype=np.int64)),
            pa.array(np.array([a[10] for a in acc], dtype=np.int64)),
            pa.array(kv_peak),
            pa.array(kv_peak / capacity),
            pa.array(np.array([a[7] for a in acc], dtype=np.int64)),
            pa.array(np.array([a[8] for a in acc], dtype=np.int64)),
            pa.array(np.array([a[9] for a in acc], dtype=np.float64) / size),
        ]
        self.writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=TIMELINE_SCHEMA))

    def close(self) -> None:
        self.writer.close()


PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft_s", "tpot_s", "e2e_s", "queue_s")


def summarise(out_dir: Path, fleet: dict) -> dict:
    """The run's figures, from requests.parquet and timeline.parquet; `fleet` describes pools."""
    requests = pl.scan_parquet(out_dir / REQUESTS_FILE)
    timeline = pl.scan_parquet(out_dir / TIMELINE_FILE)
    done = requests.filter(pl.col("status") == "finished")
    aggs = [
        pl.len().alias("finished"),
        pl.col("arrival_s").min().alias("first_arrival_s"),
        pl.col("finish_s").max().alias("last_finish_s"),
        pl.col("prompt_tokens").cast(pl.Int64).sum().alias("input_tokens"),
        pl.col("output_tokens").cast(pl.Int64).sum().alias("output_tokens"),
        pl.col("preemptions").cast(pl.Int64).sum().alias("preemptions"),
    ]
    for col in LATENCIES:
        for p in PERCENTILES:
            aggs.append(pl.col(col).quantile(p / 100, "linear").alias(f"{col}:p{p}"))
    row = done.select(aggs).collect().row(0, named=True)
    # Float means in numpy: Polars sums in parallel chunks, whose order (and last bit) varies.
    latencies = done.select(LATENCIES).collect()
    for col in LATENCIES:
        row[f"{col}:mean"] = _mean(latencies[col].to_numpy())
    counts = requests.group_by("status").len().collect()
    by_status = dict(zip(counts["status"].to_list(), counts["len"].to_list(), strict=True))
    tl_cols = timeline.select("busy_s", "kv_peak_frac", "mean_batch", "steps").collect()
    active = tl_cols.filter(pl.col("steps") > 0)
    tl = {
        "busy_s": float(np.sum(tl_cols["busy_s"].to_numpy())),
        "kv_mean_peak": _mean(tl_cols["kv_peak_frac"].to_numpy()),
        "kv_max_peak": tl_cols["kv_peak_frac"].max(),
        "mean_batch": _mean(active["mean_batch"].to_numpy()),
        "steps": int(tl_cols["steps"].sum()),
    }
    finished = row["finished"]
    start = row["first_arrival_s"] or 0.0
    duration = (row["last_finish_s"] - start) if finished else 0.0
    gpus = fleet["gpus"]
    replicas = fleet["replicas"]

    def per_s(x: float) -> float:
        return x / duration if duration > 0 else 0.0

    summary = {
        "requests": sum(by_status.values()),
        "finished": finished,
        "status_counts": by_status,
        "duration_s": duration,
        "replicas": replicas,
        "gpus": gpus,
        "pools": fleet["pools"],
        "throughput": {
            "requests_per_s": per_s(finished),
            "input_tokens_per_s": per_s(row["input_tokens"] or 0),
            "output_tokens_per_s": per_s(row["output_tokens"] or 0),
            "output_tokens_per_s_per_gpu": per_s(row["output_tokens"] or 0) / gpus,
            "input_tokens_per_s_per_gpu": per_s(row["input_tokens"] or 0) / gpus,
        },
        "tokens": {"input": row["input_tokens"] or 0, "output": row["output_tokens"] or 0},
        "latency_s": {
            col[:-2]: {
                "mean": row[f"{col}:mean"],
                **{f"p{p}": row[f"{col}:p{p}"] for p in PERCENTILES},
            }
            for col in LATENCIES
        },
        "preemptions": row["preemptions"] or 0,
        "steps": tl["steps"] or 0,
        "mean_batch": tl["mean_batch"],
        "gpu_busy_frac": (tl["busy_s"] or 0.0) / (replicas * duration) if duration > 0 else 0.0,
        "kv_peak_frac_mean": tl["kv_mean_peak"],
        "kv_peak_frac_max": tl["kv_max_peak"],
    }
    return summary


def _mean(values: np.ndarray) -> float | None:
    """Mean ignoring nulls (NaN), None when there are none; deterministic."""
    values = values[~np.isnan(values)]
    return float(np.mean(values)) if values.size else None


def write_summary(path: Path, summary: dict) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def format_summary(summary: dict) -> str:
    """The terminal table: every figure here is also in summary.json."""

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1e3:,.1f}"

    tp = summary["throughput"]
    pools = ", ".join(
        f"{p['name']}: {p['replicas']} x {p['gpu']} tp{p['tp']} {p['batcher']}"
        for p in summary["pools"]
    )
    lines = [
        f"fleet        {pools}",
        f"requests     {summary['finished']:,} finished of {summary['requests']:,} "
        f"in {summary['duration_s']:,.1f} s simulated",
        f"throughput   {tp['requests_per_s']:,.2f} req/s, "
        f"{tp['input_tokens_per_s']:,.0f} input tok/s, "
        f"{tp['output_tokens_per_s']:,.0f} output tok/s "
        f"({tp['output_tokens_per_s_per_gpu']:,.0f} per GPU)",
        "",
        f"{'latency (ms)':<14}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}",
    ]
    names = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E", "queue": "queueing"}
    for key, label in names.items():
        lat = summary["latency_s"][key]
        lines.append(
            f"{label:<14}{ms(lat['mean']):>10}{ms(lat['p50']):>10}"
            f"{ms(lat['p90']):>10}{ms(lat['p99']):>10}"
        )
    kv_mean = summary["kv_peak_frac_mean"]
    lines += [
        "",
        f"preemptions  {summary['preemptions']:,}",
        f"GPU busy     {summary['gpu_busy_frac']:.1%}",
        "KV peak      "
        + ("-" if kv_mean is None else f"{kv_mean:.1%} mean, {summary['kv_peak_frac_max']:.1%} max")
        + " (per replica per interval)",
    ]
    return "\n".join(lines)
