"""Repeated request ids: refused by validate, inspect and the reader a replay uses, naming the
first repeated id and its rows, against a plain Python reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenfleet.errors import UserError
from tokenfleet.traces import unique
from tokenfleet.traces.reader import open_trace, read_trace_batches
from tokenfleet.traces.validate import validate_trace


def write(path, ids, row_group_size: int | None = None):
    """A valid trace whose request_id column holds `ids` (all-null lists as int64)."""
    n = len(ids)
    if isinstance(ids, list) and all(v is None for v in ids):
        ids = pa.array(ids, pa.int64())
    pq.write_table(
        pa.table({"arrival_s": np.arange(n, dtype=float), "prompt_tokens": np.ones(n, np.int32),
                  "output_tokens": np.ones(n, np.int32), "request_id": ids}),
        path,
        row_group_size=row_group_size,
    )  # fmt: skip
    return path


def reference(ids: list) -> tuple[object, list[int]] | None:
    """The id whose second occurrence comes first, and all its rows; None if none repeats."""
    seen: dict[object, int] = {}
    for row, value in enumerate(ids):
        if value is None:
            continue
        if value in seen:
            return value, [r for r, v in enumerate(ids) if v == value]
        seen[value] = row
    return None


ids_strategy = st.one_of(
    st.lists(st.one_of(st.none(), st.integers(-3, 40)), min_size=1, max_size=60),
    st.lists(st.one_of(st.none(), st.text("ab", max_size=3)), min_size=1, max_size=60),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=60, unique=True).map(sorted),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=ids_strategy, group=st.integers(1, 9), batch=st.integers(1, 9))
def test_the_first_repeated_id_and_its_rows(tmp_path_factory, monkeypatch, ids, group, batch):
    """Across row groups and read batches of any size, with nulls (no id) anywhere."""
    monkeypatch.setattr(unique, "BATCH_ROWS", batch)
    path = write(tmp_path_factory.mktemp("u") / "t.parquet", ids, group)
    expected = reference(ids)
    if expected is None:
        assert validate_trace(path)["rows"] == len(ids)
        return
    value, rows = expected
    with pytest.raises(UserError) as err:
        validate_trace(path)
    message = str(err.value)
    assert message.startswith(f"{path}: column 'request_id': id {value!r} is repeated (rows ")
    shown = message.split("(rows ", 1)[1].split(")", 1)[0]
    listed = [int(r) for r in shown.split(" and ")[0].split(", ")]
    if len(rows) > unique.SHOWN_ROWS:
        assert listed == rows[: unique.SHOWN_ROWS]
        assert shown.endswith(f" and {len(rows) - unique.SHOWN_ROWS:,} more")
    else:
        assert listed + [int(shown.rsplit(" and ", 1)[1])] == rows


def test_colliding_keys_are_not_a_repeat(tmp_path, monkeypatch):
    """Text ids are compared by a 64-bit hash first; equal hashes of different ids pass."""

    def collide(column: pa.Array) -> np.ndarray:
        return np.zeros(len(column.drop_null()), np.uint64)

    monkeypatch.setattr(unique, "_keys", collide)
    validate_trace(write(tmp_path / "a.parquet", ["z", "y", "x"]))  # not increasing: keys used
    with pytest.raises(UserError, match=r"id 'y' is repeated \(rows 1 and 3\)"):
        validate_trace(write(tmp_path / "b.parquet", ["z", "y", "x", "y"]))


def test_increasing_ids_are_checked_with_one_batch_in_memory(tmp_path, monkeypatch):
    """Ids that only increase (across row groups too) never gather the column's keys."""

    def gathered(column):
        raise AssertionError("keys gathered for increasing ids")

    monkeypatch.setattr(unique, "_keys", gathered)
    monkeypatch.setattr(unique, "BATCH_ROWS", 3)
    path = write(tmp_path / "t.parquet", [2, 5, None, 9, 10, 11, 40], row_group_size=2)
    unique.check_unique_ids(open_trace(path), str(path))
    path = write(tmp_path / "s.parquet", ["a", "ab", "b", "c"], row_group_size=3)
    unique.check_unique_ids(open_trace(path), str(path))


def test_the_reader_refuses_before_its_first_batch_only_when_ids_are_read(tmp_path):
    """A replay reads request_id (and stops before simulating); a read without it, such as
    synth --lengths-from, does not pay for the check."""
    path = write(tmp_path / "t.parquet", [1, 2, 1])
    batches = read_trace_batches(path, columns=["arrival_s", "request_id", "tier"])
    with pytest.raises(UserError, match=r"id 1 is repeated \(rows 0 and 2\)"):
        next(batches)
    lengths = read_trace_batches(path, columns=["prompt_tokens", "output_tokens"])
    assert sum(b.num_rows for b in lengths) == 3


def test_unsigned_ids_beyond_int64_are_one_line(tmp_path):
    path = write(tmp_path / "t.parquet", pa.array([1, 2**63 + 5], pa.uint64()))
    with pytest.raises(UserError) as err:
        validate_trace(path)
    assert str(err.value) == (
        f"{path}: column 'request_id', row 1: expected an integer id <= 9223372036854775807 "
        "(int64), got 9223372036854775813"
    )


def test_a_repeat_after_many_increasing_batches(tmp_path, monkeypatch):
    """The increasing batches before the first decrease are read again, and count."""
    monkeypatch.setattr(unique, "BATCH_ROWS", 2)
    path = write(tmp_path / "t.parquet", [1, 2, 3, 4, 5, 6, 7, 3, 8], row_group_size=2)
    with pytest.raises(UserError, match=r"id 3 is repeated \(rows 2 and 7\)"):
        validate_trace(path)
