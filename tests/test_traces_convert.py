"""Converters on the real traces in ../shared/data, and on small files in the other formats."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TRACES

from tokenfleet.cli.main import cli
from tokenfleet.traces.convert import convert_trace, sources
from tokenfleet.traces.inspect import inspect_trace
from tokenfleet.traces.reader import trace_metadata

AZURE_CODE = TRACES / "AzureLLMInferenceTrace_code.csv"
AZURE_CONV = TRACES / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE = TRACES / "mooncake_synthetic_trace.jsonl"

# The table in ../shared/data/README.md: rows, span s, mean rate, prompt mean/median/max,
# output mean/median/max.
README_FACTS = {
    AZURE_CODE: (8_819, 3_436, 2.57, (2_048, 1_469, 7_437), (27.9, 13, 1_899)),
    AZURE_CONV: (19_366, 3_502, 5.53, (1_155, 1_020, 14_050), (211.1, 129, 1_000)),
    MOONCAKE: (3_993, 1_022, 3.91, (15_325, 11_587, 191_378), (149, 69, 893)),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("converted")
    return {src: (convert_trace(src, out / f"{src.stem}.parquet"), out / f"{src.stem}.parquet")
            for src in README_FACTS}  # fmt: skip


@pytest.mark.parametrize("src", list(README_FACTS), ids=lambda p: p.stem)
def test_real_traces_match_the_readme_figures(converted, src):
    rows, span_s, rate, prompt, output = README_FACTS[src]
    result, path = converted[src]
    assert result["rows_read"] == result["rows_written"] == rows
    summary = inspect_trace(path)
    assert summary["rows"] == rows
    assert summary["first_arrival_s"] == 0.0
    assert summary["span_s"] == pytest.approx(span_s, abs=0.5)
    assert summary["mean_rate_rps"] == pytest.approx(rate, abs=0.005)
    for got, (mean, median, maximum) in ((summary["prompt_tokens"], prompt),
                                         (summary["output_tokens"], output)):  # fmt: skip
        assert got["mean"] == pytest.approx(mean, abs=0.5)
        assert got["p50"] == median
        assert got["max"] == maximum


def test_formats_are_detected(converted):
    assert converted[AZURE_CODE][0]["format"] == "azure"
    assert converted[MOONCAKE][0]["format"] == "mooncake"


def test_azure_arrivals_keep_the_100ns_digits(converted):
    """Every arrival equals the wall-clock difference computed independently, to 100 ns."""
    with open(AZURE_CODE, newline="") as f:
        stamps = [dt.datetime.fromisoformat(row["TIMESTAMP"][:26]) for row in csv.DictReader(f)]
        f.seek(0)
        digits = [row["TIMESTAMP"][26:] for row in csv.DictReader(f)]
    expected = np.array(
        [(s - stamps[0]).total_seconds() + int(d or 0) * 1e-7 - int(digits[0] or 0) * 1e-7
         for s, d in zip(stamps, digits, strict=True)]
    )  # fmt: skip
    got = pq.read_table(converted[AZURE_CODE][1]).column("arrival_s").to_numpy()
    assert np.abs(got - expected).max() < 1e-9
    assert got[1] == pytest.approx(0.052, abs=1e-9)  # 18:17:04.0319600 - 18:17:03.9799600


def test_mooncake_hashes_become_prefix_hashes_with_block_size(converted):
    path = converted[MOONCAKE][1]
    assert trace_metadata(path)["prefix_block_size"] == 512
    with open(MOONCAKE) as f:
        records = [json.loads(line) for line in f]
    table = pq.read_table(path)
    assert table.column("prefix_hashes").to_pylist() == [r["hash_ids"] for r in records]
    seen, repeats, total = set(), 0, 0
    for record in records:
        for h in record["hash_ids"]:
            repeats += h in seen
            total += 1
            seen.add(h)
    summary = inspect_trace(path)
    assert summary["prefix_blocks"] == total
    assert summary["prefix_reuse_share"] == pytest.approx(repeats / total)
    assert summary["prefix_reuse_share"] == pytest.approx(0.64, abs=0.005)  # README: about 64%


def test_small_chunks_give_the_same_trace(tmp_path, monkeypatch, converted):
    """Chunk boundaries must not show: many tiny chunks give identical output."""
    monkeypatch.setattr(sources, "CSV_BLOCK_BYTES", 4_096)
    monkeypatch.setattr(sources, "JSON_CHUNK_BYTES", 4_096)
    for src in (AZURE_CONV, MOONCAKE):
        convert_trace(src, tmp_path / "small.parquet")
        assert pq.read_table(tmp_path / "small.parquet").equals(pq.read_table(converted[src][1]))


def test_window_scale_shift_and_limit(tmp_path, converted, monkeypatch):
    monkeypatch.setattr(sources, "CSV_BLOCK_BYTES", 16_384)
    full = pq.read_table(converted[AZURE_CONV][1]).column("arrival_s").to_numpy()
    result = convert_trace(
        AZURE_CONV, tmp_path / "w.parquet", start_s=600, end_s=1200, time_scale=0.5, shift_s=10
    )
    inside = full[(full >= 600) & (full < 1200)]
    got = pq.read_table(tmp_path / "w.parquet").column("arrival_s").to_numpy()
    assert result["rows_written"] == len(inside) == len(got)
    assert np.allclose(got, (inside - 600) * 0.5 + 10)
    assert result["rows_read"] < 0.5 * len(full)  # stopped reading soon after the window
    convert_trace(AZURE_CONV, tmp_path / "n.parquet", limit=100, start_s=60)
    first = pq.read_table(tmp_path / "n.parquet").column("arrival_s").to_numpy()
    assert np.allclose(first, full[full >= 60][:100] - 60)


def write_lines(path, lines, final_newline=True):
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""))
    return path


def test_azure_2024_mixed_timestamp_formats(tmp_path):
    src = write_lines(
        tmp_path / "azure2024.csv",
        [
            "TIMESTAMP,ContextTokens,GeneratedTokens",
            "2024-05-10 00:00:00.0099300+00:00,100,10",
            "2024-05-10 00:00:01+00:00,200,20",
            "2024-05-10 00:00:01.5,300,30",
            "2024-05-10T00:00:02Z,400,40",
            "2024-05-10 02:00:03.0000001+02:00,500,50",
        ],
        final_newline=False,
    )
    convert_trace(src, tmp_path / "out.parquet")
    arrival = pq.read_table(tmp_path / "out.parquet").column("arrival_s").to_pylist()
    assert arrival == pytest.approx([0.0, 0.99007, 1.49007, 1.99007, 2.9900701], abs=1e-12)


def test_burstgpt_drops_failed_rows_and_keeps_model_and_log_type(tmp_path, runner):
    src = write_lines(
        tmp_path / "burst.csv",
        [
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
            "5,ChatGPT,472,18,490,Conversation log",
            "45,ChatGPT,1087,0,1087,Conversation log",
            "118,GPT-4,417,276,693,API log",
            "120,ChatGPT,0,0,0,API log",
        ],
    )
    result = runner.invoke(cli, ["traces", "convert", str(src), str(tmp_path / "b.parquet")])
    assert result.exit_code == 0, result.output
    assert "dropped 2 failed rows" in result.output
    table = pq.read_table(tmp_path / "b.parquet").to_pydict()
    assert table == {
        "arrival_s": [0.0, 113.0],
        "prompt_tokens": [472, 417],
        "output_tokens": [18, 276],
        "model": ["ChatGPT", "GPT-4"],
        "log_type": ["Conversation log", "API log"],
    }
    # --keep-failed keeps the zero-output row but still refuses a zero-token prompt.
    kept = runner.invoke(
        cli, ["traces", "convert", str(src), str(tmp_path / "k.parquet"), "--keep-failed"]
    )
    assert kept.exit_code == 2
    assert "column 'Request tokens', line 5: expected a whole number of tokens >= 1" in kept.stderr


def test_vidur_and_gzip(tmp_path):
    src = tmp_path / "vidur.csv.gz"
    with gzip.open(src, "wt") as f:
        f.write("arrived_at,num_prefill_tokens,num_decode_tokens\n1.5,10,2\n2.0,20,0\n")
    result = convert_trace(src, tmp_path / "v.parquet")
    assert result["format"] == "vidur"
    assert pq.read_table(tmp_path / "v.parquet").to_pydict() == {
        "arrival_s": [0.0, 0.5], "prompt_tokens": [10, 20], "output_tokens": [2, 0]
    }  # fmt: skip


def test_generic_csv_and_jsonl_with_column_mapping(tmp_path, runner):
    src = write_lines(tmp_path / "log.csv", ["ts_ms,in,out,key", "1000,5,6,acme", "1500,7,8,beta"])
    args = ["--columns", "arrival_s=ts_ms,prompt_tokens=in,output_tokens=out,tenant=key",
            "--time-unit", "ms"]  # fmt: skip
    result = runner.invoke(cli, ["traces", "convert", str(src), str(tmp_path / "c.parquet"), *args])
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "c.parquet").to_pydict() == {
        "arrival_s": [0.0, 0.5], "prompt_tokens": [5, 7], "output_tokens": [6, 8],
        "tenant": ["acme", "beta"],
    }  # fmt: skip
    jsonl = write_lines(
        tmp_path / "log.jsonl",
        ['{"t": "2024-01-01 00:00:00", "p": 3, "o": 1, "tier": "fast", "model": "m"}',
         '{"t": "2024-01-01 00:00:02.25", "p": 4.0, "o": 0, "tier": "batch", "model": "m"}'],
    )  # fmt: skip
    convert_trace(
        jsonl,
        tmp_path / "j.parquet",
        columns={"arrival_s": "t", "prompt_tokens": "p", "output_tokens": "o", "model": "model"},
    )
    assert pq.read_table(tmp_path / "j.parquet").to_pydict() == {
        "arrival_s": [0.0, 2.25], "prompt_tokens": [3, 4], "output_tokens": [1, 0],
        "tier": ["fast", "batch"], "model": ["m", "m"],
    }  # fmt: skip


def test_convert_then_inspect_round_trip_on_the_cli(tmp_path, runner):
    dst = tmp_path / "conv.parquet"
    converted = runner.invoke(cli, ["traces", "convert", str(AZURE_CONV), str(dst), "--json"])
    assert converted.exit_code == 0, converted.output
    assert json.loads(converted.output)["rows_written"] == 19_366
    inspected = runner.invoke(cli, ["traces", "inspect", str(dst), "--json"])
    summary = json.loads(inspected.output)
    assert summary["rows"] == 19_366 and summary["output_tokens"]["p50"] == 129
    table = runner.invoke(cli, ["traces", "inspect", str(dst)])
    assert "19,366" in table.output and "5.53 req/s" in table.output
