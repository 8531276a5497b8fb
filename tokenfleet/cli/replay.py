"""`tokenfleet replay TRACE`: run the fleet simulator. Parse, call the library, print."""

from __future__ import annotations

import os

import click

from tokenfleet.cli.options import out_option, progress_enabled, quiet_option, scenario_option


@click.command()
@click.argument("trace", type=click.Path())
@scenario_option
@out_option("replay-out", "Output directory (replaced when the run completes).")
@click.option("--model", help="Model name (e.g. llama-3.1-8b) or a TOML / HF config.json path.")
@click.option("--gpu", help="GPU profile name (e.g. h100-sxm) or a profile .toml path.")
@click.option("--tp", type=int, help="Tensor-parallel GPUs per replica.")
@click.option("--engine", help="Engine overhead preset (e.g. vllm-v1) or a preset .toml path.")
@click.option(
    "--max-model-len",
    type=int,
    help="Longest prompt + output served (vLLM's flag; default: the model's context).",
)
@click.option("--replicas", type=int, help="Replicas per pool (default: sized to the trace).")
@click.option("--batcher", help="vllm, sarathi, orca, static, or a plugin's name.")
@click.option(
    "--balancer",
    help="round-robin, random, least-requests, least-tokens, least-kv, power-of-two, session, "
    "cache-aware, prefix-affinity, precise-prefix, kv-router.",
)
@click.option("--max-num-seqs", type=int, help="Sequences per step (batch cap).")
@click.option("--max-batched-tokens", type=int, help="Token budget per step (vllm, sarathi).")
@click.option(
    "--prefix-caching/--no-prefix-caching",
    "prefix_caching",
    default=None,
    help="Turn the vllm batcher's prefix cache on or off (default: the scenario's, on).",
)
@click.option("--seed", type=int, help="Seed of the random choices (default 0).")
@click.option(
    "--seeds",
    type=int,
    default=1,
    show_default=True,
    help="Replications (seeds SEED.. SEED+N-1; a synthetic trace is re-drawn per seed): every "
    "summary figure gets a mean and 95% interval.",
)
@click.option(
    "--batches",
    type=int,
    default=0,
    help="Batch means: one run cut by arrival time into a warm-up and B windows; every "
    "summary figure gets a mean and 95% interval over the windows (for one real trace).",
)
@click.option(
    "--records",
    "records_text",
    default="all",
    show_default=True,
    help="What requests.parquet keeps: all, sample:F (a uniform fraction F) or none; "
    "percentiles come from a sketch (1% relative error) unless all.",
)
@click.option(
    "--cells",
    type=int,
    default=1,
    show_default=True,
    help="Split the fleet into K independent cells, sessions hashed to them, run in parallel.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where --cells run: local processes, or Ray.",
)
@click.option("--address", help="With --executor ray: the cluster's HOST:PORT (or RAY_ADDRESS).")
@click.option("--jobs", type=int, help="With --cells: processes, or a local Ray's CPUs (cores).")
@click.option(
    "--timeline",
    "timeline_rows",
    type=click.Choice(["replica", "pool"]),
    default="replica",
    show_default=True,
    help="timeline.parquet rows: one per replica per interval, or one per pool per interval.",
)
@click.option("--interval", "interval_s", type=float, help="Timeline interval in seconds (10).")
@click.option(
    "--unknown-tier",
    type=click.Choice(["default", "reject"]),
    help="Trace tiers missing from the scenario: serve as the default tier, or refuse the run.",
)
@click.option(
    "--step-by-step",
    is_flag=True,
    help="Reference mode: advance one step at a time (same records, slower).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--report", "with_report", is_flag=True, help="Also draw the report into --out/report/."
)
@quiet_option
def replay(
    trace,
    scenario_path,
    out_dir,
    model,
    gpu,
    tp,
    engine,
    max_model_len,
    replicas,
    batcher,
    balancer,
    max_num_seqs,
    max_batched_tokens,
    prefix_caching,
    seed,
    seeds,
    batches,
    records_text,
    cells,
    executor,
    address,
    jobs,
    timeline_rows,
    interval_s,
    unknown_tier,
    step_by_step,
    as_json,
    with_report,
    quiet,
) -> None:
    """Replay TRACE (a canonical Parquet trace) through a simulated serving fleet.

    Writes requests.parquet, timeline.parquet, summary.json and the resolved scenario.toml
    to --out, and prints the summary.
    """
    import json
    from pathlib import Path

    from tokenfleet.cli.format import format_summary
    from tokenfleet.errors import UserError
    from tokenfleet.replay.records.requests import RecordsPolicy
    from tokenfleet.replay.scenario import load_scenario, with_overrides
    from tokenfleet.study.seeds import run_seeds

    records = RecordsPolicy.parse(records_text)
    replay_fn = _cells_replay(cells, executor, address, jobs, timeline_rows == "pool")
    if with_report and records.mode == "none":
        raise UserError(
            "--report draws the requests' records, which --records none does not keep; use "
            "--records all or sample:F, or drop --report"
        )
    scenario = with_overrides(
        load_scenario(scenario_path),
        model=model,
        gpu=gpu,
        tp=tp,
        engine=engine,
        max_model_len=max_model_len,
        replicas=replicas,
        batcher=batcher,
        balancer=balancer,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_batched_tokens,
        enable_prefix_caching=prefix_caching,
        seed=seed,
        interval_s=interval_s,
        unknown_tier=unknown_tier,
    )
    inputs = tuple(p for p in (scenario_path, model, gpu, engine) if p and Path(p).is_file())
    if batches:
        summary = _batch_means_replay(
            trace, scenario, out_dir, batches, seeds, cells, records, step_by_step, quiet, inputs,
            timeline_rows == "pool",
        )  # fmt: skip
    else:
        summary = run_seeds(
            trace,
            scenario,
            out_dir,
            seeds,
            step_by_step=step_by_step,
            progress=progress_enabled(quiet),
            inputs=inputs,
            records=records,
            replay_fn=replay_fn,
        )
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        click.echo(format_summary(summary))
        name = "requests/ (one part per cell)" if cells > 1 else "requests.parquet"
        kept = {"all": f"{name}, ", "none": ""}.get(records.mode, f"{name} ({records}), ")
        files = f"{kept}timeline.parquet, summary.json, scenario.toml" + (
            f", seeds/ ({seeds} summaries)" if seeds > 1 else ""
        )
        click.echo(f"\nwrote {out_dir}/: {files}")
    if with_report:
        from tokenfleet.cli.report import write

        write([out_dir], str(Path(out_dir) / "report"), err=as_json)


