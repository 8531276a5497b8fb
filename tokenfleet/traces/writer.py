"""Write a trace atomically, one record batch at a time, checking every batch on its way out.

Batches are gathered into row groups of about a million rows: many tiny row groups would make
every later read of the trace slow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from tokenfleet.atomic import atomic_path
from tokenfleet.errors import UserError
from tokenfleet.traces.schema import REQUIRED_COLUMNS, TraceChecker, check_columns

ROW_GROUP_ROWS = 1 << 20
ROW_GROUP_BYTES = 64_000_000


class TraceWriter:
    """Context manager: `with TraceWriter(path, metadata={...}) as w: w.write(batch)`.

    The file appears at `path` only when the block ends without an error (temporary file and
    rename), so a failed or interrupted run leaves nothing behind. `metadata` goes into the
    Parquet schema metadata (e.g. the prefix block size). Writing no rows is a user error: a
    trace without requests is refused by every reader.
    """

    def __init__(
        self, path: str | os.PathLike[str], metadata: dict[bytes | str, bytes | str] | None = None
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a directory; give a file name for the trace")
        self.metadata = {
            (k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
            for k, v in (metadata or {}).items()
        }
        self.rows = 0
        self._checker = TraceChecker(str(self.path))
        self._atomic = atomic_path(self.path)
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def __enter__(self) -> TraceWriter:
        self._tmp = self._atomic.__enter__()  # refuses a place no file can be made (/proc)
        return self

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Check `batch` and queue it; full row groups go to disk as they fill."""
        batches = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        for part in batches:
            if part.num_rows == 0:
                continue
            if self._writer is None:
                check_columns(str(self.path), part.schema, REQUIRED_COLUMNS)
            part = self._checker.check(part)
            if self._writer is None:
                metadata = {**(part.schema.metadata or {}), **self.metadata}
                schema = part.schema.with_metadata(metadata)
                self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")
                self._schema = schema
            part = part.replace_schema_metadata(self._schema.metadata)
            self._pending.append(part)
            self._pending_rows += part.num_rows
            self._pending_bytes += part.nbytes
            self.rows += part.num_rows
            if self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, schema=self._schema)
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
            self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            if exc_type is None:
                if self._writer is None:
                    raise UserError(f"{self.path}: no rows to write; a trace needs a request")
                self._flush()
            if self._writer is not None:
                self._writer.close()
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self._atomic.__exit__(exc_type, exc, tb)
