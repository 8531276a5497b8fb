"""The request records: requests.parquet's schema, the writer that fills it during the run,
and the pricing pass after it.

During the run, ended requests are converted a small batch at a time into a raw Arrow IPC file
(no encoding to pay for; it is read back once). Money: each request carries its GPU-seconds
(its token share of every step it took part in; replica.py). Once the run is over and each
pool's cost is known (records/timeline.py), `price_requests` writes requests.parquet batch by
batch with `cost_usd` = gpu_s x (pool cost / the pool's total gpu_s): the pool's idle (and
unattributable padding) time is spread in proportion to the work, so the requests of a pool
add up to its cost. Revenue and SLOs come from the tier's prices and promises (tiers.py).
Float sums are taken in numpy, in file order, so outputs stay byte-identical run to run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tokenfleet.errors import UserError
from tokenfleet.replay.records import ROW_GROUP_ROWS
from tokenfleet.replay.records.rowgroups import RowGroups
from tokenfleet.replay.request import RECORD_FIELDS, Seq, Status
from tokenfleet.replay.tiers import (
    PRICE_AND_SLO_KEYS,
    TOKENS_PER_MTOKEN,
    Tier,
    revenue_expr,
    slo_met_expr,
)

# Dictionary-encode only the low-cardinality strings: trying it on columns of unique floats
# doubled the time to write and to read the files.
DICTIONARY_COLUMNS = ["tenant", "tier", "pool", "status"]
# requests.parquet's columns as written during the run (the request id's type is the trace's).
RAW_COLUMNS = (
    ("request_id", None),
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
    ("cached_tokens", pa.int32()),  # prompt tokens the prefix cache served (no prefill)
    ("ttft_s", pa.float64()),
    ("tpot_s", pa.float64()),
    ("e2e_s", pa.float64()),
    ("gateway_wait_s", pa.float64()),  # arrival to the gateway sending it to a replica
    ("queue_s", pa.float64()),  # from reaching the replica to its first step
    ("preemptions", pa.int32()),
    ("status", pa.string()),
    ("attempts", pa.int32()),
    ("gpu_s", pa.float64()),
    ("prefill_gpu_s", pa.float64()),
)
# ... and the columns the pricing pass adds.
PRICED_COLUMNS = (
    ("cost_usd", pa.float64()),
    ("revenue_usd", pa.float64()),
    ("cached_input_usd", pa.float64()),  # the part of revenue_usd paid for cached_tokens
    ("slo_met", pa.bool_()),
)


def requests_schema(request_id_type: pa.DataType) -> pa.Schema:
    return pa.schema([(n, request_id_type if t is None else t) for n, t in RAW_COLUMNS])


def priced_schema(request_id_type: pa.DataType) -> pa.Schema:
    """requests.parquet as written at the end: the raw columns plus money and SLO."""
    schema = requests_schema(request_id_type)
    for name, kind in PRICED_COLUMNS:
        schema = schema.append(pa.field(name, kind))
    return schema


# A batch's requests as tuples of their RECORD_FIELDS, by a comprehension made from that list:
# the interpreter's specialised slot reads cost a tenth of operator.attrgetter's generic ones
# (1,500 fewer instructions per request, 1% of a replay, under callgrind).
_records_of = eval(  # the source is built from RECORD_FIELDS: attribute names only
    "lambda seqs: [(" + ", ".join(f"s.{name}" for name in RECORD_FIELDS) + ",) for s in seqs]"
)


class RequestWriter:
    """Appends finished (or refused) requests, in batches, to the raw file: Arrow IPC, which is
    written and read back (once, by `price_requests`) with no encoding, unlike Parquet."""

    def __init__(
        self,
        path: Path,
        request_id_type: pa.DataType,
        pools: list[str],
        tp: list[int],
        replica_offset: int = 0,
    ) -> None:
        self.schema = requests_schema(request_id_type)
        self.replica_offset = replica_offset  # added to the replica column (replay --cells)
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
            sent,
            start,
            first,
            finish,
            prompt,
            out,
            cached,
            preemptions,
            status,
            attempts,
            prefill_s,
            decode_s,
        ) = zip(*_records_of(seqs), strict=True)
        arrival = np.array(arrival, dtype=np.float64)
        sent = np.array(sent, dtype=np.float64)  # None (never sent to a replica) becomes NaN
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
            pa.array(np.where(routed, replica + self.replica_offset, -1).astype(np.int32)),
            pa.array(arrival),
            _nullable(start),
            _nullable(first),
            _nullable(finish),
            pa.array(np.array(prompt, dtype=np.int32)),
            pa.array(out),
            pa.array(np.array(cached, dtype=np.int32)),
            _nullable(first - arrival),
            _nullable(tpot),
            _nullable(finish - arrival),
            _nullable(sent - arrival),
            _nullable(start - sent),
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
    usd_per_gpu_s: dict[str, float],
    metadata: dict[str, str] | None = None,
) -> None:
    """requests.parquet from the raw records (whose tiers are the scenario's: resolved when
    the request entered): its attributed cost, its revenue (finished requests pay their tier's
    prices, cached prompt tokens at the cached-input price) and whether it met its SLOs."""
    source = pa.OSFile(str(raw))  # read batch by batch into memory freed as it goes
    reader = pa.ipc.open_file(source)
    schema = priced_schema(reader.schema.field("request_id").type).with_metadata(metadata or {})
    names = [t.name for t in tiers]
    by_name = {t.name: t for t in tiers}
    price_cols = {
        key: {n: float(getattr(by_name[n], key)) for n in names} for key in PRICE_AND_SLO_KEYS
    }
    finished = pl.col("status") == Status.FINISHED.value
    with source, _writer(out, schema) as writer:
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            frame = pl.from_arrow(batch)
            work = frame.with_columns(
                *(
                    pl.col("tier").replace_strict(m, return_dtype=pl.Float64).alias(k)
                    for k, m in price_cols.items()
                ),
                tpot_s=pl.col("tpot_s").fill_null(0.0),
            )
            money = work.select(
                cost_usd=pl.col("gpu_s")
                * pl.col("pool").replace_strict(
                    usd_per_gpu_s, default=0.0, return_dtype=pl.Float64
                ),
                revenue_usd=pl.when(finished).then(revenue_expr()).otherwise(0.0),
                cached_input_usd=pl.when(finished)
                .then(
                    pl.col("cached_tokens")
                    * pl.col("usd_per_mtoken_cached_input")
                    / TOKENS_PER_MTOKEN
                )
                .otherwise(0.0),
                slo_met=(finished & slo_met_expr()).fill_null(False),
            )
            table = pl.concat([frame, money], how="horizontal").to_arrow()
            writer.write_table(table.select(schema.names).cast(schema))


RECORDS_KEY = b"tokenfleet.records"  # footer key of a sampled requests.parquet: "sample:F"


@dataclasses.dataclass(frozen=True)
class RecordsPolicy:
    """What requests.parquet keeps (`--records`): every request ("all"), a uniform sample of
    a `fraction` ("sample"), or nothing ("none"). Only "all" keeps the summary's percentiles
    exact; the others take them from sketches (quantiles.py)."""

    mode: str = "all"
    fraction: float = 1.0
    sketch: bool = False  # sketched percentiles with every record kept (replay --cells' cells)

    @classmethod
    def parse(cls, text: str) -> RecordsPolicy:
        usage = "expected all, none, or sample:F with a fraction 0 < F < 1 (sample:0.01)"
        if text in ("all", "none"):
            return cls(text, 1.0 if text == "all" else 0.0)
        head, _, tail = text.partition(":")
        if head != "sample":
            raise UserError(f"--records {text}: {usage}")
        try:
            fraction = float(tail)
        except ValueError:
            raise UserError(f"--records {text}: {usage}") from None
        if not 0 < fraction < 1:
            raise UserError(f"--records {text}: {usage}")
        return cls("sample", fraction)

    @property
    def exact(self) -> bool:
        return self.mode == "all" and not self.sketch

    def __str__(self) -> str:
        return f"sample:{self.fraction:g}" if self.mode == "sample" else self.mode


ALL_RECORDS = RecordsPolicy()


def sample_requests(path: Path, fraction: float, seed: int) -> int:
    """Keep a uniform sample of requests.parquet (`--records sample:F`): each row with
    probability `fraction`, drawn in file order from `seed`, so the same run keeps the same
    rows. Returns the rows kept."""
    source = pq.ParquetFile(path, pre_buffer=False)
    schema = source.schema_arrow
    schema = schema.with_metadata({**(schema.metadata or {}), RECORDS_KEY: f"sample:{fraction:g}"})
    rng = np.random.default_rng(seed)
    kept = 0
    part = path.with_name(path.name + ".sample")
    with _writer(part, schema) as writer:
        groups = RowGroups(writer.write_table)
        for batch in source.iter_batches(batch_size=ROW_GROUP_ROWS):
            keep = rng.random(batch.num_rows) < fraction
            kept += int(keep.sum())
            groups.add(batch.filter(pa.array(keep)))
        groups.flush()
    part.replace(path)
    return kept


def _writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """requests.parquet's writer. Snappy finds nothing to squeeze in unique floats: they are
    stored as they are (+4% size, -20% time to write)."""
    compression = {f.name: "none" if pa.types.is_floating(f.type) else "snappy" for f in schema}
    return pq.ParquetWriter(
        path, schema, use_dictionary=DICTIONARY_COLUMNS, compression=compression
    )
