"""Plain-text tables for the terminal: aligned columns, whole cells, numbers as people read them.

Polars' own printout cuts long strings, adds its shape and dtypes, and writes each number as
its column's dtype dictates; a figure name cut in half names nothing, so commands that print
tables of figures (compare, frontier) render them here instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

Cell = str | int | float | None

SIGNIFICANT = 4  # digits kept of a number that is not whole
GAP = "  "
MISSING = "-"


def format_number(value: float) -> str:
    """Whole numbers with thousands separators (1,347); others to four significant digits
    without trailing zeros (0.004183, 0.5, 15,032); exponent form beyond that (3.100e-07)."""
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if value == int(value) and magnitude < 1e15:
        return f"{int(value):,}"
    if magnitude < 1e-4 or magnitude >= 1e15:
        return f"{value:.3e}"
    decimals = max(0, SIGNIFICANT - 1 - math.floor(math.log10(magnitude)))
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_change(value: float) -> str:
    """A difference, signed so that a rise and a fall read apart at a glance (+0.0139)."""
    return ("+" if value > 0 else "") + format_number(value)


def format_percent(value: float) -> str:
    """A percent change to one decimal (+100.0%)."""
    return f"{value:+,.1f}%" if math.isfinite(value) else str(value)


@dataclass(frozen=True)
class Column:
    """A column's header and how its numbers are written (text is written as it is)."""

    header: str
    number: Callable[[float], str] = format_number


def render_table(columns: Sequence[str | Column], rows: Iterable[Sequence[Cell]]) -> str:
    """Rows under headers, each column as wide as its widest cell (nothing is cut).

    A column holding any number is right-aligned, header too, so digits line up; a column of
    text is left-aligned. A missing value (None) is a dash. Lines carry no trailing spaces.
    """
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    body = [list(row) for row in rows]
    text = [[c.header for c in cols]]
    text += [[_cell_text(cell, col) for cell, col in zip(row, cols, strict=True)] for row in body]
    right = [any(_is_number(row[i]) for row in body) for i in range(len(cols))]
    widths = [max(len(line[i]) for line in text) for i in range(len(cols))]
    lines = []
    for line in text:
        cells = [
            s.rjust(w) if r else s.ljust(w) for s, w, r in zip(line, widths, right, strict=True)
        ]
        lines.append(GAP.join(cells).rstrip())
    return "\n".join(lines)


def _is_number(cell: Cell) -> bool:
    return isinstance(cell, int | float) and not isinstance(cell, bool)


def _cell_text(cell: Cell, col: Column) -> str:
    if cell is None:
        return MISSING
    if _is_number(cell):
        return col.number(cell)
    return str(cell).lower() if isinstance(cell, bool) else str(cell)
