"""Options and helpers shared by several commands."""

from __future__ import annotations

import sys

import click


def progress_enabled(quiet: bool) -> bool:
    """Progress bars show on a terminal only, never when piped or with --quiet."""
    return not quiet and sys.stderr.isatty()


quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bar (also off when stderr is not a terminal)."
)

scenario_option = click.option(
    "--scenario", "scenario_path", type=click.Path(), help="Scenario TOML file."
)


def out_option(default: str, help: str):
    """`--out DIR` (the `out_dir` parameter) with this command's default directory."""
    return click.option(
        "--out", "out_dir", type=click.Path(), default=default, show_default=True, help=help
    )
