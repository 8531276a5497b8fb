"""`tokenfleet traces ...`: convert, synth, inspect, validate. Parse, call the library, print."""

from __future__ import annotations

import json

import click

from tokenfleet.cli.options import progress_enabled, quiet_option

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.group()
def traces() -> None:
    """Request traces: convert real formats, synthesise, inspect, validate."""


@traces.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option(
    "--format",
    "fmt",
    default="auto",
    show_default=True,
    help="auto, azure, burstgpt, mooncake, vidur, csv or jsonl.",
)
@click.option(
    "--columns",
    default=None,
    metavar="OUT=SRC,...",
    help="Map trace columns to source columns (arrival_s=ts,prompt_tokens=in,...); "
    "other OUT names are kept as extra columns.",
)
@click.option(
    "--time-unit",
    default="s",
    show_default=True,
    help="Unit of numeric arrivals in generic csv/jsonl: s, ms, us or ns.",
)
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Multiply arrivals by this (0.5 = twice the request rate).",
)
@click.option("--shift-s", type=float, default=0.0, show_default=True, help="Add to arrivals.")
@click.option("--start-s", type=float, help="Keep requests from this second of the source on.")
@click.option("--end-s", type=float, help="Keep requests before this second of the source.")
@click.option("--limit", type=int, help="Keep the first N requests (after the window).")
@click.option(
    "--drop-failed/--keep-failed",
    default=True,
    show_default=True,
    help="BurstGPT: drop failed requests (rows with zero request or response tokens).",
)
@json_option
@quiet_option
def convert(src, dst, fmt, columns, time_unit, time_scale, shift_s, start_s, end_s, limit,
            drop_failed, as_json, quiet) -> None:  # fmt: skip
    """Convert a CSV / JSON-lines trace SRC to the Parquet trace DST."""
    from tokenfleet.traces.convert import convert_trace, parse_column_mapping

    result = convert_trace(
        src,
        dst,
        fmt,
        parse_column_mapping(columns) if columns else None,
        time_unit=time_unit,
        time_scale=time_scale,
        shift_s=shift_s,
        start_s=start_s,
        end_s=end_s,
        limit=limit,
        drop_failed=drop_failed,
        progress=progress_enabled(quiet),
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    dropped = result["dropped_failed"]
    click.echo(
        f"wrote {result['destination']}: {_count(result['rows_written'], 'request')} over "
        f"{result['span_s']:,.1f} s (format {result['format']}, "
        f"{_count(result['rows_read'], 'row')} read"
        + (f", dropped {_count(dropped, 'failed row')}" if dropped else "")
        + ")"
    )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


@traces.command()
@click.argument("dst", type=click.Path())
@click.option("--requests", type=int, help="Number of requests.")
@click.option("--duration-s", type=float, help="Trace length in seconds (instead of --requests).")
@click.option("--days", type=float, help="Trace length in days (instead of --requests).")
@click.option(
    "--arrivals",
    default="poisson",
    show_default=True,
    help="poisson, gamma (bursty, see --cv) or diurnal (daily cosine, see --peak-trough).",
)
@click.option("--rate", type=float, default=5.5, show_default=True, help="Mean requests/s.")
@click.option("--cv", type=float, help="Inter-arrival coefficient of variation (gamma: 2).")
@click.option(
    "--peak-trough",
    type=float,
    default=3.0,
    show_default=True,
    help="Diurnal: peak rate / trough rate.",
)
@click.option(
    "--peak-hour",
    type=float,
    default=14.0,
    show_default=True,
    help="Diurnal: hour of the peak rate (the trace starts at hour 0).",
)
@click.option(
    "--prompt",
    default=None,
    help="Prompt lengths: lognormal:MEAN,SIGMA[,MAX], fixed:N or uniform:LOW,HIGH "
    "[default: lognormal:1155,0.5].",
)
@click.option(
    "--output",
    default=None,
    help="Output lengths, same forms [default: lognormal:229,1.07,1000].",
)
@click.option(
    "--lengths-from",
    type=click.Path(),
    help="Resample (prompt, output) pairs from this Parquet trace.",
)
@click.option("--tenants", help="Tenant shares: a=0.7,b=0.3, or a count N for equal shares.")
@click.option("--tiers", help="Tier shares: fast=0.2,standard=0.7,batch=0.1, or a count.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--system-prompts", type=int, help="N shared system prompts (writes prefix_hashes).")
@click.option("--system-prompt-tokens", type=int, help="Their length L, before each prompt.")
@click.option("--prefix-zipf", type=float, help="Zipf exponent of their popularity [default: 1].")
@click.option(
    "--turns",
    help="Turns per session, in the --prompt forms (writes session_id, turn, prefix_hashes); "
    "--rate is then new sessions per second.",
)
@click.option(
    "--think-time-s",
    help="Seconds from one turn's arrival to the next: fixed:S, uniform:LOW,HIGH, "
    "exponential:MEAN or lognormal:MEAN,SIGMA [default: exponential:30].",
)
@click.option("--prefix-block-tokens", type=int, help="Tokens per prefix block [default: 512].")
@json_option
@quiet_option
def synth(dst, requests, duration_s, days, arrivals, rate, cv, peak_trough, peak_hour, prompt,
          output, lengths_from, tenants, tiers, seed, system_prompts, system_prompt_tokens,
          prefix_zipf, turns, think_time_s, prefix_block_tokens, as_json,
          quiet) -> None:  # fmt: skip
    """Synthesise a trace DST with known arrival and length distributions."""
    from tokenfleet.errors import UserError
    from tokenfleet.traces.synth import SynthSpec, parse_shares, synth_trace

    if days is not None and duration_s is not None:
        raise UserError("give --days or --duration-s, not both")
    spec = SynthSpec(
        requests=requests,
        duration_s=days * 86_400.0 if days is not None else duration_s,
        arrivals=arrivals,
        rate_rps=rate,
        cv=cv,
        peak_trough=peak_trough,
        peak_hour=peak_hour,
        prompt=prompt,
        output=output,
        lengths_from=lengths_from,
        tenants=parse_shares(tenants, "--tenants") if tenants else {},
        tiers=parse_shares(tiers, "--tiers") if tiers else {},
        seed=seed,
        system_prompts=system_prompts,
        system_prompt_tokens=system_prompt_tokens,
        prefix_zipf=prefix_zipf,
        turns=turns,
        think_time_s=think_time_s,
        prefix_block_tokens=prefix_block_tokens,
    )
    result = synth_trace(dst, spec, progress=progress_enabled(quiet))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"wrote {result['destination']}: {_count(result['rows'], 'request')}, "
        f"last arrival at {result['last_arrival_s']:,.1f} s (seed {seed})"
    )


