"""The canonical trace schema and the checks every batch passes on its way in or out.

One checker serves the reader, the writer and the converters, so a trace refused by one is
refused by all, with the same message: file, column, first bad row, what was expected.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokenfleet.errors import UserError

TRACE_SCHEMA = pa.schema(
    [
        pa.field("arrival_s", pa.float64(), nullable=False),
        pa.field("prompt_tokens", pa.int32(), nullable=False),
        pa.field("output_tokens", pa.int32(), nullable=False),
        pa.field("request_id", pa.int64()),
        pa.field("tenant", pa.string()),
        pa.field("tier", pa.string()),
        pa.field("session_id", pa.int64()),
        pa.field("turn", pa.int32()),
        pa.field("prefix_hashes", pa.list_(pa.int64())),
    ]
)
REQUIRED_COLUMNS: tuple[str, ...] = ("arrival_s", "prompt_tokens", "output_tokens")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "request_id",
    "tenant",
    "tier",
    "session_id",
    "turn",
    "prefix_hashes",
)
CANONICAL_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
PREFIX_BLOCK_SIZE_KEY = b"tokenfleet.prefix_block_size"
DEFAULT_TIER = "standard"
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# What each canonical column accepts on the way in (a predicate on the Arrow type) and its
# description for error messages. Accepted types are cast to the canonical ones.
_ACCEPTS: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
    "arrival_s": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), "float64 seconds"),
    "prompt_tokens": (pa.types.is_integer, "integer token counts"),
    "output_tokens": (pa.types.is_integer, "integer token counts"),
    "request_id": (lambda t: pa.types.is_integer(t) or _is_text(t), "int64 or string"),
    "tenant": (lambda t: _is_text(t), "string"),
    "tier": (lambda t: _is_text(t), "string"),
    "session_id": (lambda t: pa.types.is_integer(t) or _is_text(t), "int64 or string"),
    "turn": (pa.types.is_integer, "int32 turn numbers"),
    "prefix_hashes": (
        lambda t: (
            (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)
        ),
        "list<int64> (one hash per prefix block)",
    ),
}


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _canonical_type(name: str, t: pa.DataType) -> pa.DataType:
    """The type a column is cast to: the canonical one, or string for text id columns."""
    if name in ("request_id", "session_id") and _is_text(t):
        return pa.string()
    return TRACE_SCHEMA.field(name).type


def check_columns(source: str, schema: pa.Schema, required: tuple[str, ...] = REQUIRED_COLUMNS):
    """Refuse a schema that lacks a required column or holds a canonical column of a wrong type."""
    names = set(schema.names)
    for name in required:
        if name not in names:
            raise UserError(
                f"{source}: column {name!r} is missing; a trace needs "
                f"{', '.join(REQUIRED_COLUMNS)} (found: {', '.join(schema.names) or 'none'})"
            )
    for field in schema:
        if field.name in _ACCEPTS:
            accepts, expected = _ACCEPTS[field.name]
            if not accepts(field.type):
                raise UserError(
                    f"{source}: column {field.name!r} has type {field.type}; expected {expected}"
                )


def bad_value(source: str, column: str, where: str, expected: str, got: object) -> UserError:
    """The one-line error for a bad value: file, column, first bad row, expectation, value."""
    return UserError(f"{source}: column {column!r}, {where}: expected {expected}, got {got}")


class TraceChecker:
    """Checks a stream of batches against the schema and casts them to the canonical types.

    Keeps the global row count and the last arrival so that arrivals are checked to be
    non-decreasing across batches, not only within one. `locate(i)` turns a global row index
    into the words an error uses ("row 12", or "line 14" for a text source); `display` names a
    column as the user knows it (a converter's source column) in errors.
    """

    def __init__(
        self,
        source: str,
        locate: Callable[[int], str] | None = None,
        display: dict[str, str] | None = None,
    ) -> None:
        self.source = source
        self.locate = locate or (lambda i: f"row {i}")
        self.display = display or {}
        self.rows = 0
        self.last_arrival_s: float | None = None
        self._schema_checked = False

    def check(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Return `batch` cast to canonical types; raise UserError at its first bad value.

        "First" is the earliest row; within a row, the leftmost bad column.
        """
        if not self._schema_checked:
            check_columns(self.source, batch.schema, required=())
            self._schema_checked = True
        columns, problems = [], []
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            if name in _ACCEPTS:
                try:
                    column = self._check_column(name, column)
                except _Bad as bad:
                    problems.append((bad.index, len(columns), name, bad))
            columns.append(column)
        if problems:
            index, _, name, bad = min(problems, key=lambda p: p[:2])
            where = self.locate(self.rows + index)
            column_name = self.display.get(name, name)
            raise bad_value(self.source, column_name, where, bad.expected, bad.got)
        if "arrival_s" in batch.schema.names and batch.num_rows:
            self.last_arrival_s = float(columns[batch.schema.names.index("arrival_s")][-1].as_py())
        self.rows += batch.num_rows
        checked = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
        return checked.replace_schema_metadata(batch.schema.metadata)

    def _check_column(self, name: str, column: pa.Array) -> pa.Array:
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if name in REQUIRED_COLUMNS and column.null_count:
            first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise _Bad(first, "a value", "an empty value")
        if name == "arrival_s":
            return self._check_arrivals(column)
        if name in ("prompt_tokens", "output_tokens"):
            return _check_tokens(name, column)
        if name == "turn":
            return _check_turns(column)
        target = _canonical_type(name, column.type)
        if column.type == target:
            return column
        try:
            return pc.cast(column, target)
        except pa.ArrowInvalid:  # only unsigned 64-bit ids can overflow int64
            limit = pa.scalar(INT64_MAX, column.type)
            beyond = pc.greater(column, limit).fill_null(False).to_numpy(zero_copy_only=False)
            first = _first(beyond)
            got = column[first].as_py()
            raise _Bad(first, f"an integer id <= {INT64_MAX} (int64)", got) from None

    def _check_arrivals(self, column: pa.Array) -> pa.Array:
        values = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        if len(values) == 0:
            return column.cast(pa.float64())
        first_bad = _first(~np.isfinite(values))
        previous = np.empty_like(values)
        previous[0] = values[0] if self.last_arrival_s is None else self.last_arrival_s
        previous[1:] = values[:-1]
        first_down = _first(values < previous)
        if first_bad is not None and (first_down is None or first_bad <= first_down):
            raise _Bad(first_bad, "finite seconds", values[first_bad])
        if first_down is not None:
            raise _Bad(
                first_down,
                "arrivals that never decrease (sort the file by time)",
                f"{values[first_down]} s, earlier than the previous row's {previous[first_down]} s",
            )
        if values[0] < 0:  # arrivals never decrease, so only the first can be negative
            raise _Bad(0, "seconds >= 0 from the trace start", values[0])
        return pa.array(values, pa.float64()) if column.type != pa.float64() else column


class _Bad(Exception):
    """A bad value found by a column check: its index in the batch, expectation, value."""

    def __init__(self, index: int, expected: str, got: object) -> None:
        super().__init__(index, expected, got)
        self.index, self.expected, self.got = index, expected, got


def _first(mask: np.ndarray) -> int | None:
    return int(np.argmax(mask)) if mask.any() else None


def _check_tokens(name: str, column: pa.Array) -> pa.Array:
    values = column.to_numpy(zero_copy_only=False)
    low = 1 if name == "prompt_tokens" else 0
    first = _first((values < low) | (values > INT32_MAX))
    if first is not None:
        note = " (a request has at least one prompt token)" if low else ""
        if values[first] > INT32_MAX:
            note = f" and <= {INT32_MAX} (the int32 of the trace format)"
        raise _Bad(first, f"a whole number of tokens >= {low}{note}", values[first])
    return column if column.type == pa.int32() else pa.array(values.astype(np.int32))


def _check_turns(column: pa.Array) -> pa.Array:
    """Turn numbers within a session: whole numbers in [0, int32 max]; null means unknown."""
    values = column.fill_null(0).to_numpy(zero_copy_only=False)
    first = _first((values < 0) | (values > INT32_MAX))
    if first is not None:
        raise _Bad(first, f"a turn number >= 0 and <= {INT32_MAX} (int32)", values[first])
    return column if column.type == pa.int32() else pc.cast(column, pa.int32(), safe=False)
