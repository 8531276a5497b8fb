"""Side-by-side summaries of finished runs, with each run's difference from the first.

Works on the flattened `summary.json` of each run directory, so every figure a summary gains
later (per tier, per tenant, economics, model or price metadata) is compared without changes
here; a figure one run has and another lacks is shown as missing there, not refused.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tokenfleet.atomic import atomic_path
from tokenfleet.errors import UserError
from tokenfleet.study.intervals import differs_beyond_noise

SUMMARY_FILE = "summary.json"
FIGURE = "figure"
TEXT_SUFFIX = " text"
SAME_DIGITS = 1e-9  # relative difference below which two numbers count as equal
# `replay --seeds` summaries: per figure its replications' values, read for the noise test
# rather than compared as figures of their own.
REPLICATIONS = "replications"
BATCH_MEANS = "batch_means"  # `replay --batches` summaries: the same, over one run's windows

Value = int | float | str
# What the pools block lines up: summary key of each pool entry -> column header.
POOL_FIELDS = {
    "gpu": "GPU",
    "tp": "tp",
    "batcher": "batcher",
    "replicas": "replicas",
    "cost_usd": "cost $",
}


def load_summary(run_dir: str | os.PathLike[str]) -> dict:
    """A finished run's summary; refuses, naming the file, anything that is not one."""
    folder = Path(run_dir)
    where = "give the output directory of a finished replay"
    if not folder.exists():
        raise UserError(f"{run_dir}: no such directory; {where}")
    if not folder.is_dir():
        raise UserError(f"{run_dir}: is a file; {where} (the folder holding {SUMMARY_FILE})")
    path = folder / SUMMARY_FILE
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a replay summary; {where}")
    if not path.is_file():
        raise UserError(f"{run_dir}: no {SUMMARY_FILE}; {where}")
    try:
        text = path.read_bytes().decode("utf-8")
        summary = json.loads(text)
        flat = flatten(summary) if isinstance(summary, dict) else {}
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not a text file (byte {err.start} is not UTF-8); {where}"
        ) from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a replay summary; {where}") from None
    if not isinstance(summary, dict):
        raise UserError(
            f"{path}: holds a JSON {_json_kind(summary)}, not a replay summary "
            f"(a JSON object of figures); {where}"
        )
    if not any(_is_number(v) for v in flat.values()):
        raise UserError(f"{path}: holds no figures (no numbers); {where}")
    return summary


def flatten(summary: dict, prefix: str = "") -> dict[str, Value]:
    """Nested summary -> {"dotted.key": value}.

    Numbers stay numbers; flags become "true"/"false" (a percent change of a flag means
    nothing). A list of objects (the pools) is keyed by each one's name, so runs line up by
    pool rather than by position; lists of plain values and nulls have no one figure to
    compare and are left out.
    """
    flat: dict[str, Value] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    label = item.get("name")
                    flat.update(flatten(item, f"{name}.{label if isinstance(label, str) else i}."))
        elif isinstance(value, bool):
            flat[name] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            flat[name] = value
    return flat


@dataclass(frozen=True)
class Comparison:
    """The runs' summaries in the order given; the first run is the base of every change."""

    labels: list[str]
    summaries: list[dict]
    flats: list[dict[str, Value]]

    @property
    def figures(self) -> list[str]:
        """Every figure of any run, in the order the runs first name them (a replications
        block's own entries aside)."""
        return list(
            dict.fromkeys(
                k
                for flat in self.flats
                for k in flat
                if not k.startswith((REPLICATIONS + ".", BATCH_MEANS + "."))
            )
        )

    def beyond_noise(self, figure: str, run: int) -> str | None:
        """ "yes" when run `run`'s mean differs from the first run's by more than their seeds'
        (or windows') noise (the bootstrap interval of the difference excludes zero), "no"
        when it does not, None unless both ran with --seeds or --batches."""
        values = []
        for summary in (self.summaries[0], self.summaries[run]):
            block = summary.get(REPLICATIONS) or summary.get(BATCH_MEANS)
            entry = block.get("figures", {}).get(figure) if isinstance(block, dict) else None
            if not isinstance(entry, dict) or not isinstance(entry.get("values"), list):
                return None
            values.append(entry["values"])
        return "yes" if differs_beyond_noise(*values) else "no"

    def differs(self, figure: str) -> bool:
        """True when some run's value (or its absence) differs from the first run's."""
        first = self.flats[0].get(figure)
        return any(not _same(first, flat.get(figure)) for flat in self.flats[1:])

    def rows(self, show_all: bool = False) -> list[dict]:
        """One row per figure (only those that differ, unless show_all): its value in each
        run (None where missing), and for numbers each run's change from the first, absolute
        and in percent (None where the first run's value is zero, missing or text)."""
        base = self.labels[0]
        rows = []
        for figure in self.figures:
            if not (show_all or self.differs(figure)):
                continue
            row: dict = {FIGURE: figure}
            for label, flat in zip(self.labels, self.flats, strict=True):
                row[label] = flat.get(figure)
            a = self.flats[0].get(figure)
            for label, flat in zip(self.labels[1:], self.flats[1:], strict=True):
                b = flat.get(figure)
                numbers = _is_number(a) and _is_number(b)
                row[delta_column(label, base)] = b - a if numbers else None
                row[percent_column(label, base)] = (
                    (b - a) / abs(a) * 100.0 if numbers and a else None
                )
            if self.noisy:
                for k, label in enumerate(self.labels[1:], start=1):
                    row[noise_column(label, base)] = self.beyond_noise(figure, k)
            rows.append(row)
        return rows

    @property
    def noisy(self) -> bool:
        """Whether the first run and another ran with --seeds or --batches (the noise column
        is shown)."""
        has = [isinstance(s.get(REPLICATIONS) or s.get(BATCH_MEANS), dict) for s in self.summaries]
        return has[0] and any(has[1:])

    def pools(self) -> list[list[Value | None]]:
        """[run, pool, GPU, tp, batcher, replicas, cost] for each pool of each run, pools of the
        same name together so they read down one block."""
        order: dict[str, list] = {}
        for label, summary in zip(self.labels, self.summaries, strict=True):
            entries = summary.get("pools")
            for i, pool in enumerate(entries if isinstance(entries, list) else []):
                if not isinstance(pool, dict):
                    continue
                name = pool.get("name")
                name = name if isinstance(name, str) else str(i)
                cells = [_scalar(pool.get(key)) for key in POOL_FIELDS]
                order.setdefault(name, []).append([label, name, *cells])
        return [row for rows in order.values() for row in rows]


