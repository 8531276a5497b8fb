"""How every figure of a report looks: one size, fixed colours per tier, pool and run, and the
two reductions that keep a figure fast on a million requests (a CDF drawn from at most
CDF_POINTS order statistics; a time series of at most SERIES_POINTS bins)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: figures are files
# "$ per Mtoken" is money, not mathtext (parsing it as math also cost 0.2 s a figure).
matplotlib.rcParams["text.parse_math"] = False

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

# A laptop screen's width at 100 dpi: 1,200 x 700 pixels (the tests check the size).
DPI = 100
FIGSIZE = (12.0, 7.0)
CDF_POINTS = 512
SERIES_POINTS = 600

# The same tier, pool or run has the same colour in every figure of every report: the usual
# tier names have their own, others take the palette in sorted order.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
FIXED = {"fast": "#d62728", "standard": "#1f77b4", "batch": "#2ca02c"}
POOL_STYLES = ("-", "--", ":", "-.")


def colours(names: list[str]) -> dict[str, str]:
    """A colour for each name: fixed ones first, the rest of the palette in sorted order."""
    out = {n: FIXED[n] for n in names if n in FIXED}
    free = [c for c in PALETTE if c not in out.values()] or list(PALETTE)
    for i, name in enumerate(sorted(n for n in set(names) if n not in out)):
        out[name] = free[i % len(free)]
    return out


def new_figure(
    rows: int, cols: int, title: str, widths: tuple[float, ...] | None = None
) -> tuple[Figure, np.ndarray]:
    """A figure with fixed margins: tight_layout measured every tick label and took half of a
    figure's 1.5 s here; fixed margins, sized for the labels these figures have, take none."""
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=FIGSIZE,
        dpi=DPI,
        squeeze=False,
        gridspec_kw={
            "left": 0.07,
            "right": 0.98,
            "bottom": 0.09 if rows == 1 else 0.07,
            "top": 0.87 if rows == 1 else 0.9,
            "wspace": 0.3,
            "hspace": 0.38,
            "width_ratios": widths,
        },
    )
    fig.suptitle(title, fontsize=13)
    return fig, axes


# Tick labels as plain numbers (0.01, 100, 1e+04): the default log labels are mathtext, which
# text.parse_math = False above would print raw.
PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


def log_x(ax) -> None:
    """A log x axis with ticks at 1, 2 and 5 of each decade, labelled at the decades: the
    default's eight unlabelled minor ticks a decade were a third of a CDF figure's time."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def save(fig: Figure, path: Path) -> Path:
    """Write at exactly FIGSIZE x DPI pixels (no tight bbox: the size is part of the contract)."""
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def cdf_points(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) of sorted `values` at up to CDF_POINTS order statistics, the tails included:
    a million samples draw as the same curve as 512 of their quantiles."""
    n = len(values)
    if n <= CDF_POINTS:
        index = np.arange(n)
    else:
        index = np.unique(np.linspace(0, n - 1, CDF_POINTS).round().astype(np.int64))
    return values[index], (index + 1) / n


def bin_factor(intervals: int, points: int = SERIES_POINTS) -> int:
    """How many timeline intervals one plotted point covers, for at most `points` points."""
    return max(1, -(-intervals // points))


def empty_panel(ax, text: str) -> None:
    """A panel with nothing to draw says why, rather than showing empty axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555")
    ax.set_xticks([])
    ax.set_yticks([])


def usd_label(x: float) -> str:
    return f"${x:,.2f}" if abs(x) >= 0.01 or x == 0 else f"${x:.2g}"
