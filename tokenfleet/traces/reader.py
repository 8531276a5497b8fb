"""Stream a canonical Parquet trace in record batches, checked on the way in.

A trace can be longer than memory (a week of a busy service), so nothing here reads a file
whole: batches come from the Parquet row groups one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenfleet.errors import UserError
from tokenfleet.traces.paths import require_regular_file
from tokenfleet.traces.schema import (
    CANONICAL_COLUMNS,
    DEFAULT_TIER,
    PREFIX_BLOCK_SIZE_KEY,
    TRACE_SCHEMA,
    TraceChecker,
    check_columns,
)
from tokenfleet.traces.unique import check_unique_ids


def open_trace(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """Open a Parquet trace, turning the ways a file can be wrong into one-line user errors."""
    path = Path(path)
    require_regular_file(path, "a Parquet trace file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty; expected a Parquet trace")
    try:
        # pre_buffer=False: with pyarrow's read ahead, streaming a trace held most of it.
        parquet = pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowInvalid, OSError):
        hint = (
            "convert it first with `tokenfleet traces convert`"
            if path.suffix.lower() in (".csv", ".json", ".jsonl", ".ndjson", ".gz")
            else "expected a trace written by tokenfleet (or any Parquet file), not a truncated one"
        )
        raise UserError(f"{path}: not a Parquet file; {hint}") from None
    check_columns(str(path), parquet.schema_arrow)
    if parquet.metadata.num_rows == 0:
        raise UserError(f"{path}: the trace has no rows; expected at least one request")
    return parquet


def trace_metadata(path: str | os.PathLike[str]) -> dict:
    """Row count, columns and prefix block size of a trace, from its footer alone."""
    parquet = open_trace(path)
    meta = parquet.schema_arrow.metadata or {}
    block = meta.get(PREFIX_BLOCK_SIZE_KEY)
    if block is not None:
        try:
            block = int(block)
        except ValueError:
            raise UserError(
                f"{path}: footer key {PREFIX_BLOCK_SIZE_KEY.decode()} = {block.decode()!r} is "
                "not a whole number of tokens"
            ) from None
        if block < 0:
            raise UserError(
                f"{path}: footer key {PREFIX_BLOCK_SIZE_KEY.decode()} = {block} must be >= 1"
            )
    return {
        "rows": parquet.metadata.num_rows,
        "columns": parquet.schema_arrow.names,
        "prefix_block_size": block,
    }


def read_trace_batches(
    path: str | os.PathLike[str], batch_rows: int = 65_536, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Yield checked record batches of a trace, cast to the canonical column types.

    With `columns`, only those are read; an optional canonical column the file lacks is filled
    with its default (request_id: the row number, tier: "standard", others: null), so callers
    get the same batch shape from every trace. Raises UserError at the first bad value, naming
    the file, column and global row (0 = first row); when request_id is read, a repeated id is
    refused before the first batch (so a replay stops before it simulates anything).
    """
    parquet = open_trace(path)
    present = set(parquet.schema_arrow.names)
    wanted = list(columns) if columns is not None else parquet.schema_arrow.names
    for name in wanted:
        if name not in present and name not in CANONICAL_COLUMNS:
            raise UserError(
                f"{path}: column {name!r} is missing (found: {', '.join(sorted(present))})"
            )
    missing = [n for n in wanted if n not in present]
    to_read = [n for n in wanted if n in present]
    if "request_id" in to_read:
        check_unique_ids(parquet, str(path))
    checker = TraceChecker(str(path))
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=to_read):
        first_row = checker.rows
        batch = checker.check(batch)
        if missing:
            batch = _with_defaults(batch, wanted, missing, first_row)
        yield batch


def _with_defaults(
    batch: pa.RecordBatch, wanted: list[str], missing: list[str], first_row: int
) -> pa.RecordBatch:
    """Add the documented defaults for optional columns the file does not have."""
    n = batch.num_rows
    arrays = {name: batch.column(name) for name in batch.schema.names}
    for name in missing:
        if name == "request_id":
            arrays[name] = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
        elif name == "tier":
            arrays[name] = pa.array([DEFAULT_TIER], pa.string()).take(np.zeros(n, np.int64))
        else:
            arrays[name] = pa.nulls(n, TRACE_SCHEMA.field(name).type)
    return pa.RecordBatch.from_arrays([arrays[n] for n in wanted], names=wanted)
