"""The figures of one replay: latency CDFs per tier, the run over time, and where the money
goes. Each reads only the columns it draws (inputs.ReplayRun) and reduces before plotting
(style.cdf_points, style.bin_factor), so a 1M-request run draws in well under a second each."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from tokenfleet.replay.cost import OwnedPricing, RentedPricing
from tokenfleet.report.inputs import ReplayRun, sorted_finite
from tokenfleet.report.style import (
    PLAIN,
    POOL_STYLES,
    SERIES_POINTS,
    bin_factor,
    cdf_points,
    colours,
    empty_panel,
    log_x,
    new_figure,
    save,
    usd_label,
)

LATENCIES = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E"))
# The SLO that bounds each latency in a tier (0 = none): tiers.Tier's fields.
SLO_OF = {"ttft_s": "ttft_slo_s", "tpot_s": "tpot_slo_s", "e2e_s": "deadline_s"}
ENDED = ("finished", "expired")  # requests that have all three latencies


def tier_names(run: ReplayRun) -> list[str]:
    return sorted(run.summary["economics"].get("tiers", {}))


def pool_names(run: ReplayRun) -> list[str]:
    return [p["name"] for p in run.summary["pools"]]


def latency_figure(run: ReplayRun, path: Path) -> Path:
    """TTFT, TPOT and E2E CDFs (log x), a line per tier (and line style per pool when there are
    several), each tier's SLO a dashed vertical line in its colour."""
    frame = run.requests(["tier", "pool", "status", *(c for c, _ in LATENCIES)])
    frame = frame.filter(pl.col("status").is_in(ENDED))
    pools = pool_names(run)
    tier_colour = colours(tier_names(run) + frame["tier"].unique().to_list())
    slos = {t.name: t for t in run.scenario.tiers}
    fig, axes = new_figure(1, 3, f"Latency of ended requests: {run.label}")
    if frame["tier"].n_unique() == 1 and frame["pool"].n_unique() == 1:  # no copy (0.13 s)
        groups = {(frame["tier"][0], frame["pool"][0]): frame} if frame.height else {}
    else:
        groups = frame.partition_by(["tier", "pool"], as_dict=True, maintain_order=False)
    for ax, (column, name) in zip(axes[0], LATENCIES, strict=True):
        drawn = 0
        for (tier, pool), group in sorted(groups.items()):
            values = sorted_finite(group[column])
            if len(values) == 0:
                continue
            x, y = cdf_points(values)
            style = POOL_STYLES[pools.index(pool) % len(POOL_STYLES)] if pool in pools else "-"
            label = f"{tier} ({len(values):,})" if len(pools) < 2 else f"{tier} @ {pool}"
            ax.step(x, y, where="post", color=tier_colour[tier], linestyle=style, label=label)
            drawn += 1
        for tier, colour in tier_colour.items():
            limit = getattr(slos.get(tier), SLO_OF[column], 0.0) if tier in slos else 0.0
            if limit > 0:
                ax.axvline(limit, color=colour, linestyle="--", linewidth=1, alpha=0.8)
                ax.text(limit, 0.02, f" {tier} SLO", color=colour, rotation=90, fontsize=8)
        if not drawn:
            empty_panel(ax, f"no {name} to draw (no ended request has one)")
            continue
        log_x(ax)
        ax.set_xlabel(f"{name} (s, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(name)
        ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


TIMELINE_SUMS = [
    "requests_arrived",
    "requests_finished",
    "prefill_tokens",
    "cached_tokens",
    "output_tokens",
    "busy_s",
    "provisioned_s",
    "cost_usd",
    "mean_in_system",
]


def interval_series(run: ReplayRun, points: int = SERIES_POINTS) -> pl.DataFrame:
    """Per pool and plotted bin (bin_factor intervals): `t_s` (the bin's start), `span_s` (its
    length, the last one cut at the run's end so that its rates do not drop), the sums of
    TIMELINE_SUMS over its replicas and intervals, `running` (mean batch x busy share summed
    over replicas: time-average sequences in a step), `in_system` (time-average requests
    queued or running), and mean and peak KV use over the provisioned replicas."""
    frame = run.timeline(
        ["pool", "interval_start_s", "interval_s", "mean_batch", "kv_peak_frac", *TIMELINE_SUMS]
    )
    if frame.height == 0:
        return frame
    interval = float(frame["interval_s"][0])
    count = int(round(float(frame["interval_start_s"].max()) / interval)) + 1
    k = bin_factor(count, points)
    span = k * interval
    # The simulation's end (the timeline's last interval stops there), not `duration_s`,
    # which starts at the first arrival and ends at the client's last token.
    end = float(run.summary["economics"]["fleet"].get("run_s") or 0.0) or (count * interval)
    return (
        frame.with_columns(
            ((pl.col("interval_start_s") / interval).round().cast(pl.Int64) // k).alias("bin"),
            (pl.col("mean_batch").fill_null(0.0) * pl.col("busy_s")).alias("batch_s"),
        )
        .group_by(["pool", "bin"])
        .agg(
            *(pl.col(c).sum() for c in TIMELINE_SUMS),
            (pl.col("batch_s").sum() / span).alias("running"),
            (pl.col("mean_in_system").sum() / pl.col("interval_start_s").n_unique()).alias(
                "in_system"
            ),
            pl.col("kv_peak_frac").mean().alias("kv_mean"),
            pl.col("kv_peak_frac").max().alias("kv_max"),
        )
        .with_columns((pl.col("bin") * span).alias("t_s"))
        .with_columns((end - pl.col("t_s")).clip(1e-9, span).alias("span_s"))
        .sort(["pool", "bin"])
    )


def revenue_series(run: ReplayRun, span_s: float, end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Revenue per second, booked when each request finishes, in bins of `span_s` up to
    `end_s` (the last bin as long as it lasted)."""
    frame = run.requests(["finish_s", "revenue_usd"]).drop_nulls()
    if frame.height == 0:
        return np.zeros(0), np.zeros(0)
    bins = (frame["finish_s"].to_numpy() // span_s).astype(np.int64)
    money = np.bincount(bins, weights=frame["revenue_usd"].to_numpy())
    starts = np.arange(len(money)) * span_s
    lengths = np.clip(max(end_s, starts[-1] + 1e-9) - starts, 1e-9, span_s)
    return starts, money / lengths


def timeline_figure(run: ReplayRun, path: Path) -> Path:
    """The run over time: load, batch and queue, KV use, replicas, tokens, and money rates."""
    series = interval_series(run)
    pool_colour = colours(pool_names(run))
    fig, axes = new_figure(2, 3, f"Over time: {run.label}")
    if series.height == 0:
        for ax in axes.flat:
            empty_panel(ax, "the timeline has no rows")
        return save(fig, path)
    (load, queue, kv), (fleet, tokens, money) = axes
    unit, scale = ("h", 3600.0) if series["t_s"].max() > 3 * 3600 else ("s", 1.0)
    sums = [*TIMELINE_SUMS, "running", "in_system"]
    total = (
        series.group_by("bin")
        .agg(*(pl.col(c).sum() for c in sums), pl.col("t_s").first(), pl.col("span_s").first())
        .sort("bin")
    )
    span = total["span_s"].to_numpy()
    t = total["t_s"].to_numpy() / scale

    load.plot(t, total["requests_arrived"] / span, label="arrived", color="#1f77b4")
    load.plot(t, total["requests_finished"] / span, label="finished", color="#ff7f0e")
    load.set_ylabel("requests / s")
    load.set_title("Arrivals and finishes")

    queue.plot(t, total["running"], label="running (mean batch x busy share)", color="#2ca02c")
    queue.plot(t, total["in_system"], label="in system (queued + running)", color="#9467bd")
    queue.set_ylabel("requests, all replicas")
    queue.set_title("Running and in system (the gap: queued)")

    for (name,), group in series.partition_by("pool", as_dict=True).items():
        gt = group["t_s"].to_numpy() / scale
        c = pool_colour[name]
        kv.plot(gt, group["kv_mean"] * 100, color=c, label=f"{name} mean")
        kv.plot(gt, group["kv_max"] * 100, color=c, linestyle=":", label=f"{name} peak")
        pspan = group["span_s"].to_numpy()
        fleet.plot(gt, group["provisioned_s"] / pspan, color=c, label=f"{name} provisioned")
        fleet.plot(gt, group["busy_s"] / pspan, color=c, linestyle="--", label=f"{name} busy")
    kv.set_ylabel("KV cache in use (% of capacity)")
    kv.set_title("KV use per replica (mean and peak)")
    fleet.set_ylabel("replicas")
    fleet.set_title("Replicas provisioned and busy")

    tokens.plot(t, total["output_tokens"] / span, label="output", color="#d62728")
    tokens.plot(t, total["prefill_tokens"] / span, label="prefill (computed)", color="#8c564b")
    tokens.plot(t, total["cached_tokens"] / span, label="prompt, from cache", color="#17becf")
    tokens.set_ylabel("tokens / s")
    tokens.set_yscale("symlog", linthresh=1.0)
    tokens.yaxis.set_major_formatter(PLAIN)
    tokens.set_title("Token throughput")

    money.plot(t, total["cost_usd"] / span * 3600, label="cost", color="#7f7f7f")
    rt, rate = revenue_series(run, float(span[0]), float(t[-1] * scale + span[-1]))
    money.plot(rt / scale, rate * 3600, label="revenue (at finish)", color="#2ca02c")
    money.set_ylabel("$ / hour")
    money.set_title("Cost and revenue rates")
    for ax in axes.flat:
        ax.set_xlabel(f"simulated time ({unit})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def cost_components(run: ReplayRun) -> dict[str, dict[str, float]]:
    """Each pool's cost split by what it pays for: capital, opex and power when owned (they sum
    to the pool's cost), on-demand or reserved rent when rented."""
    pricing = {p.name: p.pricing for p in run.scenario.pools}
    out = {}
    for pool in run.summary["pools"]:
        name = pool["name"]
        config = pricing.get(name)
        price = config.build(f"pool {name!r} pricing") if config is not None else None
        if isinstance(price, OwnedPricing):
            out[name] = price.components_usd(pool["charged_gpu_s"], pool["busy_gpu_s"])
        elif isinstance(price, RentedPricing) and price.commitment == "reserved":
            out[name] = {"reserved rent": pool["cost_usd"]}
        else:
            out[name] = {"on-demand rent": pool["cost_usd"]}
    return out


COMPONENT_COLOURS = {
    "capital": "#1f77b4",
    "opex": "#aec7e8",
    "power": "#ff7f0e",
    "on-demand rent": "#7f7f7f",
    "reserved rent": "#c7c7c7",
}


def money_figure(run: ReplayRun, path: Path) -> Path:
    """Cost by pool and component; revenue, cost and margin by tier and by tenant; $/Mtoken."""
    economics = run.summary["economics"]
    fig, axes = new_figure(2, 2, f"Money: {run.label}")
    (by_pool, by_tier), (by_tenant, per_mtoken) = axes

    parts = cost_components(run)
    names = list(parts)
    left = np.zeros(len(names))
    for component, colour in COMPONENT_COLOURS.items():
        widths = np.array([parts[n].get(component, 0.0) for n in names])
        if widths.any():
            by_pool.barh(names, widths, left=left, color=colour, label=component)
            left += widths
    defaults = any(p.get("default_prices") for p in run.summary["pools"])
    for i, total in enumerate(left):
        by_pool.text(total, i, " " + usd_label(total), va="center", fontsize=9)
    by_pool.set_xlabel("cost over the run ($)")
    by_pool.set_title("Cost by pool and component" + (" (default $/GPU-hour)" if defaults else ""))
    by_pool.legend(fontsize=8)
    by_pool.set_xlim(0, max(left.max() * 1.25, 1e-9) if len(left) else 1)

    tiers = economics.get("tiers", {})
    default_tiers = [t for t, v in tiers.items() if v.get("default_prices")]
    _money_bars(by_tier, tiers, "tier", default_tiers)
    tenants = {k: v for k, v in economics.get("tenants", {}).items()}
    if set(tenants) <= {"(none)"}:
        empty_panel(by_tenant, "no tenants in this trace (its tenant column is empty)")
        by_tenant.set_title("Revenue, cost and margin by tenant")
    else:
        _money_bars(by_tenant, tenants, "tenant", [])

    rows = {"fleet": economics["fleet"], **tiers}
    labels = list(rows)
    width = 0.27
    x = np.arange(len(labels))
    for i, (key, colour) in enumerate(
        (("input", "#8c564b"), ("output", "#d62728"), ("blended", "#1f77b4"))
    ):
        values = [_num(rows[r].get("usd_per_mtoken", {}).get(key)) for r in labels]
        per_mtoken.bar(x + (i - 1) * width, values, width, label=key, color=colour)
    per_mtoken.set_xticks(x, labels)
    per_mtoken.set_ylabel("cost, $ per Mtoken")
    per_mtoken.set_title("Cost per Mtoken (what serving costs, not the price)")
    per_mtoken.legend(fontsize=8)
    for ax in (by_pool, by_tier, by_tenant, per_mtoken):
        ax.grid(True, axis="x" if ax is by_pool else "y", alpha=0.3)
    return save(fig, path)


def _money_bars(ax, groups: dict[str, dict], kind: str, defaults: list[str]) -> None:
    labels = sorted(groups)
    x = np.arange(len(labels))
    width = 0.27
    for i, (key, name, colour) in enumerate(
        (
            ("revenue_usd", "revenue", "#2ca02c"),
            ("cost_usd", "cost", "#7f7f7f"),
            ("margin_usd", "margin", "#1f77b4"),
        )
    ):
        values = [_num(groups[g].get(key)) for g in labels]
        ax.bar(x + (i - 1) * width, values, width, label=name, color=colour)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, labels)
    ax.set_ylabel("$ over the run")
    note = f" (default prices: {', '.join(defaults)})" if defaults else ""
    ax.set_title(f"Revenue, cost and margin by {kind}{note}")
    ax.legend(fontsize=8)


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0
