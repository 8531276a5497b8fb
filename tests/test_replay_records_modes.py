"""`replay --records all|sample:F|none`: what requests.parquet keeps, and the sketched
percentiles the summary falls back on when it is not kept whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.cli.main import cli
from tokenfleet.replay.records.quantiles import RELATIVE_ACCURACY, SketchedValues
from tokenfleet.replay.records.requests import RECORDS_KEY


def near_a_value_of_rank(value: float, values: np.ndarray, q: float) -> bool:
    """DDSketch's promise: within the relative accuracy of a value at rank q (n - 1) (either
    neighbour where that rank falls between two)."""
    ordered = np.sort(values)
    rank = q * (len(ordered) - 1)
    lo, hi = ordered[int(np.floor(rank))], ordered[int(np.ceil(rank))]
    slack = RELATIVE_ACCURACY * (1 + 1e-9)
    return any(abs(value - x) <= slack * abs(x) + 1e-12 for x in (lo, hi))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=60),
        min_size=1,
        max_size=5,
    )
)
def test_the_sketch_keeps_its_accuracy_over_batches(batches):
    sketch = SketchedValues()
    for batch in batches:
        sketch.add(np.array(batch))
    values = np.concatenate([np.array(b) for b in batches])
    figures = sketch.figures((1, 50, 90, 99))
    assert figures["mean"] == pytest.approx(values.mean(), rel=1e-9, abs=1e-12)
    for p in (1, 50, 90, 99):
        assert near_a_value_of_rank(figures[f"p{p}"], values, p / 100), p


def replay(runner, trace: Path, out: Path, *args: str) -> dict:
    result = runner.invoke(
        cli, ["replay", str(trace), "--out", str(out), "--replicas", "2", *args, "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def kept_whole(tmp_path_factory, azure_slice) -> tuple[Path, dict]:
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("records") / "all"
    return out, replay(CliRunner(), azure_slice, out)


def test_none_keeps_no_records_and_its_percentiles_are_within_the_sketch_accuracy(
    runner, azure_slice, kept_whole, tmp_path
):
    whole_dir, whole = kept_whole
    none = replay(runner, azure_slice, tmp_path / "none", "--records", "none")
    assert not (tmp_path / "none" / "requests.parquet").exists()
    assert none["records"]["mode"] == "none" and none["records"]["rows_written"] == 0
    assert "records" not in whole
    # The simulation is the same: the timeline is byte for byte the full run's.
    assert (tmp_path / "none" / "timeline.parquet").read_bytes() == (
        whole_dir / "timeline.parquet"
    ).read_bytes()
    requests = pl.read_parquet(whole_dir / "requests.parquet").filter(
        pl.col("status") == "finished"
    )
    for name in ("ttft", "tpot", "e2e", "queue"):
        values = requests[f"{name}_s"].drop_nulls().to_numpy()
        got = none["latency_s"][name]
        assert got["mean"] == pytest.approx(whole["latency_s"][name]["mean"], rel=1e-12)
        for p in (50, 90, 99):
            assert near_a_value_of_rank(got[f"p{p}"], values, p / 100), (name, p)
    ttft = requests["ttft_s"].to_numpy()
    fleet = none["economics"]["fleet"]["ttft_s"]
    assert near_a_value_of_rank(fleet["p99"], ttft, 0.99)
    # Counts and money do not depend on what the file keeps.
    for key in ("requests", "finished", "tokens", "throughput", "status_counts"):
        assert none[key] == whole[key], key
    assert none["economics"]["fleet"]["cost_usd"] == whole["economics"]["fleet"]["cost_usd"]
    report = runner.invoke(cli, ["report", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert report.exit_code == 2 and "--records none" in report.output


def test_a_sample_is_a_seeded_uniform_subset_of_the_full_records(
    runner, azure_slice, kept_whole, tmp_path
):
    whole_dir, _ = kept_whole
    a = replay(runner, azure_slice, tmp_path / "a", "--records", "sample:0.2")
    replay(runner, azure_slice, tmp_path / "b", "--records", "sample:0.2")
    path = tmp_path / "a" / "requests.parquet"
    assert path.read_bytes() == (tmp_path / "b" / "requests.parquet").read_bytes()
    sample = pl.read_parquet(path)
    full = pl.read_parquet(whole_dir / "requests.parquet")
    assert sample.height == a["records"]["rows_written"]
    assert 0.2 * full.height - 3 * np.sqrt(full.height * 0.16) < sample.height
    assert sample.height < 0.2 * full.height + 3 * np.sqrt(full.height * 0.16)
    # Whole rows of the full file, in its order.
    assert full["request_id"].is_unique().all()
    assert full.filter(pl.col("request_id").is_in(sample["request_id"].implode())).equals(sample)
    assert pq.read_schema(path).metadata[RECORDS_KEY] == b"sample:0.2"


TWO_POOLS = """
[[pools]]
name = "big"
replicas = 2

[[pools]]
name = "small"
gpu = "a100-80gb"
replicas = 1
"""


def test_a_pool_timeline_is_the_replica_timeline_summed_per_pool(runner, azure_slice, tmp_path):
    scenario = tmp_path / "two.toml"
    scenario.write_text(TWO_POOLS)
    args = ["--scenario", str(scenario)]
    result = runner.invoke(
        cli, ["replay", str(azure_slice), "--out", str(tmp_path / "r"), *args, "-q"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli,
        ["replay", str(azure_slice), "--out", str(tmp_path / "p"), *args, "--timeline", "pool"]
        + ["-q"],
    )
    assert result.exit_code == 0, result.output
    rows = pl.read_parquet(tmp_path / "r" / "timeline.parquet")
    pools = pl.read_parquet(tmp_path / "p" / "timeline.parquet")
    assert pools["replica"].null_count() == pools.height
    assert pools.height == rows.select("interval_start_s", "pool").n_unique()
    expected = rows.group_by(["interval_start_s", "pool"], maintain_order=True).agg(
        pl.col("busy_s", "cost_usd", "provisioned_s", "mean_in_system").sum(),
        pl.col("steps", "output_tokens", "requests_finished").sum(),
        pl.col("max_batch", "kv_peak_frac").max(),
        (pl.col("mean_batch") * pl.col("steps")).sum().alias("sequences"),
    )
    assert expected.select("interval_start_s", "pool").equals(
        pools.select("interval_start_s", "pool")
    )
    for name in ("busy_s", "cost_usd", "provisioned_s", "mean_in_system"):
        np.testing.assert_allclose(pools[name].to_numpy(), expected[name].to_numpy(), rtol=1e-12)
    for name in ("steps", "output_tokens", "requests_finished", "max_batch"):
        assert pools[name].to_list() == expected[name].cast(pools[name].dtype).to_list(), name
    np.testing.assert_allclose(
        (pools["mean_batch"] * pools["steps"]).to_numpy(), expected["sequences"].to_numpy()
    )
    # The summary does not depend on the rows' grain.
    a = json.loads((tmp_path / "r" / "summary.json").read_text())
    b = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert b.pop("timeline") == "pool"
    for key in ("step_busy_frac", "mean_batch", "gpu_hours_provisioned", "kv_peak_frac_max"):
        assert b[key] == pytest.approx(a[key], rel=1e-12), key
    for pool, load in a["load"].items():
        for key, value in load.items():
            assert b["load"][pool][key] == pytest.approx(value, rel=1e-12), (pool, key)
    assert b["economics"]["fleet"]["cost_usd"] == a["economics"]["fleet"]["cost_usd"]
