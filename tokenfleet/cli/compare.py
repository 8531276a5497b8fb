"""`tokenfleet compare DIR_A DIR_B [...]`: side-by-side summaries of finished runs."""

from __future__ import annotations

import click


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--all", "show_all", is_flag=True, help="Also show figures that are equal in all runs."
)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON rows.")
@click.option("--parquet", "parquet_out", type=click.Path(), help="Also write the table here.")
def compare(run_dirs, show_all, as_json, parquet_out) -> None:
    """Compare the summaries of replay output directories; differences are against the first."""
    import json

    import polars as pl

    from tokenfleet.errors import UserError
    from tokenfleet.study.compare import compare_runs, write_table

    table = compare_runs(list(run_dirs))
    if not show_all:
        values = table.columns[1 : 1 + len(run_dirs)]
        differs = pl.concat_list([pl.col(c) for c in values]).list.n_unique() > 1
        table = table.filter(differs)
    if parquet_out:
        try:
            write_table(table, parquet_out)
        except UserError as err:
            raise UserError(f"--parquet {err}") from None
    if as_json:
        click.echo(json.dumps(table.to_dicts(), indent=2))
        return
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=40):
        click.echo(table)
