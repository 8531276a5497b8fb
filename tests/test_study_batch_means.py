"""`replay --batches B` (study/batch_means.py): one run's intervals from its windows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tokenfleet.cli.main import cli
from tokenfleet.study.intervals import bootstrap_interval

KEY_FIGURES = (
    "latency_s.ttft.mean",
    "latency_s.tpot.p50",
    "economics.fleet.usd_per_mtoken.blended",
    "throughput.requests_per_s",
)


def replay(runner, trace, out, *flags) -> dict:
    result = runner.invoke(
        cli, ["replay", str(trace), "--replicas", "2", "--out", str(out), "--json", "-q", *flags]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_one_real_trace_gets_intervals_where_seeds_cannot_give_any(azure_slice, tmp_path, runner):
    """The Azure slice replayed by a scenario with no random choices: every seed gives the same
    run, so --seeds has no interval to give; its windows do. The windows are equal, follow a
    warm-up, and hold every request that arrived after it."""
    seeds = replay(runner, azure_slice, tmp_path / "seeds", "--seeds", "3")
    assert not any(seeds["replications"]["figures"][k]["varies"] for k in KEY_FIGURES)
    run = replay(runner, azure_slice, tmp_path / "batches", "--batches", "8")
    block = run["batch_means"]
    assert block["batches"] == 8 and len(block["windows_s"]) == 8
    widths = {round(b - a, 9) for a, b in block["windows_s"]}
    assert widths == {block["window_s"]} and block["warmup_s"] >= block["window_s"]
    for key in KEY_FIGURES:
        f = block["figures"][key]
        assert f["varies"] and f["ci_low"] < f["mean"] < f["ci_high"], key
    arrivals = pq.read_table(tmp_path / "batches" / "requests.parquet").column("arrival_s")
    after = sum(1 for t in arrivals.to_pylist() if t >= block["windows_s"][0][0])
    assert sum(block["figures"]["requests"]["values"]) == after
    # the run's own figures are those of a plain replay
    plain = replay(runner, azure_slice, tmp_path / "plain")
    assert run["latency_s"] == plain["latency_s"] and run["economics"] == plain["economics"]


def test_one_runs_windows_bracket_the_mean_of_ten_replications(tmp_path, runner):
    """Stationary synthetic traffic: the interval from one run's ten windows holds the mean of
    ten independent replications (re-drawn traffic) for each key figure, and is wider than the
    replications' own interval, which is of a mean over ten runs. Four figures are checked at
    once, so each at 99% (Bonferroni): at 95% each, one in five such tests would fail by
    chance alone (it did, by 0.7% of the TTFT mean, when the engine's async scheduling moved
    every TTFT by a step)."""
    trace = tmp_path / "chat.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "5000", "--rate", "30", "--seed", "1"]
    assert runner.invoke(cli, synth).exit_code == 0
    one = replay(runner, trace, tmp_path / "one", "--batches", "10")["batch_means"]
    many = replay(runner, trace, tmp_path / "many", "--seeds", "10")["replications"]
    assert not one["correlated"]
    for key in KEY_FIGURES:
        window, seeds = one["figures"][key], many["figures"][key]
        low, high = bootstrap_interval(np.array([window["values"]]), level=0.99)
        assert low[0] <= seeds["mean"] <= high[0], key
        assert window["ci_high"] - window["ci_low"] > seeds["ci_high"] - seeds["ci_low"], key


def test_compare_reads_the_windows_as_noise(tmp_path, runner):
    """Two fleets' runs with --batches: compare says whether each change is beyond the noise."""
    trace = tmp_path / "chat.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "3000", "--rate", "30", "--seed", "2"]
    assert runner.invoke(cli, synth).exit_code == 0
    replay(runner, trace, tmp_path / "two", "--batches", "6")
    result = runner.invoke(
        cli, ["replay", str(trace), "--replicas", "3", "--out", str(tmp_path / "three"), "-q",
              "--batches", "6"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "over 6 windows of" in result.output
    shown = runner.invoke(cli, ["compare", str(tmp_path / "two"), str(tmp_path / "three")])
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if x.startswith("economics.fleet.usd_per"))
    assert line.split()[-1] == "yes"  # 50% more GPUs: far beyond the windows' noise


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batches", "1"], "--batches 1: expected at least 2 windows"),
        (["--batches", "40"], "--batches 40: the trace's arrivals span"),
        (["--batches", "4", "--seeds", "2"], "drop --seeds and --cells"),
        (["--batches", "4", "--records", "none"], "use --records all"),
    ],
)
def test_bad_batches_are_one_line(tmp_path, runner, flags, message):
    trace = tmp_path / "t.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "300", "--rate", "10", "--seed", "3"]
    assert runner.invoke(cli, synth).exit_code == 0
    out = tmp_path / "out"
    result = runner.invoke(cli, ["replay", str(trace), "--out", str(out), "-q", *flags])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_the_pool_timeline_gives_the_same_windows(tmp_path, runner):
    """--timeline pool keeps one row per pool per interval; the windows' figures, made from
    its sums, are those of the per-replica timeline (as the run's summary is)."""
    trace = tmp_path / "chat.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "2000", "--rate", "30", "--seed", "6"]
    assert runner.invoke(cli, synth).exit_code == 0
    rows = replay(runner, trace, tmp_path / "replica", "--batches", "5")["batch_means"]
    pools = replay(runner, trace, tmp_path / "pool", "--batches", "5", "--timeline", "pool")
    assert pools["timeline"] == "pool"
    for key in (*KEY_FIGURES, "economics.fleet.utilisation", "step_busy_frac"):
        assert pools["batch_means"]["figures"][key]["values"] == pytest.approx(
            rows["figures"][key]["values"], rel=1e-9
        ), key
