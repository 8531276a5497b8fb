"""The bad-input corpus: one table of user mistakes per command family, run by
tests/test_bad_inputs.py.

Each case runs the CLI in a fresh copy of the kit (a small trace, two finished runs, a
scenario) with that directory as the working directory, and checks: the exit code, one
`error:` line on stderr holding `message`, nothing on stdout, and every file in the directory
byte-identical afterwards (no output, no temp file, no input replaced).

Arguments may name kit files by placeholder: {trace} (trace.parquet), {run} and {run2}
(finished replay directories), {scenario} (scenario.toml), {shared} (../shared/data).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    """One user mistake: the command line, what it must say, and files it needs first."""

    name: str
    args: tuple[str, ...]
    message: str
    code: int = 2
    files: dict[str, str | bytes] = field(default_factory=dict)
    stdin: str | None = None


def case(name: str, args: str | list[str], message: str, **kwargs) -> Case:
    """A case whose command line is a string split on spaces (or a list, for spaced values)."""
    return Case(name, tuple(args.split() if isinstance(args, str) else args), message, **kwargs)
