"""`tokenfleet examples list / copy NAME [DEST]`: the commented scenario files, shipped in the
wheel, so that the README's `--scenario` lines work without a checkout."""

from __future__ import annotations

import contextlib
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
    """Each example's name and the first sentence of its opening comment."""
    for name in _names():
        click.echo(f"{name:<22} {_first_sentence(EXAMPLES_DIR / f'{name}.toml')}")


def _first_sentence(path: Path) -> str:
    """The opening comment up to its first full stop (it may span lines)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    text = " ".join(" ".join(lines).split())
    return text.split(". ")[0].rstrip(".") + "."


@examples.command("copy")
@click.argument("name")
@click.argument("dest", required=False, type=click.Path())
def copy_example(name: str, dest: str | None) -> None:
    """Copy example NAME to DEST (default: NAME.toml here; a missing folder is created); an
    existing file is never replaced."""
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
    if target.suffix != ".toml":
        raise UserError(f"{target}: a scenario is a .toml file; give DEST that suffix")
    created = [] if target.parent.exists() else [target.parent]
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"{target}: cannot create {target.parent} ({err.strerror}); choose another path"
            ) from None
        with atomic_path(target) as tmp:
            tmp.write_bytes((EXAMPLES_DIR / f"{name}.toml").read_bytes())
    except BaseException:
        for folder in created:  # leave nothing behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    click.echo(f"wrote {target}: tokenfleet replay TRACE --scenario {target}")
