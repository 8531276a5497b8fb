"""The figures that set runs against each other: a frontier's cost-versus-speed curve, several
replays on the same axes, and the gap between two fleets serving the same traffic (the model
lab against the inference provider) split into the factors that make it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from tokenfleet.report.inputs import FrontierRun, ReplayRun, sorted_finite
from tokenfleet.report.replay_figures import ENDED, LATENCIES, interval_series
from tokenfleet.report.style import (
    PLAIN,
    cdf_points,
    colours,
    empty_panel,
    log_x,
    new_figure,
    save,
)

# The axes InferenceMAX, AIConfigurator and `vllm bench sweep plot_pareto` use.
PER_USER = "output tokens/s per user (1 / TPOT p50)"
PER_GPU = "output tokens/s per GPU"
GAP_POINTS = 96


@dataclass(frozen=True)
class Point:
    """One run on the frontier axes."""

    label: str
    per_user: float | None
    per_gpu: float | None
    usd_per_mtoken: float | None
    pareto: bool


def frontier_points(run: FrontierRun) -> list[Point]:
    rows = run.table.select(
        "run",
        "output_tokens_per_s_per_user",
        "output_tokens_per_s_per_gpu",
        "usd_per_mtoken",
        "pareto",
    ).rows()
    return [Point(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]


def replay_point(run: ReplayRun) -> Point:
    """A replay as a frontier point (tokens/s per user as frontier.py computes it)."""
    s = run.summary
    tpot = s["latency_s"].get("tpot", {}).get("p50")
    cost = s["economics"]["fleet"].get("usd_per_mtoken", {}).get("blended")
    per_gpu = s.get("throughput", {}).get("output_tokens_per_s_per_gpu")
    return Point(run.label, 1.0 / tpot if tpot else None, per_gpu, cost, False)


def frontier_figure(points: list[Point], title: str, path: Path) -> Path:
    return save(draw_frontier(points, title), path)


def draw_frontier(points: list[Point], title: str) -> Figure:
    """Tokens/s per GPU and $/Mtoken against tokens/s per user; Pareto points are stars joined
    by a line (a single point draws no line), every point labelled with its setting."""
    fig, axes = new_figure(1, 2, title)
    drawn = [p for p in points if p.per_user is not None]
    for ax, attr, ylabel in (
        (axes[0][0], "per_gpu", PER_GPU),
        (axes[0][1], "usd_per_mtoken", "cost, $ per Mtoken (blended)"),
    ):
        shown = [p for p in drawn if getattr(p, attr) is not None]
        if not shown:
            empty_panel(ax, "no run has this figure (no output tokens?)")
            continue
        rest = [p for p in shown if not p.pareto]
        best = sorted((p for p in shown if p.pareto), key=lambda p: p.per_user)
        if rest:
            ax.scatter(
                [p.per_user for p in rest],
                [getattr(p, attr) for p in rest],
                color="#7f7f7f",
                label="dominated",
                zorder=2,
            )
        ax.scatter(
            [p.per_user for p in best],
            [getattr(p, attr) for p in best],
            color="#d62728",
            marker="*",
            s=160,
            label="Pareto-optimal",
            zorder=3,
        )
        if len(best) > 1:
            ax.plot([p.per_user for p in best], [getattr(p, attr) for p in best], color="#d62728")
        # Settings that land on the same point (a batch cap the load never reaches) share
        # one label rather than printing over each other.
        at: dict[tuple[float, float], list[str]] = {}
        for p in shown:
            at.setdefault((p.per_user, getattr(p, attr)), []).append(p.label)
        for (x, y), labels in at.items():
            ax.annotate(
                " | ".join(labels),
                (x, y),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
        ax.margins(x=0.2, y=0.1)
        ax.set_xlabel(PER_USER)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def runs_latency_figure(runs: list[ReplayRun], path: Path) -> Path:
    """TTFT, TPOT and E2E CDFs of several runs on the same axes, a line per run."""
    run_colour = colours([r.label for r in runs])
    fig, axes = new_figure(1, 3, "Latency of ended requests, run against run")
    frames = [
        r.requests(["status", *(c for c, _ in LATENCIES)]).filter(pl.col("status").is_in(ENDED))
        for r in runs
    ]
    for ax, (column, name) in zip(axes[0], LATENCIES, strict=True):
        drawn = 0
        for run, frame in zip(runs, frames, strict=True):
            values = sorted_finite(frame[column])
            if len(values):
                x, y = cdf_points(values)
                ax.step(x, y, where="post", color=run_colour[run.label], label=run.label)
                drawn += 1
        if not drawn:
            empty_panel(ax, f"no {name} to draw")
            continue
        log_x(ax)
        ax.set_xlabel(f"{name} (s, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


@dataclass(frozen=True)
class Factor:
    """One multiplicative part of a cost gap: `ratio` of the other run to the base."""

    name: str
    ratio: float
    why: str


def gap_factors(base: ReplayRun, other: ReplayRun, cached: ReplayRun | None) -> list[Factor]:
    """$/Mtoken of `other` over `base` as a product of factors, exactly:
    ($ per GPU-hour) x (GPU-hours charged) x (tokens served by base / by other).
    With `cached` (the other fleet routed cache-aware), the GPU-hours factor splits into
    caching (other's GPU-hours over cached's) and utilisation and backfill (cached's over
    base's)."""

    def cost(run: ReplayRun) -> float:
        return run.summary["economics"]["fleet"]["cost_usd"]

    def hours(run: ReplayRun) -> float:
        return run.summary["gpu_hours_provisioned"]

    def tokens(run: ReplayRun) -> float:
        t = run.summary["tokens"]
        return t["input"] + t["output"]

    kinds = (
        {p["pricing"] for p in base.summary["pools"]},
        {p["pricing"] for p in other.summary["pools"]},
    )
    ownership = kinds[0] != kinds[1]
    factors = [
        Factor(
            "ownership ($ per GPU-hour)" if ownership else "$ per GPU-hour",
            (cost(other) / hours(other)) / (cost(base) / hours(base)),
            "owned against rented GPUs, all in" if ownership else "the price of a GPU-hour",
        )
    ]
    if cached is not None:
        factors.append(
            Factor(
                "utilisation and backfill (GPU-hours)",
                hours(cached) / hours(base),
                f"GPU-hours of {cached.label} over {base.label}",
            )
        )
        factors.append(
            Factor(
                "caching (GPU-hours)",
                hours(other) / hours(cached),
                f"GPU-hours of {other.label} over {cached.label} (routed for its cache)",
            )
        )
    else:
        factors.append(
            Factor(
                "utilisation and backfill (GPU-hours)",
                hours(other) / hours(base),
                "GPU-hours charged for the same traffic",
            )
        )
    served = tokens(base) / tokens(other)
    if abs(served - 1.0) > 1e-3:
        factors.append(Factor("tokens served", served, "fewer tokens spread the cost thinner"))
    return factors


def gap_figure(runs: list[ReplayRun], cached: ReplayRun | None, path: Path) -> Path:
    """Cost per Mtoken and utilisation over time for each run, and the second run's cost gap to
    the first as factors (log scale, each with its share of the gap in logarithms)."""
    run_colour = colours([r.label for r in runs])
    spread: list[float] = []
    fig, axes = new_figure(
        1, 3, f"{runs[1].label} against {runs[0].label}: where the gap is", widths=(1, 1, 1.5)
    )
    cost_ax, util_ax, gap_ax = axes[0]
    for run in runs:
        # 96 points: a day in quarter hours. An autoscaled fleet's utilisation jumps from one
        # 5-minute interval to the next as replicas come and go; two runs' lines at full
        # resolution hide each other.
        series = interval_series(run, GAP_POINTS)
        if series.height == 0:
            continue
        total = (
            series.group_by("bin")
            .agg(
                pl.col("t_s").first(),
                pl.col("cost_usd").sum(),
                (pl.col("prefill_tokens") + pl.col("cached_tokens") + pl.col("output_tokens"))
                .sum()
                .alias("tokens"),
                pl.col("busy_s").sum(),
                pl.col("provisioned_s").sum(),
            )
            .sort("bin")
        )
        t = total["t_s"].to_numpy() / 3600.0
        tokens = total["tokens"].to_numpy().astype(float)
        per_mtoken = total["cost_usd"].to_numpy() / np.where(tokens > 0, tokens, np.nan)
        provisioned = total["provisioned_s"].to_numpy()
        busy = total["busy_s"].to_numpy() / np.where(provisioned > 0, provisioned, np.nan)
        finite = per_mtoken[np.isfinite(per_mtoken)]
        if len(finite):  # an interval with a few tokens (the run's tail) spikes; keep the day
            spread.extend(np.quantile(finite, (0.01, 0.99)) * 1e6)
        c = run_colour[run.label]
        cost_ax.plot(t, per_mtoken * 1e6, color=c, label=run.label)
        util_ax.plot(t, busy * 100, color=c, label=run.label)
    cost_ax.set_yscale("log")
    cost_ax.yaxis.set_major_formatter(PLAIN)
    cost_ax.yaxis.set_minor_formatter(NullFormatter())
    if spread:
        cost_ax.set_ylim(min(spread) / 1.5, max(spread) * 1.5)
    cost_ax.set_ylabel("cost, $ per Mtoken (in the interval)")
    cost_ax.set_title("Cost per Mtoken over time")
    util_ax.set_ylabel("replica time running steps (% of provisioned)")
    util_ax.set_ylim(0, 105)
    util_ax.set_title("Utilisation over time")
    for ax in (cost_ax, util_ax):
        ax.set_xlabel("simulated time (h)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)

    factors = gap_factors(runs[0], runs[1], cached)
    total = math.prod(f.ratio for f in factors)
    logs = math.log(total) if total > 0 and total != 1 else None
    names = [f.name for f in factors] + ["total ($ per Mtoken)"]
    ratios = [f.ratio for f in factors] + [total]
    bar_colours = ["#1f77b4" if r >= 1 else "#2ca02c" for r in ratios[:-1]] + ["#7f7f7f"]
    y = np.arange(len(names))[::-1]
    gap_ax.barh(y, ratios, color=bar_colours, height=0.35)
    gap_ax.axvline(1.0, color="black", linewidth=0.8)
    log_x(gap_ax)
    for yi, f, r in zip(y, [*factors, None], ratios, strict=True):
        share = (
            f" ({math.log(r) / logs:.0%} of the gap)" if f is not None and logs and r > 0 else ""
        )
        gap_ax.text(r, yi, f" {r:.2f}x{share}", va="center", fontsize=9)
    gap_ax.set_yticks([])
    for yi, name in zip(y, names, strict=True):
        gap_ax.text(0.02, yi + 0.32, name, transform=gap_ax.get_yaxis_transform(), fontsize=9)
    gap_ax.set_xlabel(f"{runs[1].label} / {runs[0].label} (log scale)")
    gap_ax.set_title("The cost gap, factor by factor")
    gap_ax.set_ylim(-0.5, len(names) - 0.2)  # room for the top factor's name
    low, high = min(ratios + [1.0]), max(ratios + [1.0])
    gap_ax.set_xlim(low / 1.5, high * 3)
    return save(fig, path)
