"""Atomic output: every command writes to a temporary file and renames it into place at the end.

An interrupted or failed run (including Ctrl-C) leaves no half-written file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tokenfleet.errors import UserError, notify

PathLike = str | os.PathLike[str]
# Errors that writing an output can meet and a user can fix: a full disk or quota, a file too
# large for the file system, a read-only one.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


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
    try:  # a directory that says it is writable and is not (/proc, a read-only mount)
        tmp.touch()
        tmp.unlink()
    except OSError as err:
        raise UserError(
            f"{dst}: cannot write in {parent} ({err.strerror}); choose another path"
        ) from None
    try:
        yield tmp
        os.replace(tmp, dst)
    except OSError as err:
        _remove(tmp)
        if err.errno in WRITE_ERRNOS:  # the output's device, never an input
            raise UserError(
                f"{dst}: {err.strerror} while writing; free some space or choose another path"
            ) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    """Remove a temporary output, file or directory, if it is there."""
    with contextlib.suppress(FileNotFoundError):
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink()


def check_replaceable_dir(dst: str | os.PathLike[str], marker: str, inputs: tuple = ()) -> None:
    """Refuse an output directory whose replacement would destroy something else.

    A finished output replaces the directory whole, so only an empty directory or an earlier
    output of the same command (it holds `marker`) may be replaced; the current directory, a home
    directory or the folder holding an input must never be."""
    path = Path(dst)
    if path.is_symlink():  # replacing it would need rmtree on a link, or follow it
        raise UserError(f"output directory {dst}: is a symbolic link; give the directory itself")
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
            if any(dst.iterdir()):
                notify(f"replaced the earlier output in {dst}/ (it held {marker})")
            shutil.rmtree(dst)


def refuse_clobber(
    outputs: dict[str, PathLike | None],
    inputs: dict[str, PathLike | None] | None = None,
    read_dirs: dict[str, PathLike | None] | None = None,
) -> None:
    """Refuse, in one line, an output that would destroy what the command reads or writes.

    Every command that writes a file calls this before doing any work: an output (named by its
    flag, e.g. `--parquet`) may not resolve to an input, to another output of the same call, or
    into a run directory the command reads. Without it the final rename replaces the user's
    own file. `-` (stdout) and None (not given) are skipped, and so are inputs that are not
    files (a built-in name such as `llama-3.1-8b` is not a path).
    """
    given = {name: Path(p) for name, p in outputs.items() if p is not None and str(p) != "-"}
    sources = {name: Path(p) for name, p in (inputs or {}).items() if p and Path(p).is_file()}
    dirs = {name: Path(p) for name, p in (read_dirs or {}).items() if p and Path(p).is_dir()}
    seen: dict[str, Path] = {}
    for name, out in given.items():
        for other, src in {**sources, **seen}.items():
            if _same_file(out, src):
                raise UserError(
                    f"{name} {out}: is the same file as {other} {src}; choose another output path"
                )
        for other, folder in dirs.items():
            if folder.resolve() == out.resolve() or folder.resolve() in out.resolve().parents:
                raise UserError(
                    f"{name} {out}: lies inside {other} {folder}, which this command reads; "
                    "choose a path outside it"
                )
        seen[name] = out


def _same_file(a: Path, b: Path) -> bool:
    """Same path once resolved, or the same file by another name (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False
