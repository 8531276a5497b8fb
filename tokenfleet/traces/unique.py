"""Refuse repeated request ids, reading the request_id column alone.

A replay's requests.parquet names each request by its request_id, and requests without a
session fall back to it for cache affinity: two requests sharing one cannot be told apart
afterwards. The check streams the column: ids that only ever increase (row numbers, most
logs) are unique with one batch in memory; otherwise the ids are gathered into one array of
64-bit keys (the integers themselves, or a hash of text ids) and sorted in place, 8 bytes a
row. Only when keys repeat is the column read again, whole, to name the first repeated id and
its rows exactly (a hash collision alone is not a repeat). Null ids are no id and never repeat.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenfleet.errors import UserError

ID_COLUMN = "request_id"
BATCH_ROWS = 1 << 16
SHOWN_ROWS = 5


def check_unique_ids(parquet: pq.ParquetFile, source: str) -> None:
    """Raise UserError naming the first repeated request_id (the one whose second row comes
    first) and its rows (0 = first row); return quietly if the file has no such column."""
    if ID_COLUMN not in parquet.schema_arrow.names:
        return
    keys = _keys_unless_increasing(parquet)
    if keys is None:
        return
    keys.sort()
    same = keys[1:] == keys[:-1]
    if not same.any():
        return
    repeated = np.unique(keys[1:][same])
    del keys, same
    found = _first_repeat(parquet, repeated)
    if found is not None:
        value, rows = found
        raise UserError(
            f"{source}: column {ID_COLUMN!r}: id {value!r} is repeated ({_rows(rows)}); give "
            "each request its own id, or drop the column to number requests by row"
        )


def _id_batches(parquet: pq.ParquetFile) -> Iterator[pa.Array]:
    """The id column batch by batch, as int or string arrays (dictionaries decoded)."""
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[ID_COLUMN]):
        yield _plain(batch.column(0))


def _plain(column: pa.Array) -> pa.Array:
    """Dictionary-encoded, large or view text ids as plain strings: one kind to compare."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column if pa.types.is_integer(column.type) else column.cast(pa.string())


def _keys_unless_increasing(parquet: pq.ParquetFile) -> np.ndarray | None:
    """None if the non-null ids strictly increase; else the keys of all of them, in row order.

    The batches before the first decrease are not kept: only then are they read again (ids in
    no order decrease in the first batch, so the column is read once).
    """
    batches = _id_batches(parquet)
    last: pa.Array | None = None  # the last non-null id so far, as a one-element array
    for done, column in enumerate(batches):
        present = column.drop_null()
        if _increases(present, last):
            last = present.slice(len(present) - 1) if len(present) else last
            continue
        before = itertools.islice(_id_batches(parquet), done)
        return _gather(itertools.chain(before, [column], batches), parquet.metadata.num_rows)
    return None


def _gather(columns: Iterator[pa.Array], rows: int) -> np.ndarray:
    """The keys of every batch in one array, filled in place (concatenating would hold two)."""
    keys: np.ndarray | None = None
    end = 0
    for column in columns:
        part = _keys(column)
        if keys is None:
            keys = np.empty(rows, part.dtype)
        keys[end : end + len(part)] = part
        end += len(part)
    return keys[:end]


def _increases(present: pa.Array, last: pa.Array | None) -> bool:
    """Whether non-null ids strictly increase from row to row, after `last`."""
    if len(present) == 0:
        return True
    if last is not None and not pc.greater(present.slice(0, 1), last)[0].as_py():
        return False
    steps = pc.greater(present.slice(1), present.slice(0, len(present) - 1))
    return bool(pc.all(steps, min_count=0).as_py())


def _keys(column: pa.Array) -> np.ndarray:
    """64-bit keys of the non-null ids: equal ids have equal keys."""
    column = column.drop_null()
    if pa.types.is_integer(column.type):
        return column.to_numpy()
    import polars as pl  # only text ids need it: Arrow has no vectorised hash

    return pl.Series(values=column).hash().to_numpy()


def _first_repeat(
    parquet: pq.ParquetFile, repeated: np.ndarray
) -> tuple[object, np.ndarray] | None:
    """The first id seen twice and every row holding it, exactly; None if only keys collided."""
    column = _plain(parquet.read(columns=[ID_COLUMN]).column(0).combine_chunks())
    rows = (
        np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
        if column.null_count
        else np.arange(len(column))
    )
    values = column.drop_null()
    candidates = np.flatnonzero(np.isin(_keys(values), repeated))
    codes = pc.dictionary_encode(values.take(candidates)).indices.to_numpy()
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    later = order[1:][ordered[1:] == ordered[:-1]]  # every occurrence after an id's first
    if len(later) == 0:
        return None
    first = int(later.min())
    holding = candidates[np.flatnonzero(codes == codes[first])]
    return values[int(candidates[first])].as_py(), rows[holding]


def _rows(rows: np.ndarray) -> str:
    """ "rows 3 and 10", or "rows 3, 10, 12, 15, 20 and 7 more"."""
    shown = [str(r) for r in rows[:SHOWN_ROWS]]
    if len(rows) > SHOWN_ROWS:
        return f"rows {', '.join(shown)} and {len(rows) - SHOWN_ROWS:,} more"
    return f"rows {', '.join(shown[:-1])} and {shown[-1]}"
