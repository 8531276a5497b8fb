"""Check a whole trace against the schema, streaming, without computing anything else."""

from __future__ import annotations

import os

from tqdm import tqdm

from tokenfleet.traces.reader import read_trace_batches, trace_metadata


def validate_trace(path: str | os.PathLike[str], *, progress: bool = False) -> dict:
    """Read every batch through the checks; raise UserError at the first bad value.

    Returns the row count, columns and prefix block size of a valid trace.
    """
    meta = trace_metadata(path)
    with tqdm(total=meta["rows"], unit=" rows", unit_scale=True, disable=not progress) as bar:
        for batch in read_trace_batches(path):
            bar.update(batch.num_rows)
    return {"trace": str(path), "valid": True, **meta}
