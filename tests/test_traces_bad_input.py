"""Every bad input: one line naming file, column, first bad row and expectation; exit code 2;
no output file and no temporary file left behind (also when interrupted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TRACES

from tokenfleet.cli.main import cli
from tokenfleet.traces.convert import sources

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


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


def azure_csv(path, rows: list[str], final_newline: bool = False):
    path.write_text("\n".join([AZURE_HEADER, *rows]) + ("\n" if final_newline else ""))
    return path


GOOD_ROW = "2023-11-16 18:17:03.9799600,4808,10"

CONVERT_CASES = {
    "negative tokens": (
        [GOOD_ROW, "2023-11-16 18:17:04.0319600,-5,8"],
        "column 'ContextTokens', line 3: expected a whole number of tokens >= 1",
        "got -5",
    ),
    "NaN tokens": (
        [GOOD_ROW, "2023-11-16 18:17:04.0319600,100,nan"],
        "column 'GeneratedTokens', line 3: expected a whole number of tokens",
        "got nan",
    ),
    "text tokens": (
        [GOOD_ROW, GOOD_ROW, "2023-11-16 18:17:04.0319600,abc,8"],
        "column 'ContextTokens', line 4: expected a whole number of tokens",
        "got 'abc'",
    ),
    "empty token": (
        [GOOD_ROW, "2023-11-16 18:17:04.0319600,,8"],
        "column 'ContextTokens', line 3: expected a whole number of tokens",
        "got ''",
    ),
    "bad timestamp": (
        [GOOD_ROW, "16/11/2023 18:17,5,8"],
        "column 'TIMESTAMP', line 3: expected a wall-clock timestamp",
        "got '16/11/2023 18:17'",
    ),
    "decreasing arrivals": (
        [GOOD_ROW, "2023-11-16 18:17:02.0000000,5,8"],
        "column 'TIMESTAMP', line 3: expected arrivals that never decrease",
        "earlier than the previous row's 0.0 s",
    ),
    "earliest of several problems: a bad value": (
        [GOOD_ROW, "2023-11-16 18:17:04.1,-5,8", "2023-11-16 18:17:04.2,abc,8", "soon,5,8"],
        "column 'ContextTokens', line 3: expected a whole number of tokens >= 1",
        "got -5",
    ),
    "earliest of several problems: an unreadable value": (
        [GOOD_ROW, "2023-11-16 18:17:04.1,5,x", "2023-11-16 18:17:04.2,-5,8", "soon,5,8"],
        "column 'GeneratedTokens', line 3: expected a whole number of tokens",
        "got 'x'",
    ),
}


@pytest.mark.parametrize("case", list(CONVERT_CASES))
def test_convert_refuses_bad_values(runner, dirs, case):
    rows, where, got = CONVERT_CASES[case]
    src = azure_csv(dirs[0] / "bad.csv", rows)
    line = refused(runner, ["traces", "convert", str(src), str(dirs[1] / "x.parquet")], dirs[1])
    assert line.startswith(f"error: {src}: {where}")
    assert got in line


def test_nan_arrival_in_generic_csv(runner, dirs):
    src = dirs[0] / "g.csv"
    src.write_text("arrival_s,prompt_tokens,output_tokens\n0,1,1\nnan,2,2\n")
    line = refused(runner, ["traces", "convert", str(src), str(dirs[1] / "x.parquet")], dirs[1])
    assert line == f"error: {src}: column 'arrival_s', line 3: expected finite seconds, got nan"


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


def test_jsonl_wrong_type_and_broken_line(runner, dirs):
    good = '{"timestamp": 0, "input_length": 5, "output_length": 6, "hash_ids": [1]}'
    src = dirs[0] / "m.jsonl"
    src.write_text(good + '\n{"timestamp": 9, "input_length": "5", "output_length": 6}\n')
    line = refused(runner, ["traces", "convert", str(src), str(dirs[1] / "x.parquet")], dirs[1])
    assert line == f"error: {src}: column 'input_length', line 2: expected a number, got a string"
    src.write_text(good + "\n" + good + '\n{"timestamp": 9, "input_length": 5\n')
    line = refused(runner, ["traces", "convert", str(src), str(dirs[1] / "x.parquet")], dirs[1])
    assert line.startswith(f"error: {src}: line 3: JSON parse error")


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "no such file"),
        (b"", [], "file is empty; expected a CSV header or JSON lines"),
        (AZURE_HEADER.encode(), [], "has a header but no rows; expected at least one request"),
        (bytes(range(256)) * 4, [], "not a CSV or JSON-lines file (it holds binary data)"),
        (b"PAR1\x00\x00", [], "is a Parquet file; convert reads CSV or JSON lines"),
        (b'[{"a": 1}]', [], "is a JSON array; expected JSON lines"),
        (
            b"TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,5\n",
            ["--format", "azure"],
            "column 'GeneratedTokens' is missing; format azure needs it for output_tokens",
        ),
        (
            b"ts,in,out\n1,2,3\n",
            [],
            "column 'arrival_s' is missing; format csv needs it for arrival_s (found: ts, in, out;"
            " map another with --columns arrival_s=NAME)",
        ),
        (
            f"{AZURE_HEADER}\n{GOOD_ROW}".encode(),
            ["--format", "parquet"],
            "unknown --format 'parquet'; expected one of auto, azure, burstgpt, mooncake, vidur",
        ),
        (
            f"{AZURE_HEADER}\n{GOOD_ROW}".encode(),
            ["--format", "mooncake"],
            "--format mooncake reads JSON lines, but this is csv",
        ),
        (
            f"{AZURE_HEADER}\n{GOOD_ROW}".encode(),
            ["--start-s", "100"],
            "no requests in the window [100.0, end) s; the trace's last request is at 0.000 s",
        ),
        (f"{AZURE_HEADER}\n{GOOD_ROW}".encode(), ["--time-scale", "0"], "--time-scale 0.0"),
    ],
)
def test_convert_refuses_bad_files_and_flags(runner, dirs, content, args, message):
    src = dirs[0] / "src.csv"
    if content is not None:
        src.write_bytes(content)
    line = refused(
        runner, ["traces", "convert", str(src), str(dirs[1] / "x.parquet"), *args], dirs[1]
    )
    assert message in line
    if not message.startswith("--"):
        assert line.startswith(f"error: {src}: ")


def parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


PARQUET_CASES = {
    "missing column": (
        {"arrival_s": [0.0], "prompt_tokens": [1]},
        "column 'output_tokens' is missing; a trace needs arrival_s, prompt_tokens, output_tokens",
    ),
    "float tokens": (
        {"arrival_s": [0.0], "prompt_tokens": [1.5], "output_tokens": [1]},
        "column 'prompt_tokens' has type double; expected integer token counts",
    ),
    "text arrivals": (
        {"arrival_s": ["0"], "prompt_tokens": [1], "output_tokens": [1]},
        "column 'arrival_s' has type string; expected float64 seconds",
    ),
    "negative tokens": (
        {"arrival_s": [0.0, 1.0, 2.0], "prompt_tokens": [1, 2, 3], "output_tokens": [1, -2, 3]},
        "column 'output_tokens', row 1: expected a whole number of tokens >= 0, got -2",
    ),
    "null tokens": (
        {"arrival_s": [0.0, 1.0], "prompt_tokens": [1, None], "output_tokens": [1, 1]},
        "column 'prompt_tokens', row 1: expected a value, got an empty value",
    ),
    "NaN arrival": (
        {"arrival_s": [0.0, np.nan], "prompt_tokens": [1, 2], "output_tokens": [1, 1]},
        "column 'arrival_s', row 1: expected finite seconds, got nan",
    ),
    "decreasing arrivals": (
        {"arrival_s": [0.0, 2.0, 1.0], "prompt_tokens": [1, 2, 3], "output_tokens": [1, 1, 1]},
        "column 'arrival_s', row 2: expected arrivals that never decrease",
    ),
    "tokens beyond int32": (
        {"arrival_s": [0.0, 1.0], "prompt_tokens": [1, 2**40], "output_tokens": [1, 1]},
        "column 'prompt_tokens', row 1: expected a whole number of tokens >= 1 and <= 2147483647",
    ),
    "no rows": (
        {"arrival_s": pa.array([], pa.float64()), "prompt_tokens": pa.array([], pa.int32()),
         "output_tokens": pa.array([], pa.int32())},
        "the trace has no rows; expected at least one request",
    ),
}  # fmt: skip


@pytest.mark.parametrize("command", ["validate", "inspect"])
@pytest.mark.parametrize("case", list(PARQUET_CASES))
def test_validate_and_inspect_refuse_bad_traces(runner, dirs, command, case):
    columns, message = PARQUET_CASES[case]
    path = parquet(dirs[0] / "t.parquet", **columns)
    line = refused(runner, ["traces", command, str(path)], dirs[1])
    assert line.startswith(f"error: {path}: {message}")


@pytest.mark.parametrize("command", ["validate", "inspect"])
@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "t.parquet", "no such file"),
        (b"", "t.parquet", "file is empty; expected a Parquet trace"),
        (b"a,b\n1,2\n", "t.csv", "not a Parquet file; convert it first with `tokenfleet traces"),
        (b"PAR1" + b"\x00" * 40, "t.parquet", "not a Parquet file; expected a trace written"),
    ],
)
def test_validate_and_inspect_refuse_non_traces(runner, dirs, command, content, name, message):
    path = dirs[0] / name
    if content is not None:
        path.write_bytes(content)
    line = refused(runner, ["traces", command, str(path)], dirs[1])
    assert line.startswith(f"error: {path}: {message}")


def test_synth_refuses_a_bad_source_and_a_missing_directory(runner, dirs):
    bad = parquet(dirs[0] / "b.parquet", arrival_s=[0.0], prompt_tokens=[0], output_tokens=[1])
    args = ["traces", "synth", str(dirs[1] / "x.parquet"), "--requests", "10"]
    line = refused(runner, [*args, "--lengths-from", str(bad)], dirs[1])
    assert line.startswith(f"error: {bad}: column 'prompt_tokens', row 0: expected")
    nowhere = str(dirs[1] / "no" / "x.parquet")
    line = refused(runner, ["traces", "synth", nowhere, "--requests", "1"], dirs[1])
    assert "directory" in line and "does not exist" in line
    line = refused(runner, [*args, "--tenants", "a=0.5,b"], dirs[1])
    assert line == "error: --tenants: 'b' is not NAME=SHARE with a share > 0 (a=0.7,b=0.3)"


GENERIC_HEADER = "arrival_s,prompt_tokens,output_tokens"


@pytest.mark.parametrize(
    ("lines", "args", "message"),
    [
        # One typo must not make numeric arrivals look like bad wall-clock timestamps.
        (["0.5,10,1", "1.0,10,1", "abc,10,1"], [], "column 'arrival_s', line 4: expected a number"),
        (["0.5,1e20,1"], [], "line 2: expected a whole number of tokens (at most 2147483647)"),
        (
            ["0.5,10,1"],
            ["--columns", "arrival_s=arrival_s,arrival_s=prompt_tokens"],
            "--columns: 'arrival_s' is mapped twice",
        ),
    ],
)
def test_convert_refuses_generic_csv_mistakes(runner, dirs, lines, args, message):
    src = dirs[0] / "log.csv"
    src.write_text("\n".join([GENERIC_HEADER, *lines]) + "\n")
    line = refused(runner, ["traces", "convert", str(src), str(dirs[1] / "x.parquet"), *args],
                   dirs[1])  # fmt: skip
    assert message in line


def test_convert_refuses_a_json_object_where_text_belongs(runner, dirs):
    src = dirs[0] / "log.jsonl"
    src.write_text('{"arrival_s": 1, "prompt_tokens": 5, "output_tokens": 1, "tenant": {"a": 1}}\n')
    line = refused(runner, ["traces", "convert", str(src), str(dirs[1] / "x.parquet")], dirs[1])
    assert "column 'tenant', line 1: expected a number or text, got values of type struct" in line


def test_convert_never_overwrites_its_source(runner, dirs):
    src = azure_csv(dirs[0] / "a.csv", [GOOD_ROW])
    before = src.read_bytes()
    line = refused(runner, ["traces", "convert", str(src), str(src)], dirs[1])
    assert line == f"error: {src}: is the source file; give another name for the Parquet trace"
    assert src.read_bytes() == before


def test_synth_refuses_token_counts_beyond_int32_and_repeated_names(runner, dirs):
    args = ["traces", "synth", str(dirs[1] / "x.parquet"), "--requests", "10"]
    line = refused(runner, [*args, "--prompt", "fixed:3000000000"], dirs[1])
    assert "token counts must be <= 2147483647" in line
    line = refused(runner, [*args, "--tiers", "fast=1,fast=2"], dirs[1])
    assert line == "error: --tiers: 'fast' is given twice; give each name once"


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