@traces.command()
@click.argument("trace", type=click.Path())
@click.option(
    "--cache-tokens",
    type=int,
    help="Also the prefix reuse an LRU cache of this many tokens reaches (whole blocks).",
)
@json_option
def inspect(trace, cache_tokens, as_json) -> None:
    """Rows, span, request rates, burstiness, token lengths, tiers, tenants, prefix reuse."""
    from tokenfleet.traces.inspect import inspect_trace

    summary = inspect_trace(trace, cache_tokens)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for label, value in _inspect_rows(summary):
        click.echo(f"{label:<22}{value}")


def _inspect_rows(s: dict) -> list[tuple[str, str]]:
    def num(value, digits=2) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    stats = ("mean", "p50", "p90", "p99", "max")
    rows = [
        ("trace", s["trace"]),
        ("rows", f"{s['rows']:,}"),
        ("span", f"{num(s['span_s'], 1)} s"),
        ("mean rate", f"{num(s['mean_rate_rps'])} req/s"),
        ("peak-minute rate", f"{num(s['peak_minute_rate_rps'])} req/s"),
        ("inter-arrival CV", num(s["interarrival_cv"])),
        ("tokens", "".join(f"{name:>10}" for name in stats)),
    ]
    for column, label in (("prompt_tokens", "  prompt"), ("output_tokens", "  output")):
        rows.append(
            (label, "".join(f"{num(s[column][n], 1 if n == 'mean' else 0):>10}" for n in stats))
        )
    for key, label in (("tiers", "tiers"), ("tenants", "tenants")):
        counts = s[key]
        shown = ", ".join(
            f"{name} {n:,} ({n / s['rows']:.1%})" for name, n in list(counts.items())[:8]
        )
        more = f", ... {len(counts) - 8:,} more (see --json)" if len(counts) > 8 else ""
        rows.append((label, (shown + more) if counts else "(none)"))
    if s["prefix_blocks"] is not None:  # the trace has prefix_hashes (maybe all empty)
        share = s["prefix_reuse_share"]
        rows.append(
            (
                "prefix reuse",
                f"{num(None if share is None else 100 * share, 1)}% of {s['prefix_blocks']:,} "
                f"blocks repeat an earlier block (block size {s['prefix_block_size'] or '?'} "
                "tokens)",
            )
        )
    if s["cache_hit_share"] is not None:
        rows.append(
            (
                "LRU cache reuse",
                f"{100 * s['cache_hit_share']:.1f}% of blocks, "
                f"{100 * s['cache_hit_prompt_share']:.1f}% of prompt tokens hit a cache of "
                f"{s['cache_blocks']:,} blocks ({s['cache_tokens']:,} tokens)",
            )
        )
    return rows


@traces.command()
@click.argument("trace", type=click.Path())
@json_option
@quiet_option
def validate(trace, as_json, quiet) -> None:
    """Check every row of TRACE against the trace schema."""
    from tokenfleet.traces.validate import validate_trace

    result = validate_trace(trace, progress=progress_enabled(quiet))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"ok: {result['trace']}: {result['rows']:,} rows ({', '.join(result['columns'])})")
