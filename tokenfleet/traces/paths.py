"""What a trace command may read from and write to, checked before any file is opened.

A source must be a regular file: opening a FIFO that no process writes blocks inside Arrow,
where Ctrl-C cannot reach it, and a pipe cannot be read twice (convert sniffs the head, then
streams from the start). A trace is written as Parquet, so its name must say so: a `.csv`
holding Parquet bytes would fool the next program that opens it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tokenfleet.errors import UserError

TRACE_SUFFIX = ".parquet"
_SPECIAL = (
    (stat.S_ISFIFO, "a pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def require_regular_file(path: Path, expected: str) -> None:
    """Refuse a missing path, a directory or a pipe/device/socket, from its stat alone.

    `expected` says what the command reads ("a Parquet trace file"); stat never opens the
    path, so a FIFO without a writer is refused at once instead of hanging.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror}); expected {expected}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a directory; expected {expected}")
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _SPECIAL if test(mode)), "not a regular file")
        raise UserError(
            f"{path}: is {kind}; pipes and devices are not supported, "
            f"save the data to a file first (expected {expected})"
        )


def require_trace_suffix(path: str | os.PathLike[str], name: str) -> None:
    """Refuse an output trace name that does not end in .parquet (any case)."""
    path = Path(path)
    if path.suffix.lower() != TRACE_SUFFIX:
        fixed = path.with_name(path.stem + TRACE_SUFFIX) if path.suffix else Path(f"{path}.parquet")
        raise UserError(
            f"{name} {path}: a trace is written as Parquet; give it the .parquet suffix "
            f"(e.g. {fixed})"
        )
