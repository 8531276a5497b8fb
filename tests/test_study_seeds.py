"""`replay --seeds N`: replications, their bootstrap intervals, and compare's noise test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.cli.main import cli
from tokenfleet.study.intervals import bootstrap_interval, differs_beyond_noise
from tokenfleet.traces.synth import SynthSpec, synth_trace


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seeds") / "synth.parquet"
    synth_trace(path, SynthSpec(requests=1500, rate_rps=25.0, seed=4))
    return path


def replay(runner, trace: Path, out: Path, *args: str) -> dict:
    result = runner.invoke(
        cli, ["replay", str(trace), "--out", str(out), "--replicas", "1", *args, "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=12))
def test_the_interval_holds_the_mean_and_collapses_only_for_equal_values(values):
    low, high = bootstrap_interval(np.array([values]))
    mean = float(np.mean(values))
    slack = 1e-9 * max(1.0, abs(mean))
    assert low[0] - slack <= mean <= high[0] + slack
    assert min(values) - slack <= low[0] and high[0] <= max(values) + slack
    if min(values) == max(values):
        assert low[0] == pytest.approx(values[0]) and high[0] == pytest.approx(values[0])


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    draws = rng.normal(10.0, 2.0, size=(400, 20))  # 400 studies of 20 replications
    low, high = bootstrap_interval(draws)
    covered = np.mean((low <= 10.0) & (high >= 10.0))
    # The percentile bootstrap runs a little narrow at N = 20 (about 93% for a normal figure).
    assert 0.88 <= covered <= 0.98
    assert np.all(high - low > 0)


def test_a_shift_larger_than_the_noise_is_told_from_one_within_it():
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 0.1, 10).tolist()
    assert differs_beyond_noise(a, (np.array(a) + 0.5).tolist())
    assert not differs_beyond_noise(a, rng.normal(1.0, 0.1, 10).tolist())


def test_seeds_redraw_a_synthetic_trace_and_keep_seed_zero_records(runner, synthetic, tmp_path):
    one = replay(runner, synthetic, tmp_path / "one")
    many = replay(runner, synthetic, tmp_path / "many", "--seeds", "3")
    block = many["replications"]
    assert block["seeds"] == [0, 1, 2] and block["trace_redrawn"]
    # Seed 0's records and summary figures are the single run's.
    for name in ("requests.parquet", "timeline.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()
    assert many["latency_s"] == one["latency_s"]
    ttft = block["figures"]["latency_s.ttft.p99"]
    assert ttft["values"][0] == one["latency_s"]["ttft"]["p99"]
    for seed, value in zip(block["seeds"], ttft["values"], strict=True):
        kept = json.loads((tmp_path / "many" / "seeds" / f"seed-{seed}.json").read_text())
        assert kept["seed"] == seed and kept["latency_s"]["ttft"]["p99"] == value
    # Re-drawn traffic moves the figures; the interval brackets their mean.
    assert ttft["varies"] and len(set(ttft["values"])) == 3
    assert ttft["ci_low"] <= ttft["mean"] <= ttft["ci_high"]
    assert ttft["mean"] == pytest.approx(np.mean(ttft["values"]))
    assert "seed" not in block["figures"] and "requests" in block["figures"]


def test_a_real_trace_varies_only_where_the_scenario_draws_at_random(runner, azure_slice, tmp_path):
    fixed = replay(runner, azure_slice, tmp_path / "lr", "--seeds", "3", "--replicas", "2")
    drawn = replay(
        runner,
        azure_slice,
        tmp_path / "rnd",
        "--seeds",
        "3",
        "--replicas",
        "2",
        "--balancer",
        "random",
    )
    assert not fixed["replications"]["trace_redrawn"]
    assert not any(f["varies"] for f in fixed["replications"]["figures"].values())
    assert drawn["replications"]["figures"]["latency_s.ttft.p99"]["varies"]
    result = runner.invoke(cli, ["compare", str(tmp_path / "lr"), str(tmp_path / "rnd")])
    assert result.exit_code == 0, result.output
    assert "rnd beyond noise" in result.output


def test_seeds_below_one_is_one_line_and_writes_nothing(runner, synthetic, tmp_path):
    result = runner.invoke(
        cli, ["replay", str(synthetic), "--out", str(tmp_path / "out"), "--seeds", "0", "-q"]
    )
    assert result.exit_code == 2
    assert "--seeds 0: expected at least 1" in result.output
    assert not (tmp_path / "out").exists()
