"""The report's one static page: a description of each run, its figures (PNG files beside the
page, linked by relative paths so the folder can be moved or zipped), and the summary tables.
No script, no network: it reads the same in a browser, a mail client or a file viewer."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

from tokenfleet.report.inputs import FrontierRun, ReplayRun, Run

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1260px; margin: 1.5em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.92em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.82em; }
"""


@dataclass(frozen=True)
class Figure:
    """One drawn figure: its file (beside the page) and what it shows."""

    file: str
    caption: str


def describe(run: Run) -> list[tuple[str, str]]:
    """The facts a reader needs before any figure: what was simulated, on what, at what price."""
    if isinstance(run, FrontierRun):
        return [
            ("frontier", str(run.path)),
            ("settings varied", ", ".join(run.varied) or "(none)"),
            ("runs", f"{run.table.height:,} ({int(run.table['pareto'].sum()):,} Pareto-optimal)"),
        ]
    info = run.summary["run"]
    rows = [
        ("run", str(run.path)),
        ("model", f"{info.get('model')} ({info.get('dtype')} weights, {info.get('kv_dtype')} KV)"),
        ("trace", str(info.get("trace"))),
        ("balancer", run.scenario.balancer.policy),
        ("seed", str(info.get("seed"))),
        ("tokenfleet", str(info.get("version"))),
    ]
    for pool in run.summary["pools"]:
        default = " (default price)" if pool.get("default_prices") else ""
        if pool.get("pricing") == "owned":
            price = "owned (capital, opex and power; see the money figure)"
        else:
            price = f"rented, ${pool.get('usd_per_gpu_hour', float('nan')):.2f}/GPU-h{default}"
        rows.append(
            (
                f"pool {pool['name']}",
                f"{pool['replicas']} x {pool['gpu']} tp{pool['tp']}, engine {pool['engine']}, "
                f"batcher {pool['batcher']}, {price}",
            )
        )
    tiers = run.summary["economics"].get("tiers", {})
    for tier in run.scenario.tiers:
        default = " (default prices)" if tiers.get(tier.name, {}).get("default_prices") else ""
        slos = [
            f"{name} {value:g} s"
            for name, value in (
                ("TTFT SLO", tier.ttft_slo_s),
                ("TPOT SLO", tier.tpot_slo_s),
                ("deadline", tier.deadline_s),
            )
            if value > 0
        ]
        rows.append(
            (
                f"tier {tier.name}",
                f"${tier.usd_per_mtoken_input:g} input, ${tier.usd_per_mtoken_cached_input:g} "
                f"cached input, ${tier.usd_per_mtoken_output:g} output per Mtoken{default}; "
                + (", ".join(slos) if slos else "no SLO"),
            )
        )
    if not run.scenario.tiers:
        rows.append(("tiers", "the default tier at default prices"))
    block = run.summary.get("replications")
    if block:  # replay --seeds: the figures drawn are seed 0's; the intervals are in the summary
        redrawn = ", the trace re-drawn per seed" if block.get("trace_redrawn") else ""
        rows.append(
            (
                "seeds",
                f"{len(block['seeds'])} replications{redrawn}: the figures show seed "
                f"{block['seeds'][0]}; each figure's mean and {block['level']:.0%} interval are "
                "in the summary below",
            )
        )
    windows = run.summary.get("batch_means")
    if windows:  # replay --batches: one run's intervals, from its windows
        rows.append(
            (
                "batch means",
                f"{windows['batches']} windows of {windows['window_s']:,g} s after a "
                f"{windows['warmup_s']:,g} s warm-up: each figure's mean and "
                f"{windows['level']:.0%} interval over the windows are in summary.json "
                "(batch_means)"
                + (
                    "; the windows are correlated, so the intervals are too narrow"
                    if windows["correlated"]
                    else ""
                ),
            )
        )
    records = run.summary.get("records")
    if records:  # --records sample:F: the request figures are drawn from the sample
        rows.append(
            (
                "records",
                f"a uniform sample of {records['fraction']:.2%} ({records['rows_written']:,} "
                "requests): latency figures drawn from it; the summary's percentiles from a "
                f"{records['percentiles']}",
            )
        )
    cells = run.summary.get("cells")
    if cells:
        rows.append(("cells", f"{cells['count']} independent cells (replay --cells)"))
    return rows


def render(title: str, runs: list[Run], figures: list[Figure], summaries: dict[str, str]) -> str:
    """The page: `summaries` maps a run's label to its terminal summary text."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    for run in runs:
        parts.append(f"<h2>{escape(run.label)}</h2><table>")
        parts += [f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in describe(run)]
        parts.append("</table>")
    for figure in figures:
        parts.append(
            f'<figure><img src="{escape(figure.file)}" alt="{escape(figure.caption)}">'
            f"<figcaption>{escape(figure.caption)}</figcaption></figure>"
        )
    for run in runs:
        if isinstance(run, FrontierRun):
            parts.append(f"<h2>Frontier table: {escape(run.label)}</h2>")
            parts.append(_table(run))
        elif isinstance(run, ReplayRun) and run.label in summaries:
            parts.append(f"<h2>Summary: {escape(run.label)}</h2>")
            parts.append(f"<pre>{escape(summaries[run.label])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _table(run: FrontierRun) -> str:
    rows = ["<table><tr>" + "".join(f"<th>{escape(c)}</th>" for c in run.table.columns) + "</tr>"]
    for row in run.table.rows():
        rows.append("<tr>" + "".join(f"<td>{escape(_cell(v))}</td>" for v in row) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_page(path: Path, html: str) -> Path:
    path.write_text(html, encoding="utf-8")
    return path
