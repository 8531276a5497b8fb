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


def check_replaceable_dir(dst: str | os.PathLike[str], marker: str, inputs: tuple = ()) -> None:
    """Refuse an output directory whose replacement would destroy something else.

    A finished output replaces the directory whole, so only an empty directory or an earlier
    output of the same command (it holds `marker`) may be replaced; the current directory, a home
    directory or the folder holding an input must never be."""
    path = Path(dst)
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"output directory {dst}: is a file; choose a directory path")
    resolved = path.resolve()
    for item in (Path.cwd(), *(Path(i) for i in inputs if i is not None)):
        item = item.resolve()
        if item == resolved or resolved in item.parents:
            raise UserError(
                f"output directory {dst}: replacing it would delete {item}; choose a new one"
            )
    if any(path.iterdir()) and not (path / marker).is_file():
        raise UserError(
            f"output directory {dst}: not empty and holds no earlier {marker}; "
            "choose a new directory (an earlier output is replaced whole)"
        )


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike[str], marker: str, inputs: tuple = ()) -> Iterator[Path]:
    """Yield a temporary directory beside `dst`; it replaces `dst` only if the block succeeds.

    `dst` must be new, empty, or an earlier output holding `marker` (see check_replaceable_dir).
    """
    check_replaceable_dir(dst, marker, inputs)
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        tmp.mkdir()
        yield tmp
        if dst.exists():
            shutil.rmtree(dst)
