"""Terminal formatting of a replay's summary: every figure shown is also in summary.json.

Figures the user did not set (a GPU's default rent, a tier's default prices) are labelled as
defaults where they are shown; latencies take the unit that keeps them short.
"""

from __future__ import annotations

from tokenfleet.cli.table import Column, render_table

# Refusals, in the order they are listed, and what each means.
REFUSALS = {
    "too_long": "too long for the context or KV cache",
    "rate_limited": "rate-limited",
    "expired": "expired at the gateway",
}


def duration(seconds: float | None) -> str:
    """A latency in the unit that keeps it readable: ms below 10 s, then s, min, h."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds * 1e3:,.1f} ms"
    if seconds < 600:
        return f"{seconds:,.1f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def format_summary(summary: dict) -> str:
    """The terminal table: every figure here is also in summary.json."""
    tp = summary["throughput"]
    run = summary.get("run", {})
    lines = [
        f"simulated    {run.get('model', '?')} ({run.get('dtype', '?')} weights, "
        f"{run.get('kv_dtype', '?')} KV, context {_context(run)}) on trace "
        f"{run.get('trace', '?')}, seed {summary['seed']}; tokenfleet {run.get('version', '?')}",
        *(f"pool         {_pool(p)}" for p in summary["pools"]),
        f"requests     {summary['finished']:,} finished of {summary['requests']:,} "
        f"in {summary['duration_s']:,.1f} s simulated{_refusals(summary['status_counts'])}",
        f"throughput   {tp['requests_per_s']:,.2f} req/s, "
        f"{tp['input_tokens_per_s']:,.0f} input tok/s, "
        f"{tp['output_tokens_per_s']:,.0f} output tok/s "
        f"({tp['output_tokens_per_s_per_gpu']:,.0f} per GPU"
        + (
            f", {summary['gpus_mean']:,.2f} GPUs provisioned on average)"
            if any(p.get("autoscaled") for p in summary["pools"])
            else ")"
        ),
        "",
        f"{'latency':<12}{'mean':>13}{'p50':>13}{'p90':>13}{'p99':>13}",
    ]
    names = {
        "ttft": "TTFT",
        "tpot": "TPOT",
        "e2e": "E2E",
        "queue": "queueing",
        "gateway_wait": "gateway",
    }
    for key, label in names.items():
        lat = summary["latency_s"][key]
        cells = "".join(f"{duration(lat[k]):>13}" for k in ("mean", "p50", "p90", "p99"))
        lines.append(f"{label:<12}{cells}")
    records = summary.get("records")
    if records:  # --records sample:F or none: the percentiles are a sketch's
        kept = "none" if records["mode"] == "none" else f"{records['rows_written']:,} sampled"
        lines.append(
            f"percentiles from a {records['percentiles']} (requests.parquet keeps {kept}; "
            "means exact)"
        )
    lines += ["", *_format_load(summary)]
    if summary.get("economics") is not None:
        lines += ["", *_format_money(summary)]
    if summary.get("replications"):
        lines += ["", *_format_replications(summary["replications"])]
    if summary.get("batch_means"):
        lines += ["", *_format_batch_means(summary["batch_means"])]
    return "\n".join(lines)


# What the replications block shows (all its figures are in summary.json): key -> label, format.
REPLICATED = {
    "latency_s.ttft.p50": ("TTFT p50", duration),
    "latency_s.ttft.p99": ("TTFT p99", duration),
    "latency_s.tpot.p50": ("TPOT p50", duration),
    "latency_s.tpot.p99": ("TPOT p99", duration),
    "latency_s.e2e.p99": ("E2E p99", duration),
    "throughput.requests_per_s": ("requests/s", lambda x: f"{x:,.2f}"),
    "throughput.output_tokens_per_s": ("output tok/s", lambda x: f"{x:,.0f}"),
    "economics.fleet.goodput_frac": ("goodput", pct),
    "economics.fleet.cost_usd": ("cost", usd),
    "economics.fleet.usd_per_mtoken.blended": ("$/Mtoken", lambda x: f"${x:,.4f}"),
    "economics.fleet.utilisation": ("utilisation", pct),
    "economics.fleet.margin_frac": ("margin", pct),
}


def _format_replications(block: dict) -> list[str]:
    """Mean and interval over the seeds of the figures a planner decides on."""
    seeds = block["seeds"]
    source = "trace re-drawn per seed" if block["trace_redrawn"] else "same trace"
    head = (
        f"over {len(seeds)} seeds ({seeds[0]}-{seeds[-1]}, {source}): mean "
        f"[{block['level']:.0%} interval, {block['method']}]; the rest above is seed {seeds[0]}"
    )
    return [head, *_interval_lines(block["figures"], "(the same for every seed)")]


def _format_batch_means(block: dict) -> list[str]:
    """Mean and interval over one run's windows of the figures a planner decides on (counts
    and money are a window's, rates and shares over a window)."""
    head = (
        f"over {block['batches']} windows of {block['window_s']:,g} s after a "
        f"{block['warmup_s']:,g} s warm-up: mean [{block['level']:.0%} interval, "
        f"{block['method']}]"
    )
    lines = [head, *_interval_lines(block["figures"], "(the same in every window)")]
    if block["correlated"]:
        lines.append(
            "  the windows are correlated (lag-1 autocorrelation above 0.5): the intervals are "
            "too narrow; use fewer, longer windows"
        )
    return lines


