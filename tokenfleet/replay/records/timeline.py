"""The timeline: one row per replica per interval, from accounting to timeline.parquet.

Each replica owns a `ReplicaTimeline`, the narrow recorder it reports to: its steps and runs
(`step`, `run`), the times requests arrive and finish (appended to `arrivals`, `finishes`),
and, for an autoscaled pool, when it is provisioned and released. The recorder keeps one
`IntervalRow` per interval it has touched. `Timeline` writes the rows out once every replica
has moved past their interval, adds the in-system integral and the provisioned time, and
prices each row (cost.py's rates); records/pools.py prices each pool once, from the same
provisioned spans. Nothing outside this module writes the recorders' state but those appends.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenfleet.replay.cost import CostRates
from tokenfleet.replay.records import ROW_GROUP_ROWS

INF = float("inf")

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
        # Prefix cache: prompt tokens served from it by requests first admitted here, those
        # requests, cached blocks whose key was dropped for reuse, blocks holding a key.
        ("cached_tokens", pa.int64()),
        ("cache_hits", pa.int64()),
        ("evicted_blocks", pa.int64()),
        ("cached_blocks", pa.int64()),
        ("mean_in_system", pa.float64()),
        ("provisioned_s", pa.float64()),
        ("cost_usd", pa.float64()),
    ]
)


class IntervalRow:
    """What one replica did in one interval, as it accumulates (slots: read and added to on
    every step, as fast as a list's items)."""

    __slots__ = (
        "busy_s",
        "steps",
        "batch_sum",
        "batch_max",
        "prefill_tokens",
        "decode_tokens",  # tokens of decoding sequences; output tokens add the sampled ones
        "sampled_tokens",  # first tokens, sampled at the end of a prefill
        "kv_peak_blocks",
        "arrived",
        "finished",
        "in_system_s",  # the integral of the requests present, over the interval
        "billed_extra_s",  # on-demand billing's rounding of spans that end in the interval
        "cached_tokens",
        "cache_hits",
        "evicted_blocks",
        "cached_blocks",  # after the interval's last cache event (-1: none in it)
    )

    def __init__(self) -> None:
        self.busy_s = self.in_system_s = self.billed_extra_s = 0.0
        self.steps = self.batch_sum = self.batch_max = self.kv_peak_blocks = 0
        self.prefill_tokens = self.decode_tokens = self.sampled_tokens = 0
        self.arrived = self.finished = 0
        self.cached_tokens = self.cache_hits = self.evicted_blocks = 0
        self.cached_blocks = -1


class ReplicaTimeline:
    """The recorder of one replica: interval rows, arrival and finish times, provisioned spans.

    The replica appends arrival and finish times to `arrivals` and `finishes` (a list append:
    no Python frame on the hot path); they are folded into their rows in bulk (`fold_counts`)."""

    __slots__ = (
        "interval_s",
        "rows",
        "cur_iv",
        "cur_row",
        "arrivals",
        "finishes",
        "in_system",
        "spans",
        "evicted_seen",
        "cached_blocks",
    )

    def __init__(self, interval_s: float, provisioned: bool = True) -> None:
        self.interval_s = interval_s
        self.rows: dict[int, IntervalRow] = {}  # by interval number
        self.cur_iv = -1  # the interval whose row was used last, and that row
        self.cur_row: IntervalRow | None = None
        # Arrival and finish times, in order, not yet folded into their intervals' rows.
        self.arrivals: list[float] = []
        self.finishes: list[float] = []
        self.in_system = 0  # requests here at the start of the next interval written
        # Provisioned spans [start, end] (end inf while provisioned); a fixed pool's: always.
        self.spans: list[list[float]] = [[0.0, INF]] if provisioned else []
        self.evicted_seen = 0  # the prefix cache's eviction count at the last cache event
        self.cached_blocks = 0  # its cached blocks then (carried into rows without events)

    def row(self, iv: int) -> IntervalRow:
        """The row of interval `iv` (hot callers check `cur_iv` first)."""
        if iv == self.cur_iv:
            return self.cur_row
        row = self.rows.get(iv)
        if row is None:
            row = self.rows[iv] = IntervalRow()
        self.cur_iv = iv
        self.cur_row = row
        return row

    # ------------------------------------------------------------------ what the replica did

    def step(
        self,
        start: float,
        end: float,
        batch: int,
        prefill: int,
        decode: int,
        kv_blocks: int,
        sampled: int,
    ) -> None:
        """One step with prefill chunks, counted in the interval it starts in."""
        size = self.interval_s
        iv = int(start // size)
        row = self.cur_row if iv == self.cur_iv else self.row(iv)
        row.steps += 1
        row.batch_sum += batch
        if batch > row.batch_max:
            row.batch_max = batch
        row.prefill_tokens += prefill
        row.decode_tokens += decode
        row.sampled_tokens += sampled
        if kv_blocks > row.kv_peak_blocks:
            row.kv_peak_blocks = kv_blocks
        if end <= (iv + 1) * size:  # the usual case: the step lies within one interval
            row.busy_s += end - start
        else:
            self._busy(iv, start, end)

    def cache(self, now: float, cached_tokens: int, prefix) -> None:
        """A prefix-cache event at `now` (an admission through the cache, a chunk cached): the
        prompt tokens the admission found cached (0 for a chunk), and the cache's counts after
        it. Evictions land where the engine next looks the cache up (replay/prefix.py)."""
        size = self.interval_s
        iv = int(now // size)
        row = self.cur_row if iv == self.cur_iv else self.row(iv)
        if cached_tokens:
            row.cached_tokens += cached_tokens
            row.cache_hits += 1
        row.evicted_blocks += prefix.evicted_blocks - self.evicted_seen
        self.evicted_seen = prefix.evicted_blocks
        row.cached_blocks = prefix.cached_blocks

    def _busy(self, iv: int, start: float, end: float) -> None:
        size = self.interval_s
        while True:
            edge = (iv + 1) * size
            if end <= edge:
                self.row(iv).busy_s += end - start
                return
            self.row(iv).busy_s += edge - start
            start = edge
            iv += 1

    def run(
        self,
        start: float,
        end: float,
        steps: int,
        batch: int,
        decode: int,
        kv_blocks: int,
        replica,
    ) -> None:
        """`steps` decode-only steps of `batch` sequences (`decode` of them producing tokens)
        from `start` to `end`, each counted in the interval it starts in. `kv_blocks` is the
        peak at the run's end; a run over an interval edge asks `replica` where the edge
        falls (`steps_before`) and the peak there (`kv_blocks_after`)."""
        size = self.interval_s
        iv = int(start // size)
        done = 0
        while True:
            edge = (iv + 1) * size
            row = self.cur_row if iv == self.cur_iv else self.row(iv)
            if done < steps:
                upto = steps if end <= edge else min(steps, replica.steps_before(edge))
                n = upto - done
                if n > 0:
                    row.steps += n
                    row.batch_sum += n * batch
                    if batch > row.batch_max:
                        row.batch_max = batch
                    row.decode_tokens += n * decode
                    peak = kv_blocks if upto == steps else replica.kv_blocks_after(upto)
                    if peak > row.kv_peak_blocks:
                        row.kv_peak_blocks = peak
                    done = upto
            if end <= edge:  # the usual case: at once, the run lies within one interval
                row.busy_s += end - start
                return
            row.busy_s += edge - start
            start = edge
            iv += 1

    def fold_counts(self, before: float = INF) -> None:
        """Move the arrival and finish times before `before` into their intervals' rows: the
        counts, and the in-system integral's parts (each arrival adds the time to its
        interval's end, each finish takes it back; `take` adds the requests present at the
        interval's start). Called per batch of finished requests, not per request."""
        size = self.interval_s
        for times, arriving in ((self.arrivals, True), (self.finishes, False)):
            n = bisect_left(times, before)
            i = 0
            while i < n:
                iv = int(times[i] // size)
                end = (iv + 1) * size
                j = bisect_left(times, end, i, n)
                row = self.row(iv)
                part = (j - i) * end - sum(times[i:j])
                if arriving:
                    row.arrived += j - i
                    row.in_system_s += part
                else:
                    row.finished += j - i
                    row.in_system_s += -part
                i = j
            del times[:n]

    # ------------------------------------------------------------------ provisioning

    def provision(self, now: float) -> None:
        self.spans.append([now, INF])

    def release(self, now: float) -> None:
        self.spans[-1][1] = now

    def provisioned_since(self) -> float:
        """When the latest span started (an autoscaler's check that it was not cancelled)."""
        return self.spans[-1][0]

    # ------------------------------------------------------------------ writing out

    def take(self, iv: int, run_end: float, billed: Callable[[float], float] | None):
        """Interval `iv`'s final row and provisioned seconds (spans still open end at
        `run_end`); it is no longer kept."""
        size = self.interval_s
        start, end = iv * size, (iv + 1) * size
        self.fold_counts(end)
        row = self.rows.pop(iv, None) or IntervalRow()
        if iv == self.cur_iv:
            self.cur_iv = -1
        if row.cached_blocks < 0:
            row.cached_blocks = self.cached_blocks
        else:
            self.cached_blocks = row.cached_blocks
        # In-system integral: the requests here at its start, all through it, plus the
        # arrivals' and finishes' parts (fold_counts).
        row.in_system_s += self.in_system * size
        self.in_system += row.arrived - row.finished
        provisioned = 0.0
        for a, b in self.spans:
            if a >= run_end:  # provisioned by a timer after the run's last event: not billed
                continue
            if b > run_end:  # still open, or released by a timer after the run's last event
                b = run_end
            lo = a if a > start else start
            hi = b if b < end else end
            if hi > lo:
                provisioned += hi - lo
            # A span's billing rounding lands where it ends; a run that ends exactly on an
            # interval edge ends its open spans in the zero-length interval starting there.
            if billed is not None and (start < b <= end or b == start == run_end):
                row.billed_extra_s += billed(b - a) - (b - a)
        return row, provisioned


class Timeline:
    """Writes interval rows (all replicas, in interval then replica order) once they are final:
    every replica has moved past them (`busy_since`)."""

    def __init__(
        self,
        replicas: list,
        interval_s: float,
        writer: TimelineWriter,
        billers: list | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.replicas = replicas
        self.interval_s = interval_s
        self.writer = writer
        self.billers = billers or [None] * len(replicas)
        self.progress = progress
        self.done = 0  # intervals before this one are written

    def fold_counts(self) -> None:
        """Fold every replica's arrival and finish times (so that neither grows with the run)."""
        for rep in self.replicas:
            rep.timeline.fold_counts()

    def tick(self, now: float) -> float:
        """The run has reached `now`, past the last interval's end: write what is final, move
        the progress bar; return the next interval's end (the loop calls back then)."""
        self.emit(now)
        if self.progress is not None:
            self.progress(now)
        return (int(now // self.interval_s) + 1) * self.interval_s

    def emit(self, now: float, last_s: float = 0.0) -> float:
        """Write the intervals every replica has moved past; return the end of the last one
        written. When `now` is inf the run is over at `last_s` (its last event): every interval
        up to `last_s` is written, the last one only as long as the run lasted, and spans still
        provisioned end there (the billing rule: README, "What a run costs")."""
        reps = self.replicas
        size = self.interval_s
        horizon = min(now, min(rep.busy_since() for rep in reps))
        if horizon == INF:
            last = max(
                (max(rep.timeline.rows) for rep in reps if rep.timeline.rows),
                default=self.done - 1,
            )
            limit = max(last + 1, math.ceil(last_s / size))
            run_end = last_s
        else:
            limit = int(horizon // size)
            run_end = INF
        rows = []
        billers = self.billers
        for iv in range(self.done, limit):
            for rep in reps:
                row, provisioned = rep.timeline.take(iv, run_end, billers[rep.index])
                rows.append((iv, rep.index, row, provisioned))
        self.done = max(self.done, limit)
        self.writer.write(rows, run_end)
        return min(self.done * size, run_end)


class TimelineWriter:
    """Appends priced per-replica per-interval rows to timeline.parquet, and sums each pool's
    busy and provisioned replica-seconds for `pool_costs`."""

    def __init__(
        self,
        path: Path,
        interval_s: float,
        pools: list[str],
        kv_blocks: list[int],
        rates: list[CostRates],
        metadata: dict[str, str] | None = None,
        replica_offset: int = 0,
        per_pool: bool = False,
    ):
        schema = TIMELINE_SCHEMA.with_metadata(metadata or {})
        self.writer = pq.ParquetWriter(path, schema, use_dictionary=["pool"])
        # Rows waiting to be priced and written (`write`): the rows, (rows, run_end) per emit,
        # and the output rows they make.
        self.pending: list[tuple[int, int, IntervalRow, float]] = []
        self.pending_groups: list[tuple[int, float]] = []
        self.pending_out = 0
        self.replica_offset = replica_offset  # added to the replica column (replay --cells)
        self.per_pool = per_pool  # --timeline pool: one row per pool per interval
        self.interval_s = interval_s
        self.pools = pools
        self.kv_blocks = kv_blocks
        self.always = np.array([r.always_usd_per_s for r in rates], dtype=np.float64)
        self.per_provisioned = np.array([r.provisioned_usd_per_s for r in rates], np.float64)
        self.per_busy = np.array([r.busy_usd_per_s for r in rates], dtype=np.float64)
        self.pool_names = list(dict.fromkeys(pools))
        self.pool_ix = np.array([self.pool_names.index(p) for p in pools], dtype=np.int64)
        n = len(self.pool_names)
        # Per pool, in write order: busy and provisioned replica-seconds.
        self.busy_s = np.zeros(n)
        self.provisioned_s = np.zeros(n)

    def write(self, rows: list[tuple[int, int, IntervalRow, float]], run_end: float) -> None:
        """rows: (interval number, replica, its row, provisioned seconds) in output order. An
        interval past `run_end` (the last, when the run is over) is only as long as the run.

        The rows wait until they make a row group (ROW_GROUP_ROWS output rows), then are
        priced and converted at once: a run emits a few intervals at a time, and converting
        each emit alone cost 22% of a long run's wall time (the Mooncake trace with prompts 10x
        longer in blocks, `scripts/bench_prefix.py`: 27,492 emits of 16 rows)."""
        if not rows:
            return
        self.pending.extend(rows)
        self.pending_groups.append((len(rows), run_end))
        # Under --timeline pool an emit's whole intervals make one row per pool each.
        per_interval = len(self.pool_names) if self.per_pool else len(self.pools)
        self.pending_out += len(rows) // len(self.pools) * per_interval
        if self.pending_out >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Price and convert the waiting rows, and write them as one row group."""
        rows = self.pending
        if not rows:
            return
        groups = self.pending_groups
        self.pending, self.pending_groups, self.pending_out = [], [], 0
        size = self.interval_s
        counts = np.array([g[0] for g in groups], dtype=np.int64)
        starts = np.array([r[0] * size for r in rows], dtype=np.float64)
        run_end = np.repeat(np.array([g[1] for g in groups], dtype=np.float64), counts)
        lengths = np.clip(run_end - starts, 0.0, size)
        acc = [r[2] for r in rows]
        replica = [r[1] for r in rows]
        rix = np.array(replica, dtype=np.int64)
        busy = np.array([a.busy_s for a in acc], dtype=np.float64)
        provisioned = np.array([r[3] for r in rows], dtype=np.float64)
        billed_extra = np.array([a.billed_extra_s for a in acc], dtype=np.float64)
        cost = (
            self.always[rix] * lengths
            + self.per_provisioned[rix] * (provisioned + billed_extra)
            + self.per_busy[rix] * busy
        )
        pix = self.pool_ix[rix]
        self._add_pool_sums(pix, counts, busy, provisioned)
        steps = np.array([a.steps for a in acc], dtype=np.int64)
        batch_sum = np.array([a.batch_sum for a in acc], dtype=np.float64)
        kv_peak = np.array([a.kv_peak_blocks for a in acc], dtype=np.int64)
        capacity = np.array([self.kv_blocks[i] for i in replica], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_batch = np.where(steps > 0, batch_sum / steps, 0.0)
        decode = [a.decode_tokens for a in acc]
        columns = [
            pa.array([self.pools[i] for i in replica], pa.string()),
            pa.array(np.array(replica, dtype=np.int32) + np.int32(self.replica_offset)),
            pa.array(starts),
            pa.array(lengths),
            pa.array(busy),
            pa.array(steps),
            pa.array(mean_batch),
            pa.array(np.array([a.batch_max for a in acc], dtype=np.int32)),
            pa.array(np.array([a.prefill_tokens for a in acc], dtype=np.int64)),
            pa.array(np.array(decode, dtype=np.int64)),
            pa.array(
                np.array([d + a.sampled_tokens for d, a in zip(decode, acc, strict=True)], np.int64)
            ),
            pa.array(kv_peak),
            # Null where the replica was not provisioned: no cache to be full (an average over
            # the column then counts provisioned time only).
            pa.array(kv_peak / capacity, mask=provisioned == 0),
            pa.array(np.array([a.arrived for a in acc], dtype=np.int64)),
            pa.array(np.array([a.finished for a in acc], dtype=np.int64)),
            *(
                pa.array(np.array([getattr(a, name) for a in acc], dtype=np.int64))
                for name in ("cached_tokens", "cache_hits", "evicted_blocks", "cached_blocks")
            ),
            pa.array(_per_second([a.in_system_s for a in acc], lengths)),
            pa.array(provisioned),
            pa.array(cost),
        ]
        batch = pa.RecordBatch.from_arrays(columns, schema=TIMELINE_SCHEMA)
        if self.per_pool:
            key = np.round(starts / size).astype(np.int64) * len(self.pool_names) + pix
            batch = _pool_rows(batch, key, steps, batch_sum)
        self.writer.write_table(pa.Table.from_batches([batch]))

    def _add_pool_sums(
        self, pix: np.ndarray, counts: np.ndarray, busy: np.ndarray, provisioned: np.ndarray
    ) -> None:
        """Add each pool's busy and provisioned seconds, summed as if each emit's rows were
        added alone, in order: per emit and pool in row order (bincount), then emit after emit
        (add.accumulate), so the totals do not depend on how many emits wait together."""
        n = len(self.pool_names)
        key = np.repeat(np.arange(len(counts)), counts) * n + pix
        for total, values in ((self.busy_s, busy), (self.provisioned_s, provisioned)):
            sums = np.bincount(key, weights=values, minlength=len(counts) * n)
            total[:] = np.add.accumulate(np.vstack([total, sums.reshape(-1, n)]), axis=0)[-1]

    def close(self) -> None:
        self._flush()
        self.writer.close()


def _per_second(integrals: list[float], lengths: np.ndarray) -> np.ndarray:
    """Means over each interval of integrals over it (0 for a last interval of no length)."""
    values = np.array(integrals, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lengths > 0, values / lengths, 0.0)


# --timeline pool: how each column of a pool's row comes from its replicas' rows.
POOL_SUMS = (
    "busy_s",
    "prefill_tokens",
    "decode_tokens",
    "output_tokens",
    "requests_arrived",
    "requests_finished",
    "cached_tokens",
    "cache_hits",
    "evicted_blocks",
    "cached_blocks",
    "mean_in_system",  # the pool's time-average requests: the replicas' added
    "provisioned_s",
    "cost_usd",
)
POOL_MAXES = ("max_batch", "kv_peak_blocks")


def _pool_rows(
    batch: pa.RecordBatch, key: np.ndarray, steps: np.ndarray, batch_sum: np.ndarray
) -> pa.RecordBatch:
    """Per-replica rows (in interval, then replica order: each pool's contiguous) as one row
    per pool and interval: counts, tokens, money and time summed; `steps` summed and
    `mean_batch` over them; the largest batch and KV peak; `kv_peak_frac` the highest of the
    provisioned replicas' (null if none was); `replica` null. Sums in numpy, in row order."""
    groups, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # groups in the order their first row came
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    inverse = rank[inverse]
    first = first[order]
    k = len(groups)

    def summed(name: str) -> np.ndarray:
        return np.bincount(inverse, weights=batch.column(name).to_numpy(), minlength=k)

    def peak(values: np.ndarray, fill) -> np.ndarray:
        out = np.full(k, fill, dtype=values.dtype)
        np.maximum.at(out, inverse, values)
        return out

    arrays = {}
    step_sum = np.bincount(inverse, weights=steps, minlength=k)
    sequences = np.bincount(inverse, weights=batch_sum, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        arrays["mean_batch"] = pa.array(np.where(step_sum > 0, sequences / step_sum, 0.0))
    arrays["steps"] = pa.array(np.round(step_sum).astype(np.int64))
    for name in POOL_SUMS:
        values = summed(name)
        kind = TIMELINE_SCHEMA.field(name).type
        arrays[name] = pa.array(values if pa.types.is_floating(kind) else np.round(values), kind)
    for name in POOL_MAXES:
        arrays[name] = pa.array(peak(batch.column(name).to_numpy(), 0))
    frac = batch.column("kv_peak_frac")
    fracs = peak(frac.fill_null(-1.0).to_numpy(), -1.0)
    arrays["kv_peak_frac"] = pa.array(fracs, mask=fracs < 0)
    arrays["replica"] = pa.nulls(k, pa.int32())
    take = pa.array(first)
    for name in ("pool", "interval_start_s", "interval_s"):
        arrays[name] = batch.column(name).take(take)
    return pa.RecordBatch.from_arrays(
        [arrays[f.name].cast(f.type) for f in TIMELINE_SCHEMA], schema=TIMELINE_SCHEMA
    )