def _batch_means_replay(
    trace, scenario, out_dir, batches, seeds, cells, records, step_by_step, quiet, inputs,
    pool_timeline,
) -> dict:  # fmt: skip
    """One replay whose summary gains the `batch_means` block (study/batch_means.py)."""
    from tokenfleet.errors import UserError
    from tokenfleet.replay.run import run_replay
    from tokenfleet.study.batch_means import batch_means

    if seeds > 1 or cells > 1:
        raise UserError(
            f"--batches {batches} takes its interval from one run; drop --seeds and --cells "
            "(--seeds N replicates the run instead)"
        )
    if records.mode != "all":
        raise UserError(
            f"--batches {batches} reads every request's record; use --records all (the default)"
        )

    def annotate(folder, summary: dict) -> None:
        summary["batch_means"] = batch_means(folder, summary, batches)

    return run_replay(
        trace,
        scenario,
        out_dir,
        step_by_step=step_by_step,
        progress=progress_enabled(quiet),
        inputs=inputs,
        annotate=annotate,
        pool_timeline=pool_timeline,
    )


def _cells_replay(
    cells: int, executor: str, address: str | None, jobs: int | None, pool_timeline: bool
):
    """run_replay, or with --cells K > 1 run_cells with its cells and executor bound; either
    with the timeline's rows chosen."""
    import functools

    from tokenfleet.errors import UserError
    from tokenfleet.replay.run import run_replay

    if cells < 1:
        raise UserError(f"--cells {cells}: expected at least 1")
    if cells == 1:
        if executor != "local" or address is not None or jobs is not None:
            raise UserError("--executor, --address and --jobs place the cells; add --cells K")
        return functools.partial(run_replay, pool_timeline=pool_timeline)
    from tokenfleet.study.cells import run_cells
    from tokenfleet.study.executors import make_executor

    runner = make_executor(executor, jobs or (min(cells, os.cpu_count() or 1)), address)
    return functools.partial(run_cells, cells=cells, executor=runner, pool_timeline=pool_timeline)
