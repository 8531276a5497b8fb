"""Terminal formatting of a replay's summary: every figure shown is also in summary.json."""

from __future__ import annotations


def format_summary(summary: dict) -> str:
    """The terminal table: every figure here is also in summary.json."""

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1e3:,.1f}"

    tp = summary["throughput"]
    pools = ", ".join(
        f"{p['name']}: {p['replicas']}"
        + (f" (autoscaled to {p['max_replicas']})" if p.get("autoscaled") else "")
        + f" x {p['gpu']} tp{p['tp']} {p['batcher']}"
        for p in summary["pools"]
    )
    lines = [
        f"fleet        {pools}",
        f"requests     {summary['finished']:,} finished of {summary['requests']:,} "
        f"in {summary['duration_s']:,.1f} s simulated",
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
        f"{'latency (ms)':<14}{'mean':>10} {'p50':>10} {'p90':>10} {'p99':>10}",
    ]
    names = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E", "queue": "queueing"}
    for key, label in names.items():
        lat = summary["latency_s"][key]
        lines.append(
            f"{label:<14}{ms(lat['mean']):>10} {ms(lat['p50']):>10} "
            f"{ms(lat['p90']):>10} {ms(lat['p99']):>10}"
        )
    kv_mean = summary["kv_peak_frac_mean"]
    money = summary.get("economics")
    lines += [
        "",
        f"preemptions  {summary['preemptions']:,}",
        f"GPU busy     {summary['gpu_busy_frac']:.1%}",
        "KV peak      "
        + ("-" if kv_mean is None else f"{kv_mean:.1%} mean, {summary['kv_peak_frac_max']:.1%} max")
        + " (per replica per interval)",
    ]
    if money is not None:
        lines += ["", *_format_money(summary)]
    return "\n".join(lines)


def _format_money(summary: dict) -> list[str]:
    """Cost, revenue and goodput lines, fleet and per tier; all from summary.json."""

    def usd(x: float | None) -> str:
        if x is None:
            return "-"
        return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"

    def mtok(x: float | None) -> str:
        return "-" if x is None else f"${x:,.3f}"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:,.2f}s"

    fleet = summary["economics"]["fleet"]
    per = fleet["usd_per_mtoken"]
    pools = ", ".join(
        f"{p['name']}: {usd(p['cost_usd'])} ({p['pricing']}, {p['charged_gpu_s'] / 3600:,.2f} "
        f"GPU-h, {pct(p['utilisation'])} busy, peak {p['peak_replicas']})"
        for p in summary["pools"]
    )
    lines = [
        f"cost         {usd(fleet['cost_usd'])}: {pools}",
        f"per Mtoken   {mtok(per['blended'])} blended, {mtok(per['input'])} input, "
        f"{mtok(per['output'])} output",
        f"revenue      {usd(fleet['revenue_usd'])}, margin {usd(fleet['margin_usd'])} "
        f"({pct(fleet['margin_frac'])})",
        "",
        f"{'tier':<12}{'requests':>10}{'goodput':>9} {'TTFT p99':>10}{'limited':>9}{'expired':>9}"
        f"{'GPU-h':>9}{'$/Mtok':>9}{'cost':>12}{'revenue':>12}{'margin':>12}",
    ]
    for name, t in summary["economics"]["tiers"].items():
        lines.append(
            f"{name:<12}{t['requests']:>10,}{pct(t['goodput_frac']):>9}"
            f" {secs(t['ttft_s']['p99']):>10}{t['rate_limited']:>9,}"
            f"{t['expired']:>9,}{t['gpu_hours']:>9,.2f}{mtok(t['usd_per_mtoken']['blended']):>9}"
            f"{usd(t['cost_usd']):>12}{usd(t['revenue_usd']):>12}{usd(t['margin_usd']):>12}"
        )
    unknown = summary["gateway"]["unknown_tiers"]
    if unknown:
        listed = ", ".join(f"{k} ({v:,})" for k, v in unknown.items())
        lines.append(f"unknown tiers served as {summary['gateway']['default_tier']}: {listed}")
    return lines
