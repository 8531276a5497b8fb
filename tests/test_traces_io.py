"""The trace writer and streaming reader: round trips, defaults, and checks across batches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.errors import UserError
from tokenfleet.traces.reader import read_trace_batches, trace_metadata
from tokenfleet.traces.schema import PREFIX_BLOCK_SIZE_KEY, TRACE_SCHEMA
from tokenfleet.traces.writer import TraceWriter


def batch(arrival, prompt, output, **extra) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {"arrival_s": arrival, "prompt_tokens": prompt, "output_tokens": output, **extra}
    )


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_round_trip_casts_to_canonical_types_and_keeps_metadata(tmp_path):
    path = tmp_path / "t.parquet"
    hashes = pa.array([[1, 2], [1, 3], None], pa.list_(pa.int32()))
    with TraceWriter(path, metadata={PREFIX_BLOCK_SIZE_KEY: b"16"}) as writer:
        writer.write(
            batch(
                pa.array([0, 1, 1], pa.int64()),
                pa.array([5, 6, 7], pa.int64()),
                pa.array([0, 1, 2], pa.int16()),
                tenant=pa.array(["a", "b", "a"]).dictionary_encode(),
                prefix_hashes=hashes,
                note=["x", "y", "z"],
            )
        )
    assert trace_metadata(path) == {
        "rows": 3,
        "columns": [
            "arrival_s",
            "prompt_tokens",
            "output_tokens",
            "tenant",
            "prefix_hashes",
            "note",
        ],
        "prefix_block_size": 16,
    }
    (out,) = read_trace_batches(path)
    for name in ("arrival_s", "prompt_tokens", "output_tokens", "tenant", "prefix_hashes"):
        assert out.schema.field(name).type == TRACE_SCHEMA.field(name).type
    assert out.column("arrival_s").to_pylist() == [0.0, 1.0, 1.0]
    assert out.column("tenant").to_pylist() == ["a", "b", "a"]
    assert out.column("prefix_hashes").to_pylist() == [[1, 2], [1, 3], None]
    assert out.column("note").to_pylist() == ["x", "y", "z"]  # extra columns are kept


def test_requested_optional_columns_get_their_defaults(tmp_path):
    path = tmp_path / "t.parquet"
    with TraceWriter(path) as writer:
        writer.write(batch([0.0, 1.0, 2.0, 3.0, 4.0], [1] * 5, [1] * 5))
    wanted = ["arrival_s", "request_id", "tier", "tenant", "session_id"]
    batches = list(read_trace_batches(path, batch_rows=2, columns=wanted))
    assert [b.num_rows for b in batches] == [2, 2, 1]
    table = pa.Table.from_batches(batches)
    assert table.column_names == wanted
    assert table.column("request_id").to_pylist() == [0, 1, 2, 3, 4]  # global row numbers
    assert table.column("tier").to_pylist() == ["standard"] * 5
    assert table.column("tenant").null_count == 5


def test_unknown_requested_column_is_refused(tmp_path):
    path = tmp_path / "t.parquet"
    with TraceWriter(path) as writer:
        writer.write(batch([0.0], [1], [1]))
    with pytest.raises(UserError, match=r"t.parquet: column 'model' is missing"):
        list(read_trace_batches(path, columns=["arrival_s", "model"]))


def test_reader_finds_a_decrease_across_batch_boundaries(tmp_path):
    # Written unchecked (as a foreign tool would), then read in batches of 3 rows.
    path = tmp_path / "t.parquet"
    arrival = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 4.5, 6.0]
    pq.write_table(
        pa.table({"arrival_s": arrival, "prompt_tokens": [1] * 8, "output_tokens": [0] * 8}), path
    )
    with pytest.raises(UserError) as err:
        for _ in read_trace_batches(path, batch_rows=3):
            pass
    assert str(err.value) == (
        f"{path}: column 'arrival_s', row 6: expected arrivals that never decrease "
        "(sort the file by time), got 4.5 s, earlier than the previous row's 5.0 s"
    )


def test_reader_streams_row_groups_without_reading_the_file_whole(tmp_path):
    path = tmp_path / "t.parquet"
    n = 50_000
    pq.write_table(
        pa.table({"arrival_s": np.arange(n, dtype=float), "prompt_tokens": np.ones(n, np.int32),
                  "output_tokens": np.ones(n, np.int32)}),
        path,
        row_group_size=10_000,
    )  # fmt: skip
    sizes = [b.num_rows for b in read_trace_batches(path, batch_rows=4_096)]
    assert sum(sizes) == n and max(sizes) <= 4_096


def test_writer_refuses_bad_rows_and_leaves_no_file(tmp_path):
    path = tmp_path / "t.parquet"
    message = r"column 'prompt_tokens', row 3: expected a whole number"
    with pytest.raises(UserError, match=message), TraceWriter(path) as writer:
        writer.write(batch([0.0, 1.0], [3, 4], [1, 1]))
        writer.write(batch([2.0, 3.0], [5, 0], [1, 1]))
    assert leftovers(tmp_path) == []


def test_writer_with_no_rows_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="no rows to write"), TraceWriter(tmp_path / "t.parquet"):
        pass
    assert leftovers(tmp_path) == []


def test_writer_interrupted_leaves_no_file(tmp_path):
    with pytest.raises(KeyboardInterrupt), TraceWriter(tmp_path / "t.parquet") as writer:
        writer.write(batch([0.0], [1], [1]))
        raise KeyboardInterrupt
    assert leftovers(tmp_path) == []


def test_writer_gathers_small_batches_into_row_groups(tmp_path):
    path = tmp_path / "t.parquet"
    with TraceWriter(path) as writer:
        for i in range(100):
            writer.write(batch([float(i)], [1], [1]))
    assert pq.ParquetFile(path).metadata.num_row_groups == 1


rows_strategy = st.lists(
    st.tuples(
        st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
        st.integers(-2, 200_000),
        st.integers(-2, 10_000),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, batch_rows=st.integers(1, 7), sort=st.booleans())
def test_reader_accepts_exactly_the_valid_traces(tmp_path_factory, rows, batch_rows, sort):
    """Any trace: the reader either returns it unchanged, or names the first bad row."""
    if sort:
        rows = sorted(rows)
    arrival, prompt, output = (list(col) for col in zip(*rows, strict=True))
    path = tmp_path_factory.mktemp("p") / "t.parquet"
    pq.write_table(
        pa.table({"arrival_s": arrival, "prompt_tokens": prompt, "output_tokens": output}), path
    )
    expected_bad = None
    for i in range(len(rows)):
        if i and arrival[i] < arrival[i - 1]:
            expected_bad = (i, "arrival_s")
        elif prompt[i] < 1:
            expected_bad = (i, "prompt_tokens")
        elif output[i] < 0:
            expected_bad = (i, "output_tokens")
        if expected_bad:
            break
    try:
        got = pa.Table.from_batches(list(read_trace_batches(path, batch_rows=batch_rows)))
    except UserError as err:
        assert expected_bad is not None
        # The earliest bad row; within it, the leftmost bad column.
        assert f"column '{expected_bad[1]}', row {expected_bad[0]}: expected" in str(err)
    else:
        assert expected_bad is None
        assert got.column("arrival_s").to_pylist() == arrival
        assert got.column("prompt_tokens").to_pylist() == prompt
        assert got.column("output_tokens").to_pylist() == output
