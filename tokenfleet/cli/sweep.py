"""`tokenfleet sweep GRID.toml`: one replay per cell of a grid, into one table; resumable."""

from __future__ import annotations

import click

from tokenfleet.cli.options import out_option, progress_enabled, quiet_option


@click.command()
@click.argument("grid_path", metavar="GRID.toml", type=click.Path())
@out_option("sweep-out", "Directory for sweep.parquet and each cell's run (cells/<cell>/).")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the cells run: local worker processes, or Ray.",
)
@click.option(
    "--address", help="The Ray cluster's HOST:PORT (default: RAY_ADDRESS, else a local Ray)."
)
@click.option("--jobs", type=int, help="Local processes, or a local Ray's CPUs (default: cores).")
@click.option("--seeds", type=int, help="Replications per cell (default: the grid file's, 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON rows.")
@quiet_option
def sweep(grid_path, out_dir, executor, address, jobs, seeds, as_json, quiet) -> None:
    """Replay every cell of GRID.toml (a [grid] of setting axes and/or [[cells]], over its
    traces and seeds) into --out/sweep.parquet, one row per cell and seed, Pareto rows marked.
    Cells finished by an earlier run into the same --out are not rerun; a cell that fails is
    named with why, the others finish, and the exit code is 1."""
    import json
    import sys

    from tokenfleet.study.executors import make_executor
    from tokenfleet.study.sweep import SWEEP_FILE, load_plan, run_sweep

    plan = load_plan(grid_path, seeds)
    runner = make_executor(executor, jobs, address)
    bar = None
    if progress_enabled(quiet):
        from tqdm import tqdm

        bar = tqdm(total=len(plan.cells), unit="cell", desc="sweep", leave=False)
    try:
        result = run_sweep(plan, out_dir, runner, on_done=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        click.echo(json.dumps(result.table.to_dicts(), indent=2))
    else:
        click.echo(format_sweep(result.table, plan.axes))
        reused = f"; {result.reused:,} found finished from an earlier run" if result.reused else ""
        click.echo(
            f"\nwrote {out_dir}/{SWEEP_FILE}: {result.table.height:,} of {len(plan.cells):,} "
            f"cells{reused} (* = Pareto-optimal); runs in {out_dir}/cells/"
        )
    if result.failed:
        for name, why in result.failed:
            click.echo(f"error: cell {name} failed: {why}", err=True)
        click.echo(
            f"error: {len(result.failed):,} of {len(plan.cells):,} cells failed; fix them and "
            "rerun the same command (finished cells are kept)",
            err=True,
        )
        sys.exit(1)


def format_sweep(table, axes: list[str]) -> str:
    """One line per cell: its settings, cost, speed and latency, and the Pareto mark."""
    from tokenfleet.cli.table import render_table

    figures = {
        "$/Mtok": "economics.fleet.usd_per_mtoken.blended",
        "tok/s/user": "output_tokens_per_s_per_user",
        "TTFT p99 s": "latency_s.ttft.p99",
        "goodput": "economics.fleet.goodput_frac",
    }
    shown = {k: v for k, v in figures.items() if v in table.columns}
    headers = ["trace", *axes, "seed", *shown, "pareto"]
    rows = [
        [
            row["trace"].rsplit("/", 1)[-1],
            *(row[a] for a in axes),
            row["seed"],
            *(row[c] for c in shown.values()),
            "*" if row["pareto"] else "",
        ]
        for row in table.to_dicts()
    ]
    return render_table(headers, rows)
