"""Wall-clock timestamps (Azure 2023/2024 style) to integer nanoseconds, vectorised.

Azure's files mix formats within one column: seven fractional digits (100 ns), none at all,
with or without a UTC offset. Arrow's ISO-8601 parser reads each, but refuses to mix zoned and
zone-less strings in one cast, so the two groups are cast apart. Nanoseconds stay integers until
the first timestamp is subtracted: float64 seconds since 1970 would lose the 100 ns digits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_ZONED = r"(Z|[+-]\d\d:?\d\d)$"


class BadValue(ValueError):
    """A value that cannot be parsed: `index` is its position in the array given."""

    def __init__(self, index: int, value: object) -> None:
        super().__init__(f"bad value at {index}: {value!r}")
        self.index = index
        self.value = value


def first_failure(values: pa.Array, convert: Callable[[pa.Array], object]) -> int:
    """Index of the first element on which `convert` fails (bisection: only on the error path)."""
    lo, hi = 0, len(values)  # the failure is in values[lo:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(values.slice(lo, mid - lo))
            lo = mid
        except (pa.ArrowInvalid, ValueError):
            hi = mid
    return lo


def wallclock_ns(values: pa.Array) -> np.ndarray:
    """Nanoseconds since 1970 (UTC) of ISO-like wall-clock strings; zone-less ones count as UTC.

    Raises BadValue at the first string that is not a timestamp.
    """
    values = pc.utf8_trim_whitespace(values.cast(pa.string()))
    if values.null_count:
        i = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise BadValue(i, None)
    try:
        return _cast_ns(values)
    except pa.ArrowInvalid:
        pass
    zoned = pc.match_substring_regex(values, _ZONED).to_numpy(zero_copy_only=False)
    out = np.empty(len(values), dtype=np.int64)
    for mask in (zoned, ~zoned):
        part = values.filter(pa.array(mask))
        try:
            out[mask] = _cast_ns(part)
        except pa.ArrowInvalid:
            i = int(np.flatnonzero(mask)[first_failure(part, _cast_ns)])
            raise BadValue(i, values[i].as_py()) from None
    return out


def _cast_ns(values: pa.Array) -> np.ndarray:
    """One cast for strings that all have, or all lack, a UTC offset."""
    if len(values) == 0:
        return np.empty(0, dtype=np.int64)
    zoned = pc.match_substring_regex(values.slice(0, 1), _ZONED)[0].as_py()
    target = pa.timestamp("ns", tz="UTC") if zoned else pa.timestamp("ns")
    return pc.cast(values, target).cast(pa.int64()).to_numpy(zero_copy_only=False)
