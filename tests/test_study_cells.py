"""`replay --cells K`: the fleet as K cells, the trace hashed to them, records merged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from tokenfleet.cli.main import cli
from tokenfleet.study.cells import cell_of
from tokenfleet.study.intervals import differs_beyond_noise
from tokenfleet.traces.synth import SynthSpec, synth_trace


def replay(trace: Path, out: Path, *args: str) -> dict:
    result = CliRunner().invoke(cli, ["replay", str(trace), "--out", str(out), *args, "-q"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cells") / "chat.parquet"
    spec = SynthSpec(requests=4000, rate_rps=6.0, turns="uniform:1,4", tenants={"a": 0.6, "b": 0.4})
    synth_trace(path, spec)
    return path


def test_every_request_ends_once_in_the_cell_of_its_session(chat, tmp_path):
    summary = replay(chat, tmp_path / "out", "--replicas", "6", "--cells", "3")
    out = tmp_path / "out"
    requests = pl.scan_parquet(out / "requests").collect()
    trace = pl.read_parquet(chat).with_row_index("request_id")  # ids default to row numbers
    trace = trace.with_columns(pl.col("request_id").cast(pl.Int64))
    assert sorted(requests["request_id"].to_list()) == sorted(trace["request_id"].to_list())
    assert requests.height == summary["requests"] == trace.height
    # A session's turns all went to one cell, and each cell's replicas are its own.
    sessions = requests.join(trace.select("request_id", "session_id"), on="request_id")
    assert sessions.group_by("session_id").agg(pl.col("cell").n_unique())["cell"].max() == 1
    spans = requests.group_by("cell").agg(
        pl.col("replica").min().alias("lo"), pl.col("replica").max().alias("hi")
    )
    assert sorted(spans.rows()) == [(0, 0, 1), (1, 2, 3), (2, 4, 5)]
    assert (
        summary["cells"]["requests"]
        == requests.group_by("cell").len().sort("cell")["len"].to_list()
    )
    # The merged timeline: every replica in every interval once; cell by cell, each in
    # interval then replica order.
    timeline = pl.read_parquet(out / "timeline.parquet")
    assert timeline["replica"].unique().sort().to_list() == list(range(6))
    assert timeline.select("interval_start_s", "replica").is_duplicated().sum() == 0
    cell = timeline["replica"] // 2
    assert cell.is_sorted()
    for part in timeline.with_columns(cell=cell).partition_by("cell"):
        order = part.select("interval_start_s", "replica").rows()
        assert order == sorted(order)
    # The summary is over all cells: its money adds up the cells' requests.
    assert summary["replicas"] == 6 and summary["pools"][0]["replicas"] == 6
    assert summary["economics"]["fleet"]["finished"] == summary["finished"]
    tenants = summary["economics"]["tenants"]
    assert sum(t["cost_usd"] for t in tenants.values()) == pytest.approx(
        float(requests["cost_usd"].sum()), rel=1e-9
    )
    assert summary["pools"][0]["cost_usd"] == pytest.approx(
        summary["economics"]["fleet"]["cost_usd"], rel=1e-12
    )
    # The report reads the cells' records as one run.
    report = CliRunner().invoke(cli, ["report", str(out), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert "3 independent cells" in (tmp_path / "report" / "index.html").read_text()


def test_the_hash_is_stable_and_spreads_consecutive_ids():
    import pyarrow as pa

    ids = pa.array(np.arange(100_000, dtype=np.int64))
    cells = cell_of(ids, 4)
    assert np.array_equal(cells, cell_of(ids, 4))
    assert np.all(np.abs(np.bincount(cells, minlength=4) - 25_000) < 600)
    text = cell_of(pa.array(["a", "b", "a"]), 3)
    assert text[0] == text[2]


def test_cells_agree_with_one_process_on_hash_balanced_traffic(tmp_path):
    """Without sessions or prefix caching (nothing for a cell to keep), 2 cells of 4 replicas
    cost what 8 replicas in one process cost, to within the seeds' noise, and their latency
    medians agree to 1% (the cells lose only the balancing across them)."""
    trace = tmp_path / "flat.parquet"
    synth_trace(trace, SynthSpec(requests=6000, rate_rps=40.0, seed=2))
    common = ["--replicas", "8", "--seeds", "5", "--no-prefix-caching"]
    one = replay(trace, tmp_path / "one", *common)["replications"]["figures"]
    two = replay(trace, tmp_path / "two", *common, "--cells", "2")["replications"]["figures"]
    for key in (
        "economics.fleet.usd_per_mtoken.blended",
        "throughput.requests_per_s",
        "economics.fleet.utilisation",
    ):
        assert not differs_beyond_noise(one[key]["values"], two[key]["values"]), key
    for key in ("latency_s.ttft.p50", "latency_s.tpot.p50", "latency_s.e2e.p50"):
        assert two[key]["mean"] == pytest.approx(one[key]["mean"], rel=0.01), key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cells", "0"], "--cells 0: expected at least 1"),
        (
            ["--replicas", "2", "--cells", "3"],
            "pool 'default' has 2 replicas, fewer than the cells",
        ),
        (["--executor", "ray"], "--executor, --address and --jobs place the cells; add --cells K"),
    ],
)
def test_bad_cells_are_one_line_and_write_nothing(chat, tmp_path, args, message):
    result = CliRunner().invoke(
        cli, ["replay", str(chat), "--out", str(tmp_path / "out"), *args, "-q"]
    )
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()
