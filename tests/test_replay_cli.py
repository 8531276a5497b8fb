"""`tokenfleet replay` end to end on the real Azure conv trace, and every way to get it wrong."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TRACES
from test_replay_support import GPU

from tokenfleet.cli.main import cli
from tokenfleet.hardware.profile import load_engine, load_profile
from tokenfleet.replay.records.requests import PRICED_COLUMNS, RAW_COLUMNS
from tokenfleet.replay.records.timeline import TIMELINE_SCHEMA
from tokenfleet.traces.convert import convert_trace


@pytest.fixture(scope="session")
def azure_conv(tmp_path_factory, shared_data) -> Path:
    path = tmp_path_factory.mktemp("traces") / "conv.parquet"
    convert_trace(TRACES / "AzureLLMInferenceTrace_conv.csv", path)
    return path


TIGHT_KV = """
[[pools]]
gpu = "{gpu}"
replicas = 1                     # overloaded on purpose: the queue fills the cache
gpu_memory_utilization = 0.25  # leaves room for about 25k tokens of KV
[pools.batcher]
policy = "vllm"
max_num_seqs = 128
"""


def replay(runner, *args: str):
    return runner.invoke(cli, ["replay", *map(str, args), "--quiet"])


def check_invariants(out: Path, trace: Path) -> dict:
    requests = pl.read_parquet(out / "requests.parquet")
    timeline = pl.read_parquet(out / "timeline.parquet")
    summary = json.loads((out / "summary.json").read_text())
    source = pl.read_parquet(trace)
    # The files hold the columns their schemas list, in that order.
    assert requests.columns == [name for name, _ in RAW_COLUMNS + PRICED_COLUMNS]
    assert timeline.columns == TIMELINE_SCHEMA.names
    # Every request ends exactly once.
    assert requests.height == source.height
    assert requests["request_id"].n_unique() == source.height
    assert (requests["status"] == "finished").all()
    # Time never runs backwards.
    assert (requests["start_s"] >= requests["arrival_s"]).all()
    assert (requests["first_token_s"] >= requests["start_s"]).all()
    assert (requests["finish_s"] >= requests["first_token_s"]).all()
    # Tokens out equal the trace's output tokens, request by request.
    joined = source.with_row_index("request_id").join(requests, on="request_id", suffix="_out")
    assert (joined["output_tokens"] == joined["output_tokens_out"]).all()
    assert timeline["output_tokens"].sum() == source["output_tokens"].sum()
    assert timeline["decode_tokens"].sum() <= timeline["output_tokens"].sum()
    # KV use never exceeds capacity.
    kv_blocks = summary["pools"][0]["kv_blocks"]
    assert timeline["kv_peak_blocks"].max() <= kv_blocks
    assert timeline["kv_peak_frac"].max() <= 1.0
    # Little's law: time-average number in the system = arrival rate x mean time in it.
    span = timeline["interval_start_s"].max() + timeline["interval_s"][0]
    n_avg = (timeline["mean_in_system"] * timeline["interval_s"]).sum() / span
    little = requests.height / span * requests["e2e_s"].mean()
    assert n_avg == pytest.approx(little, rel=0.02)
    # The timeline adds up to the records.
    assert timeline["requests_arrived"].sum() == timeline["requests_finished"].sum()
    assert timeline["requests_finished"].sum() == requests.height
    return summary


def test_replay_of_the_azure_conv_trace_keeps_every_invariant(runner, azure_conv, tmp_path):
    out = tmp_path / "run"
    result = replay(runner, azure_conv, "--gpu", GPU, "--out", out)
    assert result.exit_code == 0, result.output
    assert "TTFT" in result.stdout and "req/s" in result.stdout
    summary = check_invariants(out, azure_conv)
    assert summary["finished"] == 19_366
    assert summary["replicas"] >= 1  # sized to the trace's rate
    # The table shows the summary's figures, and those come from the files.
    ttft = summary["latency_s"]["ttft"]
    assert f"{ttft['p50'] * 1e3:,.1f}" in result.stdout
    assert f"{ttft['p99'] * 1e3:,.1f}" in result.stdout
    requests = pl.read_parquet(out / "requests.parquet")
    assert summary["latency_s"]["ttft"]["p50"] == pytest.approx(requests["ttft_s"].median())
    assert summary["tokens"]["output"] == requests["output_tokens"].sum()


def test_one_interval_over_the_whole_trace_holds_every_request_time_exactly(
    runner, azure_conv, tmp_path
):
    """With a single interval the timeline's time in system is the sum of the requests' E2E
    less the engine frontend's lag to the client (the timeline counts a request until its
    engine finishes it): the arrival and finish times, folded into the row batch by batch
    (19,366 requests: several folds), must add up to it, not just to within Little's law's
    tolerance."""
    out = tmp_path / "run"
    result = replay(runner, azure_conv, "--gpu", GPU, "--interval", 1e6, "--out", out)
    assert result.exit_code == 0, result.output
    requests = pl.read_parquet(out / "requests.parquet")
    timeline = pl.read_parquet(out / "timeline.parquet")
    assert timeline["interval_start_s"].unique().to_list() == [0.0]
    assert timeline["requests_arrived"].sum() == timeline["requests_finished"].sum() == 19_366
    in_system_s = (timeline["mean_in_system"] * timeline["interval_s"]).sum()
    lag_s = load_engine(load_profile(GPU).default_engine).frontend_out_ms * 1e-3
    assert lag_s > 0
    in_engine_s = requests["e2e_s"].sum() - lag_s * requests.height
    assert in_system_s == pytest.approx(in_engine_s, rel=1e-9)


def test_a_tight_kv_cache_preempts_and_still_keeps_the_invariants(runner, azure_conv, tmp_path):
    scenario = tmp_path / "tight.toml"
    scenario.write_text(TIGHT_KV.format(gpu=GPU))
    out = tmp_path / "run"
    result = replay(runner, azure_conv, "--scenario", scenario, "--out", out, "--interval", 5)
    assert result.exit_code == 0, result.output
    summary = check_invariants(out, azure_conv)
    assert summary["preemptions"] > 0
    assert summary["kv_peak_frac_max"] > 0.9


def test_step_by_step_gives_byte_identical_requests(runner, azure_slice, tmp_path):
    scenario = tmp_path / "tight.toml"
    scenario.write_text(TIGHT_KV.format(gpu=GPU))
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    for out, extra in ((fast, []), (slow, ["--step-by-step"])):
        result = replay(runner, azure_slice, "--scenario", scenario, "--out", out, *extra)
        assert result.exit_code == 0, result.output
    assert (fast / "requests.parquet").read_bytes() == (slow / "requests.parquet").read_bytes()
    assert pl.read_parquet(fast / "requests.parquet")["preemptions"].sum() > 0


def test_two_pools_behind_one_balancer(runner, azure_slice, tmp_path):
    out = tmp_path / "run"
    example = Path(__file__).resolve().parents[1] / "examples" / "replay-batchers.toml"
    result = replay(runner, azure_slice, "--scenario", example, "--gpu", GPU, "--out", out)
    assert result.exit_code == 0, result.output
    requests = pl.read_parquet(out / "requests.parquet")
    by_pool = requests.group_by("pool").len().sort("pool")
    # Round-robin over 2 + 2 replicas: each pool serves half the requests.
    assert by_pool.rows() == [("chunked", 1000), ("whole-prompt", 1000)]
    summary = json.loads((out / "summary.json").read_text())
    assert [p["batcher"] for p in summary["pools"]] == ["sarathi", "orca"]
    assert summary["gpus"] == 4


def test_same_inputs_and_seed_give_identical_outputs(runner, azure_slice, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        result = replay(runner, azure_slice, "--balancer", "random", "--replicas", 3, "--out", out)
        assert result.exit_code == 0, result.output
    for name in ("requests.parquet", "timeline.parquet", "summary.json", "scenario.toml"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_flags_override_the_scenario_and_json_matches_the_file(runner, azure_slice, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        cli,
        [
            "replay",
            str(azure_slice),
            "--gpu",
            GPU,
            "--replicas",
            "3",
            "--batcher",
            "sarathi",
            "--balancer",
            "power-of-two",
            "--max-num-seqs",
            "64",
            "--seed",
            "7",
            "--out",
            str(out),
            "--json",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["pools"][0]["replicas"] == 3 and summary["pools"][0]["batcher"] == "sarathi"
    resolved = (out / "scenario.toml").read_text()
    assert 'policy = "power-of-two"' in resolved and "max_num_seqs = 64" in resolved
    assert pl.read_parquet(out / "requests.parquet")["replica"].n_unique() == 3


# --- bad input: one line, exit 2, nothing written -------------------------------------------


def assert_refused(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, result.stderr
    for needle in needles:
        assert needle in line, line
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_a_trace_breaking_the_schema_is_refused(runner, tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table({"arrival_s": [0.0, 1.0], "prompt_tokens": ["a", "b"], "output_tokens": [1, 2]}),
        bad,
    )
    out = tmp_path / "out"
    assert_refused(replay(runner, bad, "--gpu", GPU, "--out", out), out, "prompt_tokens")


def test_an_empty_trace_is_refused(runner, tmp_path):
    empty = tmp_path / "empty.parquet"
    schema = pa.schema(
        [("arrival_s", pa.float64()), ("prompt_tokens", pa.int32()), ("output_tokens", pa.int32())]
    )
    pq.write_table(schema.empty_table(), empty)
    out = tmp_path / "out"
    assert_refused(replay(runner, empty, "--gpu", GPU, "--out", out), out, "no rows")


def test_an_unknown_scenario_key_or_batcher_is_refused(runner, azure_slice, tmp_path):
    out = tmp_path / "out"
    scenario = tmp_path / "s.toml"
    scenario.write_text("[[pools]]\ngpu = 'x'\nreplica = 2\n")
    result = replay(runner, azure_slice, "--scenario", scenario, "--out", out)
    assert_refused(result, out, "'replica'")
    scenario.write_text("[[pools]]\n[pools.batcher]\npolicy = 'vllm'\nmax_seqs = 2\n")
    result = replay(runner, azure_slice, "--scenario", scenario, "--out", out)
    assert_refused(result, out, "'max_seqs'")
    result = replay(runner, azure_slice, "--batcher", "fifo", "--out", out)
    assert_refused(result, out, "'fifo'", "vllm")
    result = replay(
        runner, azure_slice, "--batcher", "orca", "--max-batched-tokens", "99", "--out", out
    )
    assert_refused(result, out, "--max-batched-tokens", "orca")


def test_a_model_that_does_not_fit_is_refused(runner, azure_slice, tmp_path):
    out = tmp_path / "out"
    result = replay(runner, azure_slice, "--model", "llama-3.1-405b", "--gpu", GPU, "--out", out)
    assert_refused(result, out, "llama-3.1-405b", "use tp 16")


def test_an_unwritable_out_is_refused_before_any_work(runner, azure_slice, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / "run"
    result = replay(runner, azure_slice, "--gpu", GPU, "--out", out)
    assert result.exit_code == 2 and "error:" in result.stderr and "\n" not in result.stderr.strip()
    assert not out.exists()


def test_an_out_that_would_destroy_other_files_is_refused(runner, azure_slice, tmp_path):
    # The output replaces --out whole: an existing file, a directory that is not an earlier
    # run (or holds the trace), and the current directory are refused, and left untouched.
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    result = replay(runner, azure_slice, "--gpu", GPU, "--out", blocker)
    assert result.exit_code == 2 and "is a file" in result.stderr
    assert blocker.read_text() == "keep"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    result = replay(runner, azure_slice, "--gpu", GPU, "--out", folder)
    assert result.exit_code == 2 and "not empty" in result.stderr
    assert (folder / "notes.txt").read_text() == "keep"
    result = replay(runner, azure_slice, "--gpu", GPU, "--out", azure_slice.parent)
    assert result.exit_code == 2 and "would delete" in result.stderr
    assert azure_slice.is_file()
    # An earlier run's directory is replaced.
    out = tmp_path / "run"
    for _ in range(2):
        assert replay(runner, azure_slice, "--gpu", GPU, "--out", out).exit_code == 0
    assert (out / "summary.json").is_file()
