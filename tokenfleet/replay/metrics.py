"""Records of a replay: one row per request, one per replica per interval, and the summary.

The two Parquet files are written in batches as the simulation goes (memory stays bounded by
the requests in flight); the summary is computed afterwards from those files with Polars, so
every figure printed can be recomputed from the files.

Money: each request carries its GPU-seconds (its token share of every step it took part in;
replica.py). Once the run is over and each pool's cost is known (cost.py), requests.parquet is
rewritten batch by batch with `cost_usd` = gpu_s x (pool cost / the pool's total gpu_s): the
pool's idle (and unattributable padding) time is spread in proportion to the work, so the
requests of a pool add up to its cost. Revenue and SLOs come from the tier's prices and
promises (tiers.py). Float sums are taken in numpy, in file order, so outputs stay
byte-identical run to run.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenfleet.replay.records.rowgroups import RowGroups
from tokenfleet.replay.request import Seq
from tokenfleet.replay.tiers import (
    PRICE_AND_SLO_KEYS,
    TOKENS_PER_MTOKEN,
    Tier,
    revenue_expr,
    slo_met_expr,
)

REQUESTS_FILE = "requests.parquet"
RAW_REQUESTS_FILE = ".requests-raw.arrow"  # before costs are known; removed after
TIMELINE_FILE = "timeline.parquet"
SUMMARY_FILE = "summary.json"
ROW_GROUP_ROWS = 65_536  # rows per row group of the output files (at least; whole batches)
# Dictionary-encode only the low-cardinality strings: trying it on columns of unique floats
# doubled the time to write and to read the files.
DICTIONARY_COLUMNS = ["tenant", "tier", "pool", "status"]


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
            ("attempts", pa.int32()),
            ("gpu_s", pa.float64()),
            ("prefill_gpu_s", pa.float64()),
        ]
    )


def priced_schema(request_id_type: pa.DataType) -> pa.Schema:
    """requests.parquet as written at the end: the raw columns plus money and SLO."""
    return (
        requests_schema(request_id_type)
        .append(pa.field("cost_usd", pa.float64()))
        .append(pa.field("revenue_usd", pa.float64()))
        .append(pa.field("slo_met", pa.bool_()))
    )


class RequestWriter:
    """Appends finished (or refused) requests, in batches, to the raw file: Arrow IPC, which is
    written and read back (once, by `price_requests`) with no encoding, unlike Parquet."""

    def __init__(
        self, path: Path, request_id_type: pa.DataType, pools: list[str], tp: list[int]
    ) -> None:
        self.schema = requests_schema(request_id_type)
        self.writer = pa.ipc.new_file(path, self.schema)
        self.pool_of = pa.array(pools, pa.string())  # pool name of each replica index
        self.tp = np.array(tp, dtype=np.float64)  # GPUs of each replica
        self.pool_names = list(dict.fromkeys(pools))
        self.pool_ix = np.array([self.pool_names.index(p) for p in pools], dtype=np.int64)
        self.gpu_s_sum = np.zeros(len(self.pool_names))
        self.batches = RowGroups(self.writer.write_table)

    def write(self, seqs: list[Seq]) -> None:
        """Convert a (small) batch of finished requests now, while their objects are still in
        the CPU cache; write them out a row group at a time."""
        if not seqs:
            return
        # One pass over the requests, then columns: a batch's Seq objects lie scattered in
        # memory, and a pass per column (one cache miss per request each) cost 3x as much.
        (
            ids,
            tenants,
            tiers,
            where,
            arrival,
            start,
            first,
            finish,
            prompt,
            out,
            preemptions,
            status,
            attempts,
            prefill_s,
            decode_s,
        ) = zip(
            *[
                (
                    s.request_id,
                    s.tenant,
                    s.tier,
                    s.replica,
                    s.arrival_s,
                    s.start_s,
                    s.first_token_s,
                    s.finish_s,
                    s.prompt_tokens,
                    s.output_tokens,
                    s.preemptions,
                    s.status,
                    s.attempts,
                    s.prefill_s,
                    s.decode_s,
                )
                for s in seqs
            ],
            strict=True,
        )
        arrival = np.array(arrival, dtype=np.float64)
        start = np.array(start, dtype=np.float64)  # None (never started) becomes NaN
        first = np.array(first, dtype=np.float64)
        finish = np.array(finish, dtype=np.float64)
        out = np.array(out, dtype=np.int32)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(out >= 2, (finish - first) / (out - 1), math.nan)
        replica = np.array(where, dtype=np.int64)  # -1: never reached a replica
        routed = replica >= 0
        gpus = np.where(routed, self.tp[replica], 0.0)
        prefill = np.array(prefill_s, dtype=np.float64) * gpus
        gpu_s = prefill + np.array(decode_s, dtype=np.float64) * gpus
        names = self.pool_of.take(pa.array(replica, mask=~routed))
        self.gpu_s_sum += np.bincount(  # sequential sums, in file order: deterministic
            self.pool_ix[replica[routed]], weights=gpu_s[routed], minlength=len(self.pool_names)
        )
        columns = [
            pa.array(ids, self.schema.field("request_id").type),
            pa.array(tenants, pa.string()),
            pa.array(tiers, pa.string()),
            names,
            pa.array(replica.astype(np.int32)),
            pa.array(arrival),
            _nullable(start),
            _nullable(first),
            _nullable(finish),
            pa.array(np.array(prompt, dtype=np.int32)),
            pa.array(out),
            _nullable(first - arrival),
            _nullable(tpot),
            _nullable(finish - arrival),
            _nullable(start - arrival),
            pa.array(np.array(preemptions, dtype=np.int32)),
            pa.array(status, pa.string()),
            pa.array(np.array(attempts, dtype=np.int32)),
            pa.array(gpu_s),
            pa.array(prefill),
        ]
        self.batches.add(pa.RecordBatch.from_arrays(columns, schema=self.schema))

    def close(self) -> None:
        self.batches.flush()
        self.writer.close()

    @property
    def gpu_s_by_pool(self) -> dict[str, float]:
        return dict(zip(self.pool_names, self.gpu_s_sum.tolist(), strict=True))


def _nullable(arr: np.ndarray) -> pa.Array:
    return pa.array(arr, mask=np.isnan(arr))


def price_requests(
    raw: Path,
    out: Path,
    tiers: tuple[Tier, ...],
    default_tier: str,
    usd_per_gpu_s: dict[str, float],
) -> None:
    """requests.parquet from the raw records: the tier each request was billed as (a trace tier
    missing from the scenario is the default tier), its attributed cost, its revenue (finished
    requests pay their tier's prices; nothing is cached) and whether it met its tier's SLOs."""
    source = pa.OSFile(str(raw))  # read batch by batch into memory freed as it goes
    reader = pa.ipc.open_file(source)
    schema = priced_schema(reader.schema.field("request_id").type)
    names = [t.name for t in tiers]
    by_name = {t.name: t for t in tiers}
    price_cols = {
        key: {n: float(getattr(by_name[n], key)) for n in names} for key in PRICE_AND_SLO_KEYS
    }
    finished = pl.col("status") == "finished"
    # Snappy finds nothing to squeeze in unique floats: store them as they are (+4% size,
    # -20% time to write).
    compression = {f.name: "none" if pa.types.is_floating(f.type) else "snappy" for f in schema}
    with (
        source,
        pq.ParquetWriter(
            out, schema, use_dictionary=DICTIONARY_COLUMNS, compression=compression
        ) as writer,
    ):
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            frame = pl.from_arrow(batch).with_columns(
                tier=pl.when(pl.col("tier").is_in(names))
                .then(pl.col("tier"))
                .otherwise(pl.lit(default_tier))
            )
            work = frame.with_columns(
                *(
                    pl.col("tier").replace_strict(m, return_dtype=pl.Float64).alias(k)
                    for k, m in price_cols.items()
                ),
                cached_tokens=pl.lit(0),
                tpot_s=pl.col("tpot_s").fill_null(0.0),
            )
            money = work.select(
                cost_usd=pl.col("gpu_s")
                * pl.col("pool").replace_strict(
                    usd_per_gpu_s, default=0.0, return_dtype=pl.Float64
                ),
                revenue_usd=pl.when(finished).then(revenue_expr()).otherwise(0.0),
                slo_met=(finished & slo_met_expr()).fill_null(False),
            )
            table = pl.concat([frame, money], how="horizontal").to_arrow()
            writer.write_table(table.select(schema.names).cast(schema))


ECONOMICS_COLUMNS = [
    "tier",
    "tenant",
    "status",
    "prompt_tokens",
    "output_tokens",
    "gpu_s",
    "prefill_gpu_s",
    "cost_usd",
    "revenue_usd",
    "slo_met",
    "ttft_s",
]


def economics(out_dir: Path, pools: list[dict], run_s: float) -> dict:
    """Money and goodput: for the fleet, and per tier and per tenant, from requests.parquet.

    Cost per Mtoken is over the tokens of finished requests; its input part is the cost of the
    prefill GPU time. Utilisation is busy GPU time over the fleet's charged GPU time. The file
    is read a batch at a time: memory holds only the finished requests' TTFTs (for their
    percentiles) and a group code per key; sums run in file order, the same run to run."""
    charged_gpu_s = sum(p["charged_gpu_s"] for p in pools)
    groups = {key: _Groups(key) for key in ("fleet", "tier", "tenant")}
    ttfts = []
    # pre_buffer=False: pyarrow's default read ahead held most of the file in memory.
    parquet = pq.ParquetFile(out_dir / REQUESTS_FILE, pre_buffer=False)
    for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS, columns=ECONOMICS_COLUMNS):
        parts = _economics_parts(batch)
        done = parts["finished"]
        ttfts.append(batch.column("ttft_s").to_numpy(zero_copy_only=False)[done])
        for g in groups.values():
            g.add(batch, parts, done)
    ttft = np.concatenate(ttfts) if ttfts else np.zeros(0)
    cost = sum(p["cost_usd"] for p in pools)
    # The fleet's $/Mtoken is over the pools' whole cost, idle time included.
    fleet = groups["fleet"].figures(ttft, charged_gpu_s, cost)["(all)"]
    fleet.update(
        cost_usd=cost,
        margin_usd=fleet["revenue_usd"] - cost,
        margin_frac=(fleet["revenue_usd"] - cost) / fleet["revenue_usd"]
        if fleet["revenue_usd"]
        else None,
        # A pool that served nothing has no requests to carry its cost.
        unattributed_usd=sum(p["cost_usd"] for p in pools if not p["busy_gpu_s"]),
        gpu_hours_charged=charged_gpu_s / 3600.0,
        run_s=run_s,
    )
    return {
        "fleet": fleet,
        "tiers": groups["tier"].figures(ttft, charged_gpu_s),
        "tenants": groups["tenant"].figures(ttft, charged_gpu_s),
    }


def _economics_parts(batch: pa.RecordBatch) -> dict[str, np.ndarray | None]:
    """Per request of a batch, what each summed figure adds (None: one per request)."""
    status = batch.column("status")
    done = pc.equal(status, "finished").to_numpy(zero_copy_only=False)
    slo = batch.column("slo_met").to_numpy(zero_copy_only=False)
    prompt = batch.column("prompt_tokens").to_numpy().astype(np.float64)
    output = batch.column("output_tokens").to_numpy().astype(np.float64)
    gpu = batch.column("gpu_s").to_numpy()
    cost = batch.column("cost_usd").to_numpy()
    share = np.divide(
        batch.column("prefill_gpu_s").to_numpy(), gpu, out=np.zeros_like(gpu), where=gpu > 0
    )
    return {
        "requests": None,
        "finished": done,
        "rate_limited": pc.equal(status, "rate_limited").to_numpy(zero_copy_only=False),
        "expired": pc.equal(status, "expired").to_numpy(zero_copy_only=False),
        "too_long": pc.equal(status, "too_long").to_numpy(zero_copy_only=False),
        "goodput_requests": slo,
        "goodput_tokens": np.where(slo, prompt + output, 0.0),
        "gpu_s": gpu,
        "cost_usd": cost,
        "revenue_usd": batch.column("revenue_usd").to_numpy(),
        "cost_in_usd": cost * share,
        "tokens_in": np.where(done, prompt, 0.0),
        "tokens_out": np.where(done, output, 0.0),
    }


class _Groups:
    """Running sums per group of one key (a tier, a tenant; "fleet": one group of all)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.names: dict[str, int] = {"(all)": 0} if key == "fleet" else {}  # name -> code
        self.sums: dict[str, np.ndarray] = {}
        self.done_codes: list[np.ndarray] = []  # the group of each finished request, in order

    def add(self, batch: pa.RecordBatch, parts: dict, done: np.ndarray) -> None:
        if self.key == "fleet":
            codes = np.zeros(batch.num_rows, dtype=np.int32)
        else:
            column = batch.column(self.key).cast(pa.string()).fill_null("(none)")
            column = column.dictionary_encode()
            names = column.dictionary.to_pylist()
            lookup = np.array([self.names.setdefault(n, len(self.names)) for n in names], np.int32)
            codes = lookup[column.indices.to_numpy(zero_copy_only=False)]
        groups = len(self.names)
        for name, weights in parts.items():  # the same order of sums run to run
            if groups == 1:  # one group (the fleet, or a trace with one tier): a plain sum
                total = np.array([len(codes) if weights is None else weights.sum()], np.float64)
            else:
                total = np.bincount(codes, weights=weights, minlength=groups).astype(np.float64)
            old = self.sums.get(name)
            if old is not None:
                total[: len(old)] += old
            self.sums[name] = total
        self.done_codes.append(codes[done])

    def figures(
        self, ttft: np.ndarray, charged_gpu_s: float, cost_usd: float | None = None
    ) -> dict[str, dict]:
        """Each group's figures, by group name in sorted order (`ttft`: the finished requests',
        in file order); $/Mtoken over `cost_usd` if given, else over its requests' cost."""
        codes = np.concatenate(self.done_codes) if self.done_codes else np.zeros(0, np.int32)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(self.names) + 1))
        out = {}
        for name, code in sorted(self.names.items()):
            sums = defaultdict(float)  # a file with no rows: every sum is zero
            sums.update({k: float(v[code]) for k, v in self.sums.items() if code < len(v)})
            times = ttft[order[bounds[code] : bounds[code + 1]]]
            n = int(sums["requests"])
            revenue, cost, gpu_s = sums["revenue_usd"], sums["cost_usd"], sums["gpu_s"]
            figures = {
                "requests": n,
                "finished": int(sums["finished"]),
                "rate_limited": int(sums["rate_limited"]),
                "expired": int(sums["expired"]),
                "too_long": int(sums["too_long"]),
                "goodput_requests": int(sums["goodput_requests"]),
                "goodput_tokens": int(sums["goodput_tokens"]),
                "goodput_frac": sums["goodput_requests"] / n if n else None,
                "gpu_hours": gpu_s / 3600.0,
                "utilisation": gpu_s / charged_gpu_s if charged_gpu_s > 0 else None,
                "cost_usd": cost,
                "revenue_usd": revenue,
                "margin_usd": revenue - cost,
                "ttft_s": {
                    f"p{p}": float(np.percentile(times, p)) if times.size else None
                    for p in (50, 99)
                },
                "usd_per_mtoken": _per_mtoken(
                    cost if cost_usd is None else cost_usd,
                    sums["cost_in_usd"],
                    int(sums["tokens_in"]),
                    int(sums["tokens_out"]),
                ),
            }
            out[name] = figures
        return out


