"""Runs the bad-input corpus of tests/bad_inputs/: every user mistake gets one `error:` line,
its exit code, and leaves every file as it was."""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import shutil
from pathlib import Path

import bad_inputs
import pytest
from conftest import SHARED_DATA

from tokenfleet.cli.main import cli

CASES = [
    case
    for module in pkgutil.iter_modules(bad_inputs.__path__)
    for case in importlib.import_module(f"bad_inputs.{module.name}").CASES
]


def test_the_corpus_is_large_and_its_names_unique():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), "two cases share a name"
    assert len(CASES) >= 150


@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> Path:
    """A small trace, two finished replays of it and a scenario: what bad inputs are made of."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("kit")
    runner = CliRunner()
    steps = [
        ["traces", "synth", str(root / "trace.parquet"), "--requests", "200", "--rate", "20"]
        + ["--tiers", "fast=0.3,standard=0.7"],
        ["replay", str(root / "trace.parquet"), "--replicas", "1", "--out", str(root / "run")],
        ["replay", str(root / "trace.parquet"), "--replicas", "2", "--out", str(root / "run2")],
    ]
    for args in steps:
        result = runner.invoke(cli, [*args, "--quiet"] if args[0] != "traces" else args)
        assert result.exit_code == 0, result.output
    shutil.copy(
        Path(__file__).parents[1] / "examples" / "replay-default.toml", root / "scenario.toml"
    )
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root, with the sha256 of each file's bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case, kit, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(kit, work)
    for name, content in case.files.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    monkeypatch.chdir(work)
    before = snapshot(work)
    places = {"trace": "trace.parquet", "run": "run", "run2": "run2"}
    places |= {"scenario": "scenario.toml", "shared": str(SHARED_DATA)}
    args = [a.format(**places) for a in case.args]

    from click.testing import CliRunner

    result = CliRunner().invoke(cli, args, input=case.stdin, prog_name="tokenfleet")

    assert result.exit_code == case.code, (result.output, result.exception)
    assert result.stdout == ""
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, result.stderr
    assert case.message in line
    assert snapshot(work) == before
