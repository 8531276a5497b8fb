"""The frontier: --vary parsing, the Pareto rule, and a real sweep through the replay."""

import json

import polars as pl
import pytest

from tokenfleet.cli.main import cli
from tokenfleet.errors import UserError
from tokenfleet.study.frontier import grid, pareto_mask, parse_vary, run_dir_name


def test_vary_parses_typed_values_into_a_grid():
    varies = parse_vary(["max_num_seqs=1,8", "gpu=h100-sxm,a100-80gb"])
    assert varies == [("max_num_seqs", [1, 8]), ("gpu", ["h100-sxm", "a100-80gb"])]
    assert grid(varies) == [
        {"max_num_seqs": 1, "gpu": "h100-sxm"},
        {"max_num_seqs": 1, "gpu": "a100-80gb"},
        {"max_num_seqs": 8, "gpu": "h100-sxm"},
        {"max_num_seqs": 8, "gpu": "a100-80gb"},
    ]


@pytest.mark.parametrize(
    "specs, message",
    [
        ([], "frontier: no setting to vary"),
        (["max_num_seqs"], "'max_num_seqs': expected NAME=V1,V2"),
        (["colour=red"], "varied setting 'colour' is unknown"),
        (["max_num_seqs=1,x"], "'max_num_seqs': 'x' is not a whole number"),
        (["max_num_seqs=1,1"], "'max_num_seqs': a value is listed twice"),
        (["tp=1", "tp=2"], "varied setting 'tp' is given twice"),
    ],
)
def test_bad_vary_is_a_user_error_naming_the_setting_not_the_flag(specs, message):
    with pytest.raises(UserError, match=message) as err:
        parse_vary(specs)
    assert "--" not in str(err.value)


def test_pareto_keeps_rows_no_other_row_beats_on_both_cost_and_speed():
    cost = [1.0, 2.0, 0.5, 2.0, None]
    speed = [10.0, 20.0, 5.0, 15.0, 99.0]
    # Row 3 is beaten by row 1 (same cost, faster); row 4 has no cost.
    assert pareto_mask(cost, speed) == [True, True, True, False, False]


def test_a_sweep_replays_each_value_and_writes_the_table(tmp_path, runner):
    trace = tmp_path / "t.parquet"
    result = runner.invoke(
        cli, ["traces", "synth", str(trace), "--requests", "400", "--rate", "20", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "fr"
    args = ["frontier", str(trace), "--vary", "max_num_seqs=1,32", "--out", str(out)]
    result = runner.invoke(cli, [*args, "--jobs", "1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["run"] for r in rows] == ["max_num_seqs=1", "max_num_seqs=32"]
    table = pl.read_parquet(out / "frontier.parquet")
    assert table["run"].to_list() == ["max_num_seqs=1", "max_num_seqs=32"]
    one, many = rows
    # Batching one sequence per step serialises decodes: a larger cap batches more.
    assert one["mean_batch"] == pytest.approx(1.0)
    assert many["mean_batch"] > 1.5
    for row in rows:
        summary = json.loads((out / "runs" / row["run"] / "summary.json").read_text())
        assert summary["latency_s"]["ttft"]["p99"] == pytest.approx(row["ttft_p99_s"])


def test_a_bad_vary_on_the_cli_writes_nothing(tmp_path, runner):
    out = tmp_path / "fr"
    result = runner.invoke(
        cli, ["frontier", "nope.parquet", "--vary", "colour=red", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: frontier: varied setting 'colour' is unknown")
    assert not out.exists()


def test_the_cli_names_the_flag_when_nothing_is_varied(tmp_path, runner):
    out = tmp_path / "fr"
    result = runner.invoke(cli, ["frontier", "nope.parquet", "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: frontier needs at least one --vary NAME=V1,V2")
    assert not out.exists()


def test_on_a_saturated_fleet_bigger_batches_are_cheaper_and_slower(tmp_path, runner):
    trace = tmp_path / "busy.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "600", "--rate", "40", "--seed", "5"]
    assert runner.invoke(cli, synth).exit_code == 0
    scenario = tmp_path / "one.toml"
    scenario.write_text("[[pools]]\nreplicas = 1\n[pools.pricing]\nusd_per_gpu_hour = 2.0\n")
    args = ["frontier", str(trace), "--scenario", str(scenario), "--out", str(tmp_path / "fr")]
    result = runner.invoke(cli, [*args, "--vary", "max_num_seqs=2,8,32", "--jobs", "1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    costs = [r["usd_per_mtoken"] for r in rows]
    tpots = [r["tpot_p50_s"] for r in rows]
    assert costs[0] > costs[1] > costs[2]
    assert tpots[0] < tpots[1] < tpots[2]
    assert all(r["pareto"] for r in rows)  # each buys speed with money


def test_run_directories_are_flat_and_distinct_even_for_path_values():
    taken: set[str] = set()
    names = [
        run_dir_name({"gpu": "./profiles/h100.toml"}, taken),
        run_dir_name({"gpu": "./profiles_h100.toml"}, taken),
        run_dir_name({"gpu": "h100-sxm", "max_num_seqs": 8}, taken),
    ]
    assert all("/" not in name for name in names)
    assert len(set(names)) == 3
    assert names[2] == "gpu=h100-sxm,max_num_seqs=8"
