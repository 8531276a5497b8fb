"""`tokenfleet frontier TRACE --vary NAME=V1,V2,...`: cost per Mtoken against speed per user."""

from __future__ import annotations

import click

from tokenfleet.cli.options import out_option, progress_enabled, quiet_option, scenario_option


@click.command()
@click.argument("trace", type=click.Path())
@scenario_option
@click.option(
    "--vary",
    "varies",
    multiple=True,
    metavar="NAME=V1,V2,...",
    help="A setting and its values (repeat for a grid): max_num_seqs, max_batched_tokens, "
    "replicas, tp, gpu, model, batcher, balancer, seed.",
)
@out_option(
    "frontier-out", "Directory for frontier.parquet and each run's records (runs/<setting>/)."
)
@click.option("--jobs", type=int, default=0, help="Worker processes (default: one per core).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON rows.")
@quiet_option
def frontier(trace, scenario_path, varies, out_dir, jobs, as_json, quiet) -> None:
    """Replay TRACE once per value of the varied settings and mark the Pareto-optimal rows
    (no other row is both cheaper per Mtoken and faster in tokens/s per user)."""
    import json

    import polars as pl

    from tokenfleet.errors import UserError
    from tokenfleet.replay.scenario import load_scenario
    from tokenfleet.study.frontier import grid, parse_vary, run_frontier

    if not varies:
        raise UserError("frontier needs at least one --vary NAME=V1,V2,... (e.g. max_num_seqs=1,8)")
    parsed = parse_vary(list(varies))
    scenario = load_scenario(scenario_path)
    bar = None
    if progress_enabled(quiet):
        from tqdm import tqdm

        bar = tqdm(total=len(grid(parsed)), unit="run", desc="frontier", leave=False)
    try:
        table = run_frontier(
            trace, scenario, out_dir, parsed, jobs=jobs, on_done=bar.update if bar else None
        )
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        click.echo(json.dumps(table.to_dicts(), indent=2))
        return
    shown = table.select(
        "run",
        pl.col("usd_per_mtoken").round(4).alias("$/Mtok"),
        pl.col("output_tokens_per_s_per_user").round(1).alias("tok/s/user"),
        (pl.col("ttft_p50_s") * 1e3).round(1).alias("TTFT p50 ms"),
        (pl.col("ttft_p99_s") * 1e3).round(1).alias("TTFT p99 ms"),
        pl.col("goodput_frac").round(3).alias("goodput"),
        pl.col("mean_batch").round(1).alias("batch"),
        pl.when(pl.col("pareto")).then(pl.lit("*")).otherwise(pl.lit("")).alias("pareto"),
    )
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        click.echo(shown)
    click.echo(f"wrote {out_dir}/frontier.parquet and runs/ (* = Pareto-optimal)")
