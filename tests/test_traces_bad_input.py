"""Every bad input: one line naming file, column, first bad row and expectation; exit code 2;
no output file and no temporary file left behind (also when interrupted).

The table of single mistakes is tests/bad_inputs/traces.py; here are the ones it cannot hold:
a bad row deep in a real trace, FIFOs and a piped /dev/stdin (in a child process with a
timeout), hard links, and interrupts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TRACES

import tokenfleet
from tokenfleet.cli.main import cli
from tokenfleet.traces.convert import sources

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
CHECKOUT = str(Path(tokenfleet.__file__).resolve().parents[1])


@pytest.fixture()
def dirs(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "in", tmp_path / "out"


def refused(runner, args: list[str], out_dir) -> str:
    """Run the CLI; check exit code 2, one `error:` line, nothing in out_dir; return the line."""
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, result.stderr
    assert list(out_dir.iterdir()) == []
    return line


def test_bad_row_deep_in_a_real_trace_leaves_no_partial_file(runner, dirs, monkeypatch):
    """Earlier chunks are already in the temporary file when the bad row is found."""
    monkeypatch.setattr(sources, "CSV_BLOCK_BYTES", 16_384)
    lines = (TRACES / "AzureLLMInferenceTrace_conv.csv").read_text().split("\n")
    stamp, _, rest = lines[14_999].partition(",")
    lines[14_999] = f"{stamp},-1,{rest.split(',')[1]}"  # line 15,000 of the file
    src = dirs[0] / "conv.csv"
    src.write_text("\n".join(lines))
    line = refused(runner, ["traces", "convert", str(src), str(dirs[1] / "x.parquet")], dirs[1])
    assert line.startswith(f"error: {src}: column 'ContextTokens', line 15000: expected")


FIFO_COMMANDS = {
    "convert": ["convert", "{fifo}", "{out}"],
    "validate": ["validate", "{fifo}"],
    "inspect": ["inspect", "--json", "{fifo}"],
    "synth --lengths-from": ["synth", "{out}", "--requests", "5", "--lengths-from", "{fifo}"],
}


def run_child(args: list[str], cwd, **kwargs) -> subprocess.CompletedProcess:
    """This checkout's CLI in a child process: a source that blocks on open cannot hang the
    suite, the timeout kills the child and fails the test."""
    path = os.pathsep.join([CHECKOUT, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "tokenfleet", "traces", *args]
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, **kwargs
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """Exit code 2, nothing on stdout, one `error:` line on stderr; returns the line."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, result.stderr
    return line


@pytest.mark.parametrize("command", list(FIFO_COMMANDS))
def test_a_fifo_without_a_writer_is_refused_not_waited_on(tmp_path, command):
    """Opening a FIFO no process writes blocks inside Arrow, where Ctrl-C cannot reach it."""
    os.mkfifo(tmp_path / "f.csv")
    args = [a.format(fifo="f.csv", out="o.parquet") for a in FIFO_COMMANDS[command]]
    line = one_error_line(run_child(args, tmp_path))
    assert line.startswith("error: f.csv: is a pipe; pipes and devices are not supported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]


def test_dev_stdin_from_a_pipe_is_refused(tmp_path):
    """Convert reads its source twice (the sniff, then the chunks): a pipe cannot be."""
    result = run_child(["convert", "/dev/stdin", "o.parquet"], tmp_path, input="a,b\n1,2\n")
    assert one_error_line(result).startswith("error: /dev/stdin: is a pipe; pipes and devices")
    assert list(tmp_path.iterdir()) == []


def test_convert_refuses_an_output_hard_linked_to_its_source(runner, dirs):
    """Not the same name, the same file: the final rename would replace the source's bytes."""
    src = dirs[0] / "a.csv"
    src.write_text(f"{AZURE_HEADER}\n2023-11-16 18:17:03.9799600,4808,10\n")
    os.link(src, dirs[0] / "a.parquet")
    before = src.read_bytes()
    line = refused(runner, ["traces", "convert", str(src), str(dirs[0] / "a.parquet")], dirs[1])
    assert line == (
        f"error: DST {dirs[0] / 'a.parquet'}: is the same file as SRC {src}; "
        "choose another output path"
    )
    assert src.read_bytes() == before
    assert sorted(p.name for p in dirs[0].iterdir()) == ["a.csv", "a.parquet"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_no_file(tmp_path, signum):
    """Ctrl-C or a kill once the temporary file exists: exit 130, no output, no temp file."""
    dst = tmp_path / "big.parquet"
    cmd = [sys.executable, "-m", "tokenfleet", "traces", "synth", str(dst), "--requests",
           "200000000", "--quiet"]  # fmt: skip
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any(p.name.startswith(".big.parquet.tmp") for p in tmp_path.iterdir()):
            assert child.poll() is None and time.monotonic() < deadline, "no temporary file"
            time.sleep(0.02)
        os.kill(child.pid, signum)
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130
    assert stderr.strip() == "error: interrupted; no output was written"
    assert list(tmp_path.iterdir()) == []
