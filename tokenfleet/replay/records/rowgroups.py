"""Row groups made of the small record batches the writers convert as the run goes."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from tokenfleet.replay.records import ROW_GROUP_ROWS


class RowGroups:
    """Record batches held until they make a row group of at least ROW_GROUP_ROWS rows (or the
    end): the writers convert small batches as they come, the files get large row groups."""

    def __init__(self, write_table: Callable[[pa.Table], None]) -> None:
        self.write_table = write_table
        self.pending: list[pa.RecordBatch] = []
        self.rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.rows += batch.num_rows
        if self.rows >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:  # as one record batch: one row group
            self.write_table(pa.Table.from_batches(self.pending).combine_chunks())
        self.pending = []
        self.rows = 0