def _per_mtoken(cost: float, cost_in: float, tokens_in: int, tokens_out: int) -> dict:
    """$ per million input, output and all tokens of finished requests; the input part is the
    cost of the prefill GPU time."""

    def per(usd: float, tokens: int) -> float | None:
        return usd / tokens * TOKENS_PER_MTOKEN if tokens else None

    return {
        "input": per(cost_in, tokens_in),
        "output": per(cost - cost_in, tokens_out),
        "blended": per(cost, tokens_in + tokens_out),
    }


PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft_s", "tpot_s", "e2e_s", "queue_s")


def summarise(out_dir: Path, fleet: dict) -> dict:
    """The run's figures, from requests.parquet and timeline.parquet; `fleet` describes pools.

    `gpus` is the fleet's GPU count at the start. Per-GPU throughput divides by `gpus_mean`,
    the GPUs provisioned on average over the run: the timeline's provisioned replica-seconds
    times each pool's tp (`gpu_hours_provisioned`), over the timeline's span. For a fixed fleet
    that is `gpus`; an autoscaled pool counts each replica from the moment it is asked for
    (provisioning included, when it costs money and serves nothing) until it is released.
    """
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
    row = done.select(aggs).collect().row(0, named=True)
    # Means in numpy (Polars sums in parallel chunks, whose order, and last bit, varies) and
    # percentiles too (one partial sort per column; Polars sorted once per percentile). One
    # column at a time: memory holds one, however long the run.
    for col in LATENCIES:
        values = done.select(col).collect()[col].to_numpy()
        row[f"{col}:mean"] = _mean(values)
        values = values[~np.isnan(values)]  # nulls: no TPOT below two output tokens
        cuts = (
            np.percentile(values, PERCENTILES).tolist()
            if values.size
            else [None] * len(PERCENTILES)
        )
        row.update({f"{col}:p{p}": cut for p, cut in zip(PERCENTILES, cuts, strict=True)})
    counts = requests.group_by("status").len().collect()
    by_status = dict(zip(counts["status"].to_list(), counts["len"].to_list(), strict=True))
    tl_cols = timeline.select(
        "pool",
        "interval_start_s",
        "interval_s",
        "busy_s",
        "kv_peak_frac",
        "mean_batch",
        "steps",
        "provisioned_s",
    ).collect()
    tp = {p["name"]: p["tp"] for p in fleet["pools"]}
    pool_tp = tl_cols["pool"].replace_strict(tp, return_dtype=pl.Int64).to_numpy()
    provisioned_gpu_s = float(np.sum(tl_cols["provisioned_s"].to_numpy() * pool_tp))
    span_s = float((tl_cols["interval_start_s"] + tl_cols["interval_s"]).max() or 0.0)
    active = tl_cols.filter(pl.col("steps") > 0)
    tl = {
        "busy_s": float(np.sum(tl_cols["busy_s"].to_numpy())),
        "provisioned_s": float(np.sum(tl_cols["provisioned_s"].to_numpy())),
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
    gpus_mean = provisioned_gpu_s / span_s if span_s > 0 else float(gpus)

    def per_s(x: float) -> float:
        return x / duration if duration > 0 else 0.0

    def per_gpu(x: float) -> float:
        return x / gpus_mean if gpus_mean > 0 else 0.0

    summary = {
        "requests": sum(by_status.values()),
        "finished": finished,
        "status_counts": by_status,
        "duration_s": duration,
        "replicas": replicas,
        "gpus": gpus,
        "gpus_mean": gpus_mean,
        "gpu_hours_provisioned": provisioned_gpu_s / 3600.0,
        "pools": fleet["pools"],
        "throughput": {
            "requests_per_s": per_s(finished),
            "input_tokens_per_s": per_s(row["input_tokens"] or 0),
            "output_tokens_per_s": per_s(row["output_tokens"] or 0),
            "output_tokens_per_s_per_gpu": per_gpu(per_s(row["output_tokens"] or 0)),
            "input_tokens_per_s_per_gpu": per_gpu(per_s(row["input_tokens"] or 0)),
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
        # Busy over provisioned replica time (autoscaled pools change size).
        "gpu_busy_frac": tl["busy_s"] / tl["provisioned_s"] if tl["provisioned_s"] > 0 else 0.0,
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
        f"{p['name']}: {p['replicas']}"
        + (f" (autoscaled to {p['max_replicas']})" if p.get("autoscaled") else "")
        + f" x {p['gpu']} tp{p['tp']} {p['batcher']}"
        for p in summary["pools"]
    )
    lines = [
        f"fleet        {pools}",
        f"requests     {summary['finished']:,} finished of {summary['requests']:,} "
        f"in {summary['duration_s']:,.1f} s simulated",
        f"throughput   {tp['requests_per_s']:,.2f} req/s, "
        f"{tp['input_tokens_per_s']:,.0f} input tok/s, "
        f"{tp['output_tokens_per_s']:,.0f} output tok/s "
        f"({tp['output_tokens_per_s_per_gpu']:,.0f} per GPU"
        + (
            f", {summary['gpus_mean']:,.2f} GPUs provisioned on average)"
            if any(p.get("autoscaled") for p in summary["pools"])
            else ")"
        ),
        "",
        f"{'latency (ms)':<14}{'mean':>10} {'p50':>10} {'p90':>10} {'p99':>10}",
    ]
    names = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E", "queue": "queueing"}
    for key, label in names.items():
        lat = summary["latency_s"][key]
        lines.append(
            f"{label:<14}{ms(lat['mean']):>10} {ms(lat['p50']):>10} "
            f"{ms(lat['p90']):>10} {ms(lat['p99']):>10}"
        )
    kv_mean = summary["kv_peak_frac_mean"]
    money = summary.get("economics")
    lines += [
        "",
        f"preemptions  {summary['preemptions']:,}",
        f"GPU busy     {summary['gpu_busy_frac']:.1%}",
        "KV peak      "
        + ("-" if kv_mean is None else f"{kv_mean:.1%} mean, {summary['kv_peak_frac_max']:.1%} max")
        + " (per replica per interval)",
    ]
    if money is not None:
        lines += ["", *_format_money(summary)]
    return "\n".join(lines)


def _format_money(summary: dict) -> list[str]:
    """Cost, revenue and goodput lines, fleet and per tier; all from summary.json."""

    def usd(x: float | None) -> str:
        if x is None:
            return "-"
        return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"

    def mtok(x: float | None) -> str:
        return "-" if x is None else f"${x:,.3f}"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:,.2f}s"

    fleet = summary["economics"]["fleet"]
    per = fleet["usd_per_mtoken"]
    pools = ", ".join(
        f"{p['name']}: {usd(p['cost_usd'])} ({p['pricing']}, {p['charged_gpu_s'] / 3600:,.2f} "
        f"GPU-h, {pct(p['utilisation'])} busy, peak {p['peak_replicas']})"
        for p in summary["pools"]
    )
    lines = [
        f"cost         {usd(fleet['cost_usd'])}: {pools}",
        f"per Mtoken   {mtok(per['blended'])} blended, {mtok(per['input'])} input, "
        f"{mtok(per['output'])} output",
        f"revenue      {usd(fleet['revenue_usd'])}, margin {usd(fleet['margin_usd'])} "
        f"({pct(fleet['margin_frac'])})",
        "",
        f"{'tier':<12}{'requests':>10}{'goodput':>9} {'TTFT p99':>10}{'limited':>9}{'expired':>9}"
        f"{'GPU-h':>9}{'$/Mtok':>9}{'cost':>12}{'revenue':>12}{'margin':>12}",
    ]
    for name, t in summary["economics"]["tiers"].items():
        lines.append(
            f"{name:<12}{t['requests']:>10,}{pct(t['goodput_frac']):>9}"
            f" {secs(t['ttft_s']['p99']):>10}{t['rate_limited']:>9,}"
            f"{t['expired']:>9,}{t['gpu_hours']:>9,.2f}{mtok(t['usd_per_mtoken']['blended']):>9}"
            f"{usd(t['cost_usd']):>12}{usd(t['revenue_usd']):>12}{usd(t['margin_usd']):>12}"
        )
    unknown = summary["gateway"]["unknown_tiers"]
    if unknown:
        listed = ", ".join(f"{k} ({v:,})" for k, v in unknown.items())
        lines.append(f"unknown tiers served as {summary['gateway']['default_tier']}: {listed}")
    return lines