def _interval_lines(figures: dict, same: str) -> list[str]:
    lines = []
    for key, (label, fmt) in REPLICATED.items():
        f = figures.get(key)
        if f is None:
            continue
        spread = f"[{fmt(f['ci_low'])}, {fmt(f['ci_high'])}]" if f["varies"] else same
        lines.append(f"  {label:<13}{fmt(f['mean']):>13} {spread}")
    return lines


def _context(run: dict) -> str:
    limit = run.get("max_model_len")
    return f"{int(limit):,} tokens" if limit else "the KV cache's"


def _pool(p: dict) -> str:
    count = f"{p['replicas']}" + (
        f" (autoscaled to {p['max_replicas']})" if p["autoscaled"] else ""
    )
    price = p.get("usd_per_gpu_hour")
    if price is None:
        paid = "owned"
    else:
        default = " (default price)" if "usd_per_gpu_hour" in p.get("default_prices", ()) else ""
        paid = f"${price:,.2f}/GPU-h{default}"
    sizing = p.get("sizing")
    sized = f", sized to {pct(sizing['estimated_load'])} estimated load" if sizing else ""
    return (
        f"{p['name']}: {count} x {p['gpu']} tp{p['tp']}, engine {p['engine']}, "
        f"batcher {p['batcher']}, {paid}{sized}"
    )


def _refusals(counts: dict[str, int]) -> str:
    parts = [f"{counts[k]:,} {why}" for k, why in REFUSALS.items() if counts.get(k)]
    text = f"; refused: {', '.join(parts)}" if parts else ""
    if counts.get("timed_out"):  # latencies and throughput below are of finished requests
        text += f"; {counts['timed_out']:,} timed out (their clients gave up)"
    return text


