"""Atomic output: every command writes to a temporary file and renames it into place at the end.

An interrupted or failed run (including Ctrl-C) leaves no half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tokenfleet.errors import UserError


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `dst`; rename it to `dst` only if the block succeeds."""
    dst = Path(dst)
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(
            f"{dst}: directory {parent} does not exist; create it or choose another path"
        )
    if not os.access(parent, os.W_OK):
        raise UserError(f"{dst}: directory {parent} is not writable; choose another output path")
    tmp = parent / f".{dst.name}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside `dst`; it replaces `dst` only if the block succeeds."""
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        tmp.mkdir()
        yield tmp
        if dst.exists():
            shutil.rmtree(dst)
