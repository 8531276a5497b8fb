"""Convert real trace formats (Azure, BurstGPT, Mooncake, Vidur, generic CSV/JSONL) to Parquet.

One streaming pipeline for every format: read a chunk, parse its columns (a bad value is named
by file line), make arrivals relative to the first request, drop failed rows, check, cut the
time window, rescale, and hand the batch to the atomic writer. Memory holds one chunk.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from tokenfleet.atomic import refuse_clobber
from tokenfleet.errors import UserError
from tokenfleet.traces.convert.formats import (
    FORMAT_NAMES,
    FORMATS,
    TIME_UNITS_S,
    FormatSpec,
    detect_format,
    parse_column_mapping,
    resolve_format,
)
from tokenfleet.traces.convert.sources import csv_batches, jsonl_batches, sniff
from tokenfleet.traces.convert.timestamps import BadValue, first_failure, wallclock_ns
from tokenfleet.traces.paths import require_trace_suffix
from tokenfleet.traces.schema import (
    CANONICAL_COLUMNS,
    INT32_MAX,
    PREFIX_BLOCK_SIZE_KEY,
    TraceChecker,
    bad_value,
)
from tokenfleet.traces.writer import TraceWriter

__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "convert_trace",
    "detect_format",
    "parse_column_mapping",
]


def convert_trace(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    *,
    time_unit: str = "s",
    time_scale: float = 1.0,
    shift_s: float = 0.0,
    start_s: float | None = None,
    end_s: float | None = None,
    limit: int | None = None,
    drop_failed: bool = True,
    progress: bool = False,
) -> dict:
    """Convert `src` to a canonical Parquet trace at `dst`; return what was read and written.

    Arrivals become seconds from the source's first request. The window [start_s, end_s) is in
    those seconds and the output is re-based to start_s; then arrivals are multiplied by
    `time_scale` (0.5 = twice the request rate) and shifted by `shift_s`. `limit` keeps the
    first N requests after the window. `time_unit` is the unit of numeric arrivals in generic
    CSV/JSONL sources.
    """
    src, dst = Path(src), Path(dst)
    _check_options(time_unit, time_scale, shift_s, start_s, end_s, limit)
    sniffed = sniff(src)  # a missing file, a pipe or a device is refused before the output
    refuse_clobber(outputs={"DST": dst}, inputs={"SRC": src})
    require_trace_suffix(dst, "DST")
    spec, chosen = resolve_format(str(src), fmt, sniffed, columns)
    pipeline = _Pipeline(src, spec, chosen, time_unit, drop_failed and spec.failed_rows)
    # The block size describes prefix_hashes: only a trace that has them carries it.
    metadata = spec.metadata if "prefix_hashes" in chosen else {}
    window_start = start_s or 0.0
    rows_written = 0
    first_arrival_s = last_arrival_s = 0.0
    with (
        TraceWriter(dst, metadata=metadata) as writer,
        tqdm(unit=" rows", unit_scale=True, disable=not progress, desc="convert") as bar,
    ):
        for batch in pipeline.batches():
            bar.update(batch.num_rows)
            arrival = batch.column("arrival_s").to_numpy()
            begin = 0 if start_s is None else int(np.searchsorted(arrival, start_s, "left"))
            stop = len(arrival) if end_s is None else int(np.searchsorted(arrival, end_s, "left"))
            if limit is not None:
                stop = min(stop, begin + limit - rows_written)
            done = stop < len(arrival)
            if stop > begin:
                batch = batch.slice(begin, stop - begin)
                scaled = (arrival[begin:stop] - window_start) * time_scale + shift_s
                batch = batch.set_column(0, "arrival_s", pa.array(scaled, pa.float64()))
                writer.write(batch)
                if rows_written == 0:
                    first_arrival_s = float(scaled[0])
                rows_written += batch.num_rows
                last_arrival_s = float(scaled[-1])
            if done:
                break
        if rows_written == 0:
            raise UserError(_nothing_left(src, pipeline, start_s, end_s))
    return {
        "source": str(src),
        "destination": str(dst),
        "format": spec.name,
        "rows_read": pipeline.rows_read,
        "rows_written": rows_written,
        "dropped_failed": pipeline.dropped_failed,
        "first_arrival_s": first_arrival_s,
        "span_s": last_arrival_s - first_arrival_s,
        "prefix_block_size": int(block) if (block := metadata.get(PREFIX_BLOCK_SIZE_KEY)) else None,
    }


def _check_options(time_unit, time_scale, shift_s, start_s, end_s, limit) -> None:
    if time_unit not in TIME_UNITS_S:
        raise UserError(f"--time-unit {time_unit!r}: expected one of {', '.join(TIME_UNITS_S)}")
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise UserError(f"--time-scale {time_scale}: expected a factor > 0 (0.5 = twice as fast)")
    if not (math.isfinite(shift_s) and shift_s >= 0):
        raise UserError(f"--shift-s {shift_s}: expected seconds >= 0 (arrivals start at 0)")
    for name, value in (("--start-s", start_s), ("--end-s", end_s)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"{name} {value}: expected seconds >= 0 from the first request")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise UserError(f"--end-s {end_s} must be after --start-s {start_s}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: expected a number of requests >= 1")


def _nothing_left(src: Path, pipeline: _Pipeline, start_s, end_s) -> str:
    if pipeline.rows_read == 0:
        return f"{src}: has a header but no rows; expected at least one request"
    if pipeline.dropped_failed == pipeline.rows_read:
        return (
            f"{src}: all {pipeline.rows_read} rows are failed requests (zero tokens); "
            "keep them with --keep-failed"
        )
    return (
        f"{src}: no requests in the window [{start_s or 0}, {end_s if end_s else 'end'}) s; "
        f"the trace's last request is at {pipeline.last_arrival_s:.3f} s"
    )


class _Pipeline:
    """Source chunks -> checked canonical batches with arrivals relative to the first request."""

    def __init__(
        self, src: Path, spec: FormatSpec, chosen: dict[str, str], time_unit: str, drop: bool
    ) -> None:
        self.src = src
        self.spec = spec
        self.chosen = chosen
        self.unit = spec.time_unit if spec.time_unit != "auto" else None
        self.auto_unit_s = TIME_UNITS_S[time_unit]
        self.drop = drop
        self.rows_read = 0
        self.dropped_failed = 0
        self.origin: float | int | None = None
        self.checker = TraceChecker(str(src), display=dict(chosen))
        order = [c for c in CANONICAL_COLUMNS if c in chosen]
        self.outputs = order + [c for c in chosen if c not in CANONICAL_COLUMNS]

    @property
    def last_arrival_s(self) -> float:
        return self.checker.last_arrival_s or 0.0

    def batches(self):
        if self.spec.kind == "csv":
            chunks = csv_batches(self.src, sorted(set(self.chosen.values())))
        else:
            types = self.spec.json_types
            wanted = set(self.chosen.values())
            schema = pa.schema([(k, t) for k, t in types.items() if k in wanted]) if types else None
            chunks = jsonl_batches(self.src, schema)
        for first_line, raw in chunks:
            if raw.num_rows:
                yield self._convert(first_line, raw)

    def _convert(self, first_line: int, raw: pa.RecordBatch) -> pa.RecordBatch:
        lines = np.arange(first_line, first_line + raw.num_rows)
        self.rows_read += raw.num_rows
        arrays, problems = {}, []
        for out in self.outputs:
            try:
                arrays[out] = self._parse(out, raw.column(self.chosen[out]))
            except _Unparsable as bad:
                problems.append(bad)
        if problems:
            # Report the earliest line: first check the rows before it, which all parse.
            bad = min(problems, key=lambda p: p.index)
            if bad.index:
                self._convert(first_line, raw.slice(0, bad.index))
            got = "an empty value" if bad.got is None else bad.got
            raise bad_value(
                str(self.src), self.chosen[bad.out], f"line {lines[bad.index]}", bad.expected, got
            )
        batch = pa.RecordBatch.from_arrays(list(arrays.values()), names=list(arrays))
        if self.drop:
            failed = (
                pc.or_(pc.equal(arrays["prompt_tokens"], 0), pc.equal(arrays["output_tokens"], 0))
                .to_numpy(zero_copy_only=False)
                .astype(bool)
            )
            if failed.any():
                self.dropped_failed += int(failed.sum())
                batch = batch.filter(pa.array(~failed))
                lines = lines[~failed]
        base = self.checker.rows
        self.checker.locate = lambda i, base=base, lines=lines: f"line {lines[i - base]}"
        return self.checker.check(batch)

    def _parse(self, out: str, column: pa.Array) -> pa.Array:
        try:
            if out == "arrival_s":
                return pa.array(self._seconds(column), pa.float64())
            if out in ("prompt_tokens", "output_tokens"):
                return pa.array(_tokens(out, column), pa.int64())
            if out == "prefix_hashes":
                return column
            return pc.cast(column, pa.string())
        except pa.ArrowNotImplementedError:  # e.g. a JSON object where text or a number belongs
            expected = {"arrival_s": TIMESTAMP_EXPECTED}.get(out, "a number or text")
            raise _Unparsable(out, 0, expected, f"values of type {column.type}") from None

    def _seconds(self, column: pa.Array) -> np.ndarray:
        """Seconds since the first request: wall-clock strings or numbers in a unit."""
        if self.unit is None:  # generic source: numbers in --time-unit, or wall-clock strings
            self.unit = "auto-number" if _first_is_number(column) else "datetime"
        if self.unit == "datetime":
            try:
                ns = wallclock_ns(column)
            except BadValue as bad:
                got = None if bad.value is None else repr(bad.value)
                raise _Unparsable("arrival_s", bad.index, TIMESTAMP_EXPECTED, got) from None
            if self.origin is None:
                self.origin = int(ns[0])
            return (ns - self.origin) / 1e9
        unit_s = self.auto_unit_s if self.unit == "auto-number" else TIME_UNITS_S[self.unit]
        values = _numbers("arrival_s", column, "a number of seconds") * unit_s
        if self.origin is None:
            self.origin = float(values[0])
        return values - self.origin


TIMESTAMP_EXPECTED = "a wall-clock timestamp like 2023-11-16 18:17:03.9799600"


def _first_is_number(column: pa.Array) -> bool:
    """Whether generic arrivals are numbers, judged by the first non-empty value alone: judged
    on the whole chunk, one typo further down would make every row look like a bad timestamp."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return True
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return False  # JSON may hand over parsed timestamps; those are wall clock
    text = pc.utf8_trim_whitespace(column.drop_null())
    text = text.filter(pc.not_equal(text, ""))
    try:
        return len(text) == 0 or math.isfinite(float(text[0].as_py()))
    except ValueError:
        return False


class _Unparsable(Exception):
    """A source value that cannot be read as its column's type: column, row index, value."""

    def __init__(self, out: str, index: int, expected: str, got: object) -> None:
        super().__init__(out, index, expected, got)
        self.out, self.index, self.expected, self.got = out, index, expected, got


def _tokens(out: str, column: pa.Array) -> np.ndarray:
    values = _numbers(out, column, "a whole number of tokens")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) > INT32_MAX)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _Unparsable(out, i, f"a whole number of tokens (at most {INT32_MAX})", values[i])
    return values.astype(np.int64)


def _numbers(out: str, column: pa.Array, expected: str) -> np.ndarray:
    """Float64 values of a numeric or text column; the first unparsable one is an error."""
    if column.null_count:
        i = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise _Unparsable(out, i, expected, None)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise _Unparsable(out, 0, expected, f"a value of type {column.type}")
    try:
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        i = first_failure(column, lambda part: pc.cast(part, pa.float64()))
        raise _Unparsable(out, i, expected, repr(column[i].as_py())) from None
