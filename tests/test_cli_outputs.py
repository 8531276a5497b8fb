"""The user's files (issue 11, items 9-13): outputs never replace inputs or foreign folders, a
replaced earlier output is announced, a full disk or a hang-up leaves nothing behind, and the
examples ship with the package."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenfleet.atomic import atomic_path, refuse_clobber
from tokenfleet.cli.main import cli
from tokenfleet.errors import UserError


@pytest.fixture()
def trace(tmp_path, runner) -> Path:
    path = tmp_path / "t.parquet"
    result = runner.invoke(cli, ["traces", "synth", str(path), "--requests", "300", "--rate", "30"])
    assert result.exit_code == 0, result.output
    return path


def test_the_shared_guard_names_what_would_be_replaced(tmp_path):
    source = tmp_path / "m.toml"
    source.write_text("x")
    (tmp_path / "run").mkdir()
    os.link(source, tmp_path / "hard.toml")
    cases = [
        ({"--json": tmp_path / "m.toml"}, {"--model": source}, {}, "same file as --model"),
        ({"--json": tmp_path / "hard.toml"}, {"--model": source}, {}, "same file as --model"),
        ({"--a": tmp_path / "o", "--b": tmp_path / "./o"}, {}, {}, "--b"),
        ({"--parquet": tmp_path / "run/x"}, {}, {"RUN": tmp_path / "run"}, "lies inside RUN"),
    ]
    for outputs, inputs, dirs, needle in cases:
        with pytest.raises(UserError, match=needle):
            refuse_clobber(outputs, inputs, dirs)
    # A built-in name is not a file, and stdout is no path: neither is refused.
    refuse_clobber({"--json": "-"}, {"--model": "llama-3.1-8b"})
    refuse_clobber({"--json": tmp_path / "new.json"}, {"--model": source})


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.parquet"
    with (
        pytest.raises(UserError, match="No space left on device while writing"),
        atomic_path(target) as tmp,
    ):
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_a_replay_exits_2(runner, trace, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("tokenfleet.replay.run.price_requests", full)
    out = tmp_path / "out"
    result = runner.invoke(cli, ["replay", str(trace), "--out", str(out), "-q"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {out}: No space left on device while writing; free some space or choose "
        "another path"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_a_second_replay_announces_that_it_replaces_the_first(runner, trace, tmp_path):
    out = tmp_path / "out"
    args = ["replay", str(trace), "--out", str(out), "--replicas", "1", "-q"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0 and "warning" not in first.stderr
    second = runner.invoke(cli, args)
    assert second.exit_code == 0
    assert f"warning: replaced the earlier output in {out}/ (it held summary.json)" in (
        second.stderr
    )
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    third = runner.invoke(cli, ["replay", str(trace), "--out", str(foreign), "-q"])
    assert third.exit_code == 2 and "holds no earlier summary.json" in third.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_replay_never_replaces_the_folder_of_its_scenario(runner, trace, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(cli, ["replay", str(trace), "--out", str(out), "-q"]).exit_code == 0
    again = ["replay", str(trace), "--out", str(out), "--scenario", str(out / "scenario.toml")]
    result = runner.invoke(cli, again)
    assert result.exit_code == 2 and "replacing it would delete" in result.stderr
    assert (out / "scenario.toml").exists()


def test_steptime_without_a_price_writes_a_typed_null_column(runner, tmp_path):
    out = tmp_path / "st.parquet"
    result = runner.invoke(
        cli, ["steptime", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--parquet", str(out)]
    )
    assert result.exit_code == 0, result.output
    field = pq.read_schema(out).field("usd_per_mtoken")
    assert field.type == pa.float64()
    assert pq.read_table(out).column("usd_per_mtoken").null_count == pq.read_metadata(out).num_rows


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_hang_up_during_a_replay_leaves_nothing(tmp_path, signum, runner):
    trace = tmp_path / "t.parquet"
    big = ["traces", "synth", str(trace), "--requests", "300000", "--rate", "400"]
    assert runner.invoke(cli, big).exit_code == 0
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenfleet", "replay", str(trace), "--out", str(out), "-q"],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the run has started writing
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "error: interrupted; no output was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_the_examples_ship_with_the_package_and_copy_out(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listed = runner.invoke(cli, ["examples", "list"])
    assert listed.exit_code == 0 and "model-lab" in listed.output
    import tokenfleet

    shipped = Path(tokenfleet.__file__).parent / "examples" / "model-lab.toml"
    assert runner.invoke(cli, ["examples", "copy", "model-lab"]).exit_code == 0
    assert (tmp_path / "model-lab.toml").read_bytes() == shipped.read_bytes()
    again = runner.invoke(cli, ["examples", "copy", "model-lab"])
    assert again.exit_code == 2 and "already exists" in again.stderr
    unknown = runner.invoke(cli, ["examples", "copy", "nope"])
    assert unknown.exit_code == 2 and "unknown example 'nope'; known: " in unknown.stderr
    # The README's wheel line: into examples/, created for it.
    nested = runner.invoke(
        cli, ["examples", "copy", "replay-static", "examples/replay-static.toml"]
    )
    assert nested.exit_code == 0, nested.output
    assert (tmp_path / "examples" / "replay-static.toml").is_file()
    bad = runner.invoke(cli, ["examples", "copy", "replay-static", "/proc/no/x.toml"])
    assert bad.exit_code == 2 and "cannot create /proc/no" in bad.stderr
    assert "A model lab serving its own model on GPUs it owns.\n" in listed.output


def test_a_symlinked_output_directory_is_refused(runner, trace, tmp_path):
    real = tmp_path / "real"
    assert runner.invoke(cli, ["replay", str(trace), "--out", str(real), "-q"]).exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    result = runner.invoke(cli, ["replay", str(trace), "--out", str(link), "-q"])
    assert result.exit_code == 2 and "is a symbolic link" in result.stderr
    assert link.is_symlink() and (real / "summary.json").exists()
