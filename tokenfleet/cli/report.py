"""`tokenfleet report RUN_DIR [RUN_DIR...]`: figures and a static page of finished runs."""

from __future__ import annotations

import click


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out",
    "out_dir",
    type=click.Path(),
    help="Report directory (default: report/ inside the first run directory).",
)
@click.option(
    "--caching-run",
    type=click.Path(),
    help="The second run's fleet routed for its cache (e.g. --balancer cache-aware): splits the "
    "gap figure's GPU-hours into caching and utilisation.",
)
def report(run_dirs, out_dir, caching_run) -> None:
    """Draw PNG figures and an index.html of finished replay or frontier directories.

    One replay: latency CDFs, the run over time, money. A frontier: cost and throughput
    against speed per user. Several replays: also side by side, and the second's cost gap to
    the first as factors (ownership, utilisation, caching).
    """
    from pathlib import Path

    write(list(run_dirs), out_dir or str(Path(run_dirs[0]) / "report"), caching_run)


def write(
    run_dirs: list[str], out_dir: str, caching_run: str | None = None, err: bool = False
) -> None:
    """Write the report and say where (shared by `replay --report` and `frontier --report`;
    `err`: say it on stderr, so that stdout stays the JSON a `--json` run prints)."""
    from tokenfleet.cli.format import format_summary
    from tokenfleet.report.build import write_report

    result = write_report(run_dirs, out_dir, caching_run=caching_run, summary_text=format_summary)
    names = ", ".join(p.name for p in result.figures)
    click.echo(f"wrote {result.page} and {len(result.figures)} figures ({names})", err=err)
