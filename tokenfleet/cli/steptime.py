"""`tokenfleet steptime`: step time, tokens/s and $/Mtoken of one replica across batch sizes."""

from __future__ import annotations

import json

import click

# The two tables the command prints: phase, title, and the columns that lead each row.
_TABLES = (
    ("prefill", "prefill: one prompt, empty cache", (("prompt_tokens", 13),)),
    (
        "decode",
        "decode: one step of `batch` sequences, each with context_tokens of KV cache",
        (("context_tokens", 14), ("batch", 6)),
    ),
)


@click.command()
@click.option(
    "--model", "model_name", required=True, help="Built-in model, model .toml or config.json."
)
@click.option("--gpu", "gpu_name", required=True, help="Built-in GPU profile or profile .toml.")
@click.option("--tp", default=1, show_default=True, help="Tensor-parallel GPUs per replica.")
@click.option(
    "--dtype",
    default="bf16",
    show_default=True,
    type=click.Choice(["bf16", "fp16", "fp8", "fp4", "int4"]),
    help="Weight dtype.",
)
@click.option(
    "--kv-dtype",
    default=None,
    type=click.Choice(["bf16", "fp16", "fp8"]),
    help="KV-cache dtype [default: the weights' 16-bit type].",
)
@click.option(
    "--engine",
    default=None,
    help="Engine preset (or .toml) for overheads [default: the profile's].",
)
@click.option(
    "--usd-per-gpu-hour",
    type=click.FloatRange(min=0),
    default=None,
    help="Price of one GPU-hour: adds $/Mtoken.",
)
@click.option(
    "--gpu-memory-utilization",
    default=0.9,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Fraction of GPU memory used.",
)
@click.option(
    "--parquet",
    "parquet_path",
    type=click.Path(dir_okay=False),
    help="Also write the table as Parquet.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Also write everything as JSON ('-' for stdout, table then not printed).",
)
def steptime(
    model_name,
    gpu_name,
    tp,
    dtype,
    kv_dtype,
    engine,
    usd_per_gpu_hour,
    gpu_memory_utilization,
    parquet_path,
    json_path,
) -> None:
    """Step time and tokens/s of one replica for prefill lengths and decode batch sizes.

    Shows where decoding turns compute-bound (cost per token stops falling with batch size),
    the replica's KV-cache capacity, and with --usd-per-gpu-hour the cost per million tokens.
    """
    from tokenfleet.atomic import atomic_path, refuse_clobber
    from tokenfleet.errors import notify
    from tokenfleet.hardware.profile import load_profile
    from tokenfleet.models import get_model
    from tokenfleet.perf.memory import plan_memory
    from tokenfleet.perf.steptime import StepTime
    from tokenfleet.perf.sweep import steptime_sweep

    refuse_clobber(
        {"--parquet": parquet_path, "--json": json_path},
        {"--model": model_name, "--gpu": gpu_name, "--engine": engine},
    )
    model = get_model(model_name)
    gpu = load_profile(gpu_name)
    if gpu.measured_on_cpu:
        notify(f"--gpu {gpu_name} describes a CPU (calibrated with NumPy)")
    st = StepTime(model, gpu, tp=tp, dtype=dtype, kv_dtype=kv_dtype, engine=engine)
    plan = plan_memory(model, gpu, tp, dtype, st.kv_dtype, gpu_memory_utilization)
    rows = steptime_sweep(st, plan.kv_capacity_tokens, usd_per_gpu_hour)
    bound = st.compute_bound_batch()
    doc = {
        "model": model.name,
        "gpu": gpu.name,
        "tp": tp,
        "dtype": dtype,
        "kv_dtype": st.kv_dtype,
        "engine": st.engine.name,
        "usd_per_gpu_hour": usd_per_gpu_hour,
        "weights_per_gpu_bytes": plan.weights_per_gpu_bytes,
        "kv_capacity_tokens": plan.kv_capacity_tokens,
        "kv_blocks": plan.kv_blocks,
        "block_size": plan.block_size,
        "compute_bound_decode_batch": bound,
        "rows": rows,
    }
    if parquet_path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        if table.schema.field("usd_per_mtoken").type == pa.null():  # no price: typed nulls
            column = table.schema.get_field_index("usd_per_mtoken")
            table = table.set_column(
                column, "usd_per_mtoken", pa.nulls(table.num_rows, pa.float64())
            )
        with atomic_path(parquet_path) as tmp:
            pq.write_table(table, tmp)
    if json_path == "-":
        click.echo(json.dumps(doc, indent=1))
        return
    if json_path:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))
    _print(doc, usd_per_gpu_hour is not None)


def _print(doc: dict, with_cost: bool) -> None:
    echo = click.echo
    echo(
        f"{doc['model']} on {doc['tp']} x {doc['gpu']}, {doc['dtype']} weights, "
        f"{doc['kv_dtype']} KV cache, engine {doc['engine']}"
    )
    echo(
        f"weights {doc['weights_per_gpu_bytes'] / 2**30:,.1f} GiB per GPU; KV cache "
        f"{doc['kv_capacity_tokens']:,} tokens ({doc['kv_blocks']:,} blocks of "
        f"{doc['block_size']})"
    )
    bound = doc["compute_bound_decode_batch"]
    echo(
        f"decode turns compute-bound at batch {bound:,}"
        if bound
        else "decode stays bound by reading weights at every batch size"
    )
    for phase, title, leading in _TABLES:
        _print_table(doc["rows"], phase, title, leading, with_cost)


def _print_table(
    rows: list[dict], phase: str, title: str, leading: tuple[tuple[str, int], ...], with_cost: bool
) -> None:
    """One phase's rows: its leading columns, then step time, tokens/s and (priced) $/Mtoken."""
    echo = click.echo
    cost = f" {'usd_per_mtoken':>14}" if with_cost else ""
    echo(f"\n{title}")
    head = " ".join(f"{key:>{width}}" for key, width in leading)
    echo(f"{head} {'step_ms':>10} {'tokens_per_s':>12}{cost}")
    for r in rows:
        if r["phase"] != phase:
            continue
        lead = " ".join(f"{r[key]:>{width},}" for key, width in leading)
        money = f" {r['usd_per_mtoken']:>14.3f}" if with_cost else ""
        fits = "" if r["fits_kv"] else "  exceeds KV cache"
        echo(f"{lead} {r['step_ms']:>10,.2f} {r['tokens_per_s']:>12,.0f}{money}{fits}")
