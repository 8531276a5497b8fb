"""`tokenfleet examples list / copy NAME [DEST]`: the commented scenario files, shipped in the
wheel, so that the README's `--scenario` lines work without a checkout."""

from __future__ import annotations

from pathlib import Path

import click

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


def _names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.toml"))


@click.group()
def examples() -> None:
    """Example scenarios: list them, or copy one to edit and pass as --scenario."""


@examples.command("list")
def list_examples() -> None:
    """Each example's name and first line."""
    for name in _names():
        first = (EXAMPLES_DIR / f"{name}.toml").read_text().splitlines()[0].lstrip("# ")
        click.echo(f"{name:<22} {first}")


@examples.command("copy")
@click.argument("name")
@click.argument("dest", required=False, type=click.Path())
def copy_example(name: str, dest: str | None) -> None:
    """Copy example NAME to DEST (default: NAME.toml here); an existing file is never replaced."""
    from tokenfleet.atomic import atomic_path
    from tokenfleet.errors import UserError

    name = name.removesuffix(".toml")
    if name not in _names():
        raise UserError(f"unknown example {name!r}; known: {', '.join(_names())}")
    target = Path(dest or f"{name}.toml")
    if target.is_dir():
        target = target / f"{name}.toml"
    if target.exists():
        raise UserError(f"{target}: already exists; remove it or choose another destination")
    with atomic_path(target) as tmp:
        tmp.write_bytes((EXAMPLES_DIR / f"{name}.toml").read_bytes())
    click.echo(f"wrote {target}: tokenfleet replay TRACE --scenario {target}")
