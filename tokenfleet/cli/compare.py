"""`tokenfleet compare DIR_A DIR_B [...]`: side-by-side summaries of finished runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from tokenfleet.study.compare import Comparison


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--all", "show_all", is_flag=True, help="Also show figures that are equal in all runs."
)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON rows.")
@click.option(
    "--parquet",
    "parquet_out",
    type=click.Path(),
    help="Also write the table here (numbers as Float64, text figures in '<run> text').",
)
def compare(run_dirs, show_all, as_json, parquet_out) -> None:
    """Compare the summaries of replay output directories; differences are against the first."""
    import json

    from tokenfleet.atomic import refuse_clobber
    from tokenfleet.errors import UserError
    from tokenfleet.study.compare import compare_runs, comparison_frame, write_table

    for run_dir in run_dirs:  # the next compare of that run would read what we wrote
        refuse_clobber({"--parquet": parquet_out}, read_dirs={"run directory": run_dir})
    comparison = compare_runs(list(run_dirs))
    rows = comparison.rows(show_all)
    if parquet_out:
        try:
            write_table(comparison_frame(comparison, rows), parquet_out)
        except UserError as err:
            raise UserError(f"--parquet {err}") from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(format_comparison(comparison, rows, show_all))
    if parquet_out:
        click.echo(f"\nwrote {parquet_out}")


def format_comparison(comparison: Comparison, rows: list[dict], show_all: bool) -> str:
    """The pools of every run lined up, then one line per figure with its changes."""
    from tokenfleet.cli.table import Column, format_change, format_percent, render_table
    from tokenfleet.study.compare import (
        FIGURE,
        POOL_FIELDS,
        delta_column,
        noise_column,
        percent_column,
    )

    parts = []
    pools = comparison.pools()
    if pools:
        parts.append(render_table(["run", "pool", *POOL_FIELDS.values()], pools))
    labels = comparison.labels
    base = labels[0]
    columns = [Column(FIGURE), *(Column(label) for label in labels)]
    keys = [FIGURE, *labels]
    for label in labels[1:]:
        columns += [
            Column(delta_column(label, base), format_change),
            Column(f"{label} vs {base}", format_percent),
        ]
        keys += [delta_column(label, base), percent_column(label, base)]
        if comparison.noisy:  # both ran with --seeds: is the change larger than their noise?
            columns.append(Column(noise_column(label, base)))
            keys.append(noise_column(label, base))
    hidden = len(comparison.figures) - len(rows)
    if not rows:
        parts.append(f"no figure differs between the runs (--all shows all {hidden:,})")
        return "\n\n".join(parts)
    parts.append(render_table(columns, ([row[k] for k in keys] for row in rows)))
    if hidden:
        parts.append(f"({hidden:,} figures equal in every run not shown; --all shows them)")
    return "\n\n".join(parts)
