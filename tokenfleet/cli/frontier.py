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
    "replicas, tp, gpu, model, batcher, balancer, seed, enable_prefix_caching.",
)
@out_option(
    "frontier-out", "Directory for frontier.parquet and each run's records (runs/<setting>/)."
)
@click.option(
    "--jobs", type=click.IntRange(min=1), help="Worker processes (default: one per core)."
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Replications per point (replay --seeds): rows hold means, with 95% intervals.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON rows.")
@click.option(
    "--report", "with_report", is_flag=True, help="Also draw the report into --out/report/."
)
@quiet_option
def frontier(
    trace, scenario_path, varies, out_dir, jobs, seeds, as_json, with_report, quiet
) -> None:
    """Replay TRACE once per value of the varied settings and mark the Pareto-optimal rows
    (no other row is both cheaper per Mtoken and faster in tokens/s per user)."""
    import json

    from tokenfleet.atomic import check_replaceable_dir
    from tokenfleet.errors import UserError
    from tokenfleet.replay.scenario import load_scenario
    from tokenfleet.study.frontier import FRONTIER_FILE, grid, parse_vary, run_frontier

    if not varies:
        raise UserError("frontier needs at least one --vary NAME=V1,V2,... (e.g. max_num_seqs=1,8)")
    parsed = parse_vary(list(varies))
    # The scenario file too: replacing an earlier output must not delete what this run reads.
    check_replaceable_dir(out_dir, FRONTIER_FILE, inputs=(trace, scenario_path))
    scenario = load_scenario(scenario_path)
    bar = None
    if progress_enabled(quiet):
        from tqdm import tqdm

        bar = tqdm(total=len(grid(parsed)), unit="run", desc="frontier", leave=False)
    try:
        table = run_frontier(
            trace,
            scenario,
            out_dir,
            parsed,
            jobs=jobs,
            on_done=bar.update if bar else None,
            seeds=seeds,
        )
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        click.echo(json.dumps(table.to_dicts(), indent=2))
    else:
        click.echo(format_frontier(table.to_dicts()))
        click.echo(f"\nwrote {out_dir}/frontier.parquet and {out_dir}/runs/ (* = Pareto-optimal)")
    if with_report:
        from pathlib import Path

        from tokenfleet.cli.report import write

        write([out_dir], str(Path(out_dir) / "report"), err=as_json)


def format_frontier(rows: list[dict]) -> str:
    """One line per run: its fleet, cost, speed, latency and whether it is Pareto-optimal."""
    from tokenfleet.cli.table import Column, render_table

    def times(x: float | None, factor: float) -> float | None:
        return None if x is None else x * factor

    headers = ["run", "replicas", "GPUs", "$/Mtok", "tok/s/user", "TTFT p50 ms", "TTFT p99 ms"]
    headers += [Column("goodput", lambda x: f"{x:.1%}"), "batch"]
    headers += [Column("cached", lambda x: f"{x:.1%}"), "pareto"]
    return render_table(
        headers,
        [
            [
                r["run"],
                r["fleet_replicas"],
                r["fleet_gpus"],
                r["usd_per_mtoken"],
                r["output_tokens_per_s_per_user"],
                times(r["ttft_p50_s"], 1e3),
                times(r["ttft_p99_s"], 1e3),
                r["goodput_frac"],
                r["mean_batch"],
                r["cache_hit_rate"],
                "*" if r["pareto"] else "",
            ]
            for r in rows
        ],
    )
