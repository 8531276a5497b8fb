"""`tokenfleet report`: which figures a set of runs gets, drawn into a folder with its page.

One replay: latency, over time, money. A frontier: its cost-versus-speed figure. Several runs:
each replay's own figures, then the runs on the frontier axes and their latencies on the same
axes, and the second run's cost gap to the first (the model lab against the provider). The
folder is written whole or not at all (atomic_dir)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tokenfleet.atomic import atomic_dir
from tokenfleet.errors import UserError
from tokenfleet.report.inputs import FrontierRun, ReplayRun, load_run
from tokenfleet.report.page import Figure, render, write_page
from tokenfleet.report.replay_figures import latency_figure, money_figure, timeline_figure
from tokenfleet.report.study_figures import (
    frontier_figure,
    frontier_points,
    gap_figure,
    replay_point,
    runs_latency_figure,
)
from tokenfleet.study.compare import run_labels
from tokenfleet.study.frontier import pareto_mask

PAGE_FILE = "index.html"


@dataclass
class Report:
    """What was written: the page, each figure, and how long each took to draw."""

    page: Path
    figures: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def write_report(
    run_dirs: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    caching_run: str | os.PathLike[str] | None = None,
    summary_text: Callable[[dict], str] | None = None,
) -> Report:
    """Draw the runs' figures and page into `out_dir` (replaced whole if it holds an earlier
    report). `caching_run` is the second run's fleet routed for its cache: it splits the gap
    figure's GPU-hours into caching and utilisation. `summary_text` renders a summary as the
    terminal shows it (the CLI's formatter; the report package does not import the CLI)."""
    if not run_dirs:
        raise UserError("report: give at least one run directory")
    paths = [*run_dirs, *([caching_run] if caching_run else [])]
    labels = run_labels(paths)
    runs = [load_run(p, label) for p, label in zip(paths, labels, strict=True)]
    cached = runs.pop() if caching_run else None
    if cached is not None and (len(runs) < 2 or not isinstance(cached, ReplayRun)):
        raise UserError(
            "report: --caching-run needs two replay directories before it (the base fleet "
            "and the fleet it is the cache-routed version of) and must be a replay itself"
        )
    replays = [r for r in runs if isinstance(r, ReplayRun)]
    frontiers = [r for r in runs if isinstance(r, FrontierRun)]
    title = "tokenfleet report: " + ", ".join(r.label for r in runs)
    report_inputs = tuple(str(p) for p in paths)
    with atomic_dir(out_dir, PAGE_FILE, inputs=report_inputs) as tmp:
        tmp = Path(tmp)
        report = Report(Path(out_dir) / PAGE_FILE)
        figures: list[Figure] = []

        def draw(name: str, caption: str, make: Callable[[Path], Path]) -> None:
            start = time.perf_counter()
            make(tmp / name)
            report.seconds[name] = time.perf_counter() - start
            report.figures.append(Path(out_dir) / name)
            figures.append(Figure(name, caption))

        for i, run in enumerate(replays):
            tag = "" if len(replays) == 1 else f"-{i + 1}"
            draw(
                f"latency{tag}.png",
                f"{run.label}: TTFT, TPOT and E2E CDFs per tier (dashed: SLOs)",
                lambda p, r=run: latency_figure(r, p),
            )
            draw(
                f"timeline{tag}.png",
                f"{run.label}: load, batch, KV use, replicas, tokens and money over time",
                lambda p, r=run: timeline_figure(r, p),
            )
            draw(
                f"money{tag}.png",
                f"{run.label}: cost by pool and component, revenue and margin, $/Mtoken",
                lambda p, r=run: money_figure(r, p),
            )
        for i, run in enumerate(frontiers):
            tag = "" if len(frontiers) == 1 else f"-{i + 1}"
            draw(
                f"frontier{tag}.png",
                f"{run.label}: throughput per GPU and cost against speed per user "
                "(stars: Pareto-optimal)",
                lambda p, r=run: frontier_figure(
                    frontier_points(r), f"Frontier: {r.label} (varied: {', '.join(r.varied)})", p
                ),
            )
        if len(replays) > 1:
            points = [replay_point(r) for r in replays]
            flags = pareto_mask([p.usd_per_mtoken for p in points], [p.per_user for p in points])
            points = [replace(p, pareto=f) for p, f in zip(points, flags, strict=True)]
            draw(
                "runs.png",
                "The runs on the frontier axes: throughput per GPU and cost against speed per user",
                lambda p: frontier_figure(points, "Runs side by side", p),
            )
            draw(
                "runs-latency.png",
                "The runs' TTFT, TPOT and E2E CDFs on the same axes",
                lambda p: runs_latency_figure(replays, p),
            )
            traces = {r.summary["run"].get("trace") for r in replays[:2]}
            draw(
                "gap.png",
                f"{replays[1].label} against {replays[0].label}: cost per Mtoken and "
                "utilisation over time, and the cost gap as factors"
                + ("" if len(traces) == 1 else " (different traces: the gap mixes traffic in)"),
                lambda p: gap_figure(replays, cached, p),
            )
        summaries = {r.label: summary_text(r.summary) for r in replays} if summary_text else {}
        write_page(tmp / PAGE_FILE, render(title, runs, figures, summaries))
    return report