def delta_column(label: str, base: str) -> str:
    return f"{label} - {base}"


def percent_column(label: str, base: str) -> str:
    return f"{label} vs {base} %"


def noise_column(label: str, base: str) -> str:
    return f"{label} beyond noise"


def compare_runs(run_dirs: list[str | os.PathLike[str]]) -> Comparison:
    """Load and flatten each run's summary; at least two runs, each a finished replay."""
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two run directories (DIR_A DIR_B ...)")
    summaries = [load_summary(d) for d in run_dirs]
    return Comparison(run_labels(run_dirs), summaries, [flatten(s) for s in summaries])


def comparison_frame(comparison: Comparison, rows: list[dict]) -> pl.DataFrame:
    """The rows as a typed table: each run's numbers in a Float64 column named after the run,
    its text figures (GPU names, flags) in `<run> text`, changes in Float64 columns."""
    columns: dict[str, pl.Series] = {FIGURE: pl.Series([r[FIGURE] for r in rows], dtype=pl.String)}
    labels = comparison.labels
    for label in labels:
        columns[label] = pl.Series(
            [r[label] if _is_number(r[label]) else None for r in rows], dtype=pl.Float64
        )
    base = labels[0]
    for label in labels[1:]:
        for name in (delta_column(label, base), percent_column(label, base)):
            columns[name] = pl.Series([r[name] for r in rows], dtype=pl.Float64)
        if comparison.noisy:
            name = noise_column(label, base)
            columns[name] = pl.Series([r[name] for r in rows], dtype=pl.String)
    for label in labels:
        columns[label + TEXT_SUFFIX] = pl.Series(
            [r[label] if isinstance(r[label], str) else None for r in rows], dtype=pl.String
        )
    return pl.DataFrame(columns)


def write_table(frame: pl.DataFrame, path: str | os.PathLike[str]) -> None:
    """The comparison as Parquet, written atomically (atomic_path refuses an unwritable place
    or a full disk in one line); a directory is refused too."""
    if Path(path).is_dir():
        raise UserError(f"{path}: is a directory; give a file path such as cmp.parquet")
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        frame.write_parquet(out)


def run_labels(run_dirs: list[str | os.PathLike[str]]) -> list[str]:
    """Run names for column headers: the directory names, made unique (and never a name the
    table itself uses)."""
    labels: list[str] = []
    taken = {FIGURE}
    for d in run_dirs:
        name = Path(d).resolve().name or str(d)
        label, n = name, 2
        while label in taken:
            label, n = f"{name}#{n}", n + 1
        labels.append(label)
        taken.add(label)
    return labels


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Value | None, b: Value | None) -> bool:
    """Equal values: numbers to nine significant digits (the same requests summed in another
    order differ in the last bit), two NaNs alike (a figure no run could measure)."""
    if _is_number(a) and _is_number(b):
        return math.isclose(a, b, rel_tol=SAME_DIGITS) or (math.isnan(a) and math.isnan(b))
    return a == b


def _scalar(value: object) -> Value | None:
    """A pool field as a table cell: numbers and text as they are, anything else missing."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, int | float | str) else None


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return "string" if isinstance(value, str) else "number"
