"""Summary figures of a trace, computed by Polars' streaming engine without loading the file.

The result is a plain dict so the CLI can print it as a table or as JSON, and tests can compare
it with the figures measured on the real traces.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from tokenfleet.errors import UserError
from tokenfleet.traces.reader import open_trace, read_trace_batches, trace_metadata
from tokenfleet.traces.schema import DEFAULT_TIER, INT32_MAX
from tokenfleet.traces.unique import check_unique_ids
from tokenfleet.traces.validate import validate_trace

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
PEAK_WINDOW_S = 60.0


def token_stats(histogram: pl.DataFrame) -> dict[str, float | int]:
    """Mean, exact quantiles (linear interpolation, as numpy's default) and max of a column
    from its value counts: the counts stay small (one row per distinct length) however long
    the trace, where sorting the column would hold all of it in memory.
    """
    histogram = histogram.sort("value")
    values = histogram["value"].to_numpy().astype(np.float64)
    counts = histogram["n"].to_numpy()
    ends = np.cumsum(counts)  # sorted position i holds values[k] for ends[k-1] <= i < ends[k]
    n = int(ends[-1])
    total = int(np.dot(values.astype(np.int64), counts))
    stats: dict[str, float | int] = {"mean": total / n}
    for name, q in QUANTILES.items():
        position = (n - 1) * q
        below = math.floor(position)
        lo, hi = values[np.searchsorted(ends, [below, min(below + 1, n - 1)], "right")]
        stats[name] = _plain(float(lo + (position - below) * (hi - lo)))
    stats["max"] = int(values[-1])
    stats["total"] = total
    return stats


def inspect_trace(path: str | os.PathLike[str], cache_tokens: int | None = None) -> dict:
    """Rows, span, request rates, burstiness, token quantiles, tier/tenant counts, prefix reuse,
    and with `cache_tokens` the reuse an LRU prefix cache of that size reaches.

    The same pass notices values the schema forbids; then the full check names the first bad
    row, so a broken trace is refused rather than summarised (repeated request ids too, as
    validate refuses them).
    """
    path = Path(path)
    if cache_tokens is not None and cache_tokens < 1:
        raise UserError(f"--cache-tokens {cache_tokens}: expected tokens >= 1")
    meta = trace_metadata(path)  # one-line errors for a missing, empty or malformed file
    columns = set(meta["columns"])
    block_size = meta["prefix_block_size"]
    if cache_tokens is not None and "prefix_hashes" in columns and not block_size:
        raise UserError(
            f"{path}: --cache-tokens needs the prefix block size, and the trace's metadata has "
            "no tokenfleet.prefix_block_size"
        )
    if "request_id" in columns:
        check_unique_ids(open_trace(path), str(path))
    lf = pl.scan_parquet(path)
    arrival = pl.col("arrival_s")
    gaps = arrival.diff().drop_nulls()
    queries = {
        "main": lf.select(
            pl.len().alias("rows"),
            arrival.min().alias("first_s"),
            arrival.max().alias("last_s"),
            gaps.mean().alias("gap_mean_s"),
            gaps.std().alias("gap_std_s"),
            gaps.min().alias("gap_min_s"),
            (arrival.is_null() | ~arrival.is_finite()).sum().alias("bad_arrivals"),
        ),
        **{
            column: lf.group_by(pl.col(column).alias("value")).agg(pl.len().alias("n"))
            for column in ("prompt_tokens", "output_tokens")
        },
        "peak": lf.group_by((arrival // PEAK_WINDOW_S).alias("window"))
        .agg(pl.len().alias("n"))
        .select(pl.col("n").max()),
    }
    for name in ("tier", "tenant"):
        if name in columns:
            queries[name] = lf.group_by(pl.col(name).fill_null("")).agg(pl.len().alias("n"))
    if "prefix_hashes" in columns:
        blocks = pl.col("prefix_hashes").explode().drop_nulls()
        queries["prefix"] = lf.select(
            blocks.len().alias("blocks"), blocks.n_unique().alias("unique")
        )
    # One query at a time: run together they would hold all their buffers at once.
    results = {name: query.collect(engine="streaming") for name, query in queries.items()}
    main = results["main"].row(0, named=True)
    if _breaks_schema(main, results["prompt_tokens"], results["output_tokens"]):
        validate_trace(path)  # raises the one-line error naming the first bad row
    rows = main["rows"]
    span_s = main["last_s"] - main["first_s"]
    cv = main["gap_std_s"] / main["gap_mean_s"] if rows > 2 and main["gap_mean_s"] else None
    summary = {
        "trace": str(path),
        "rows": rows,
        "first_arrival_s": main["first_s"],
        "span_s": span_s,
        "mean_rate_rps": rows / span_s if span_s > 0 else None,
        "peak_minute_rate_rps": results["peak"].item() / PEAK_WINDOW_S,
        "interarrival_cv": cv,
    }
    for column in ("prompt_tokens", "output_tokens"):
        summary[column] = token_stats(results[column])
    summary["tiers"] = _counts(results.get("tier")) if "tier" in columns else {DEFAULT_TIER: rows}
    summary["tenants"] = _counts(results.get("tenant")) if "tenant" in columns else {}
    # The prefix keys are always there (null without prefix_hashes): JSON readers need not
    # test for them.
    summary["prefix_block_size"] = meta["prefix_block_size"]
    blocks, unique = results["prefix"].row(0) if "prefix" in results else (None, None)
    summary["prefix_blocks"] = blocks
    summary["prefix_reuse_share"] = 1 - unique / blocks if blocks else None
    # Also always there: null unless --cache-tokens was given and the trace has blocks.
    cache: dict = {"cache_tokens": cache_tokens, "cache_blocks": None, "cache_hit_share": None,
             "cache_hit_prompt_share": None}  # fmt: skip
    if cache_tokens is not None and blocks:
        cache_ = LruPrefixCache(cache_tokens // block_size)
        hit_blocks = hit_tokens = 0
        for hashes, prompt in _prefix_rows(path):
            hits = cache_.request(hashes)
            hit_blocks += hits
            hit_tokens += min(hits * block_size, prompt)  # a last block may be partial
        cache |= {
            "cache_blocks": cache_.capacity,
            "cache_hit_share": hit_blocks / blocks,
            "cache_hit_prompt_share": hit_tokens / summary["prompt_tokens"]["total"],
        }
    summary.update(cache)
    return summary


def _prefix_rows(path: Path) -> Iterator[tuple[list[int], int]]:
    """Each request's prefix block ids (null as none) and prompt tokens, in arrival order."""
    for batch in read_trace_batches(path, columns=["prefix_hashes", "prompt_tokens"]):
        hashes, prompts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        for blocks, prompt in zip(hashes, prompts, strict=True):
            yield blocks or [], prompt


class LruPrefixCache:
    """An LRU cache of `capacity` prefix blocks, fed one request at a time.

    A request reuses the longest run of cached blocks from its first one (a prefix cache can
    use nothing past the first miss), then caches all its blocks, the last one first: a
    prefix's head is then the most recent, so it outlives its tail, as in vLLM's eviction.
    The order of accesses does not depend on the capacity, so a larger cache holds whatever a
    smaller one does (LRU's inclusion property) and hits never fall as capacity grows.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def request(self, blocks: list[int]) -> int:
        """Serve one request's blocks; return how many came from the cache."""
        cache = self.blocks
        hits = 0
        for block in blocks:
            if block not in cache:
                break
            hits += 1
        if self.capacity:
            for block in reversed(blocks):
                if block in cache:
                    cache.move_to_end(block)
                else:
                    cache[block] = None
                    if len(cache) > self.capacity:
                        cache.popitem(last=False)
        return hits


def _breaks_schema(main: dict, prompts: pl.DataFrame, outputs: pl.DataFrame) -> bool:
    """Whether the single-pass aggregates show a value the schema forbids."""
    return bool(
        main["bad_arrivals"]
        or main["first_s"] < 0
        or (main["gap_min_s"] is not None and main["gap_min_s"] < 0)
        or prompts["value"].null_count()
        or outputs["value"].null_count()
        or prompts["value"].min() < 1
        or outputs["value"].min() < 0
        or max(prompts["value"].max(), outputs["value"].max()) > INT32_MAX
    )


def _counts(frame: pl.DataFrame) -> dict[str, int]:
    """Counts by name, largest first, ties by name (so output is deterministic)."""
    ordered = frame.sort(["n", frame.columns[0]], descending=[True, False])
    return {str(name): int(n) for name, n in ordered.iter_rows()}


def _plain(value: float | int) -> float | int:
    """Whole-number floats as ints, so token quantiles print as tokens."""
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return value