def _format_load(summary: dict) -> list[str]:
    """How loaded each pool ran (the figures a planner reads as headroom), then busy time."""
    lines = []
    for p in summary["pools"]:
        load = summary["load"][p["name"]]
        if load["mean_batch"] is None:
            lines.append(f"load         {p['name']}: no steps")
            continue
        budget = p.get("max_num_batched_tokens")
        tokens = f"{load['tokens_per_step_mean']:,.0f} tokens/step" + (
            f" of {budget:,} ({pct(load['token_budget_frac_mean'])})" if budget else ""
        )
        lines.append(
            f"load         {p['name']}: batch {load['mean_batch']:,.1f} mean, "
            f"{load['peak_batch']:,} peak of max_num_seqs {p['max_num_seqs']:,} "
            f"({pct(load['batch_frac_mean'])}); {tokens}; KV peak {pct(load['kv_peak_frac'])}"
        )
    lines += [
        f"queueing     {pct(summary['queue_share'])} of finished requests' time was spent "
        "waiting in a replica queue",
        f"step busy    {pct(summary['step_busy_frac'])} of provisioned replica time runs a "
        "step (not headroom: near 100% at any steady load)",
        f"preemptions  {summary['preemptions']:,}",
    ]
    cache = summary.get("prefix_cache")
    if cache and cache["enabled"]:
        lines.append(
            f"prefix cache {pct(cache['hit_rate_tokens'])} of prompt tokens served from it "
            f"({pct(cache['hit_rate_requests'])} of requests hit), "
            f"{cache['prefill_tokens_saved']:,} prefill tokens saved "
            f"(~{cache['prefill_gpu_hours_saved_est']:,.2f} GPU-h, "
            f"~{usd(cache['prefill_usd_saved_est'])}, estimated), "
            f"{cache['evicted_blocks']:,} blocks evicted"
        )
    elif cache:
        lines.append("prefix cache off")
    return lines


def _format_money(summary: dict) -> list[str]:
    """Cost, revenue and goodput lines, fleet and per tier; all from summary.json."""

    def mtok(x: float | None) -> str:
        return "-" if x is None else f"${x:,.3f}"

    fleet = summary["economics"]["fleet"]
    per = fleet["usd_per_mtoken"]
    lines = [
        f"cost         {usd(fleet['cost_usd'])}",
        *(
            f"  {p['name']:<10} {usd(p['cost_usd'])} ({p['pricing']}): "
            f"{p['charged_gpu_s'] / 3600:,.2f} GPU-h charged, "
            f"{p['busy_gpu_s'] / 3600:,.2f} GPU-h running steps ({pct(p['utilisation'])}), "
            f"at most {p['peak_replicas']} replica{'s' * (p['peak_replicas'] != 1)} at once"
            for p in summary["pools"]
        ),
        f"per Mtoken   {mtok(per['blended'])} blended, {mtok(per['input'])} input, "
        f"{mtok(per['output'])} output",
        f"revenue      {usd(fleet['revenue_usd'])}, margin {usd(fleet['margin_usd'])} "
        f"({pct(fleet['margin_frac'])})"
        + (
            "; from default tier prices (set them under [[tiers]])"
            if _default_prices(summary)
            else ""
        ),
    ]
    # Only a run whose clients gave up has the column (the tiers' client_timeout_s).
    timed_out = any(t.get("timed_out") for t in summary["economics"]["tiers"].values())
    columns = [
        Column("tier"),
        Column("requests"),
        Column("goodput", pct),
        Column("TTFT p99", duration),
        Column("limited"),
        Column("expired"),
        *([Column("timed out")] if timed_out else []),
        Column("GPU-h", lambda x: f"{x:,.2f}"),
        Column("$/Mtok", mtok),
        Column("cost", usd),
        Column("revenue", usd),
        Column("margin", usd),
    ]
    rows = [
        [
            name,
            t["requests"],
            t["goodput_frac"] if t.get("has_slo", True) else "no SLO",
            t["ttft_s"]["p99"],
            t["rate_limited"],
            t["expired"],
            *([t["timed_out"]] if timed_out else []),
            t["gpu_hours"],
            t["usd_per_mtoken"]["blended"],
            t["cost_usd"],
            t["revenue_usd"],
            t["margin_usd"],
        ]
        for name, t in summary["economics"]["tiers"].items()
    ]
    lines += ["", render_table(columns, rows)]
    unknown = summary["gateway"]["unknown_tiers"]
    if unknown:
        listed = ", ".join(f"{k} ({v:,})" for k, v in unknown.items())
        lines.append(f"unknown tiers served as {summary['gateway']['default_tier']}: {listed}")
    return lines


def _default_prices(summary: dict) -> bool:
    """Whether some tier's revenue comes from prices the scenario did not set."""
    return any(t.get("default_prices") for t in summary["economics"]["tiers"].values())
