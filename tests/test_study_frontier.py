"""The frontier: --vary parsing, the Pareto rule, and a real sweep through the replay."""

import json
from pathlib import Path

import polars as pl
import pytest

from tokenfleet.cli.main import cli
from tokenfleet.errors import UserError
from tokenfleet.replay.scenario import load_scenario
from tokenfleet.study.frontier import grid, pareto_mask, parse_vary, run_dir_name, run_frontier


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
    rows = json.loads(result.stdout)
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
    rows = json.loads(result.stdout)
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


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    from click.testing import CliRunner

    trace = tmp_path_factory.mktemp("trace") / "t.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "200", "--rate", "20", "--seed", "3"]
    assert CliRunner().invoke(cli, synth).exit_code == 0
    return trace


def test_an_empty_value_in_a_list_is_refused():
    with pytest.raises(UserError, match="'gpu': an empty value in 'h100-sxm,,a100-80gb'"):
        parse_vary(["gpu=h100-sxm,,a100-80gb"])


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_jobs_below_one_is_refused(small_trace, tmp_path, runner, jobs):
    out = tmp_path / "fr"
    args = ["frontier", str(small_trace), "--vary", "max_num_seqs=1,8", "--out", str(out)]
    result = runner.invoke(cli, [*args, "--jobs", jobs])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: Invalid value for '--jobs'")
    assert result.stderr.count("\n") == 1 and not out.exists()
    with pytest.raises(UserError, match=f"jobs = {jobs} must be >= 1"):
        run_frontier(small_trace, load_scenario(None), out, parse_vary(["tp=1"]), jobs=int(jobs))


@pytest.mark.parametrize(
    "vary, message",
    [
        (["model=llama-3.1-405b"], "frontier: run model=llama-3.1-405b: llama-3.1-405b in bf16"),
        (["replicas=1,0"], "frontier: run replicas=0: pool 'default': replicas = 0 must be >= 1"),
        (
            ["batcher=orca", "max_batched_tokens=512"],
            "frontier: run batcher=orca,max_batched_tokens=512: max_num_batched_tokens does not "
            "apply to the 'orca' batcher",
        ),
    ],
)
def test_a_bad_point_is_refused_before_any_replay_runs(
    small_trace, tmp_path, monkeypatch, vary, message
):
    import tokenfleet.study.frontier as frontier

    def no_replay(*args, **kwargs):
        raise AssertionError("a replay ran before the grid was checked")

    monkeypatch.setattr(frontier, "run_seeds", no_replay)
    out = tmp_path / "fr"
    with pytest.raises(UserError) as err:
        run_frontier(small_trace, load_scenario(None), out, parse_vary(vary), jobs=1)
    assert str(err.value).startswith(message)
    assert "--" not in str(err.value)  # a frontier has no --max-batched-tokens to name
    assert not out.exists()


def test_a_run_that_fails_in_a_worker_is_one_line_naming_the_run(small_trace, tmp_path, runner):
    # Refused inside the replay (not by the checks before it), so in a worker process: the
    # error must come back whole, not as a broken process pool.
    scenario = tmp_path / "tiny.toml"
    scenario.write_text("interval_s = 1e-7\n")
    out = tmp_path / "fr"
    args = ["frontier", str(small_trace), "--scenario", str(scenario), "--out", str(out)]
    result = runner.invoke(cli, [*args, "--vary", "replicas=1,2", "--jobs", "2"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: frontier: run replicas=")
    assert "timeline intervals" in result.stderr and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def test_an_output_directory_that_cannot_be_made_is_one_line(small_trace, runner):
    args = ["frontier", str(small_trace), "--vary", "replicas=1", "--out", "/proc/x"]
    result = runner.invoke(cli, [*args, "--jobs", "1"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: /proc/x: cannot write in /proc")
    assert result.stderr.count("\n") == 1


def test_a_second_run_replaces_its_own_output_and_says_so(small_trace, tmp_path, runner):
    out = tmp_path / "fr"
    args = ["frontier", str(small_trace), "--vary", "max_num_seqs=4,64", "--out", str(out)]
    first = runner.invoke(cli, [*args, "--jobs", "1"])
    assert first.exit_code == 0, first.output
    assert first.stderr == ""
    (out / "runs" / "stale").mkdir()
    second = runner.invoke(cli, [*args, "--jobs", "1"])
    assert second.exit_code == 0, second.output
    assert second.stderr == (
        f"warning: replaced the earlier output in {out}/ (it held frontier.parquet)\n"
    )
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "max_num_seqs=4",
        "max_num_seqs=64",
    ]


def test_a_directory_frontier_did_not_write_is_refused_and_left_intact(
    small_trace, tmp_path, runner
):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    args = ["frontier", str(small_trace), "--vary", "max_num_seqs=4", "--out", str(mine)]
    result = runner.invoke(cli, [*args, "--jobs", "1"])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: output directory {mine}: not empty and holds no earlier frontier.parquet; "
        "choose a new directory (an earlier output is replaced whole)\n"
    )
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "keep me"


def test_replacing_an_earlier_output_must_not_delete_the_scenario_read(
    small_trace, tmp_path, runner
):
    out = tmp_path / "fr"
    out.mkdir()
    (out / "frontier.parquet").write_bytes(b"an earlier output")
    scenario = out / "my.toml"
    scenario.write_text("seed = 1\n")
    args = ["frontier", str(small_trace), "--scenario", str(scenario), "--out", str(out)]
    result = runner.invoke(cli, [*args, "--vary", "max_num_seqs=4", "--jobs", "1"])
    assert result.exit_code == 2
    assert f"replacing it would delete {scenario.resolve()}" in result.stderr
    assert scenario.read_text() == "seed = 1\n"


def test_the_table_shows_each_runs_fleet_with_whole_labels(small_trace, tmp_path, runner):
    out = tmp_path / "fr"
    args = ["frontier", str(small_trace), "--out", str(out), "--jobs", "1"]
    result = runner.invoke(cli, [*args, "--vary", "replicas=1,2", "--vary", "tp=1,2"])
    assert result.exit_code == 0, result.output
    table, wrote = result.output.rstrip("\n").split("\n\n")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["run", "replicas", "GPUs"]
    cells = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert cells == {
        "replicas=1,tp=1": ["1", "1"],
        "replicas=1,tp=2": ["1", "2"],
        "replicas=2,tp=1": ["2", "2"],
        "replicas=2,tp=2": ["2", "4"],
    }
    end = lines[0].index("GPUs") + len("GPUs")  # counts right-aligned under their header
    assert all(line[end - 1].isdigit() and line[end] == " " for line in lines[1:])
    assert "shape:" not in result.output and wrote.startswith(f"wrote {out}/frontier.parquet")
    frame = pl.read_parquet(out / "frontier.parquet")
    assert frame.schema["fleet_gpus"] == pl.Int64
    assert frame["fleet_gpus"].to_list() == [1, 2, 2, 4]


def test_notices_of_the_runs_reach_the_caller_once(small_trace, tmp_path, monkeypatch):
    import tokenfleet.study.frontier as frontier
    from tokenfleet.errors import Notice, notify

    def replay(trace, scenario, run_dir, seeds):
        notify("the profile is a CPU's")
        return {"mean_batch": 1.0}

    monkeypatch.setattr(frontier, "run_seeds", replay)
    with pytest.warns(Notice, match="the profile is a CPU's") as caught:
        run_frontier(
            small_trace, load_scenario(None), tmp_path / "fr", parse_vary(["seed=1,2"]), jobs=1
        )
    assert len([w for w in caught if issubclass(w.category, Notice)]) == 2


def interrupt_after(trace, tmp_path, ready):
    """Run a two-worker frontier in its own process group, wait until `ready(pid, tmp_path)`,
    then send SIGINT to the whole group, as a terminal's Ctrl-C does; return (code, stderr)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import tokenfleet

    env = {**os.environ, "PYTHONPATH": str(Path(tokenfleet.__file__).parents[1])}
    args = [sys.executable, "-m", "tokenfleet", "frontier", str(trace), "--vary", "replicas=1,2"]
    proc = subprocess.Popen(
        [*args, "--jobs", "2", "--out", str(tmp_path / "fr"), "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    while proc.poll() is None and not ready(proc.pid, tmp_path):
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def workers_starting(pid, tmp_path):
    """Both worker processes have started Python (each handles or ignores SIGINT): they are
    importing when the signal comes, the moment a worker printed its own KeyboardInterrupt
    traceback."""
    import signal

    bit = 1 << (signal.SIGINT - 1)
    started = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
            command = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields["PPid"]) == pid and b"spawn_main" in command:
            started += bool((int(fields["SigCgt"], 16) | int(fields["SigIgn"], 16)) & bit)
    return started == 2


def replaying(pid, tmp_path):
    """A worker has begun writing its run (the replay's own temporary directory)."""
    return any(tmp_path.glob(".fr.tmp-*/runs/.*.tmp-*"))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds workers in /proc")
@pytest.mark.parametrize("ready", [workers_starting, replaying], ids=["starting", "replaying"])
def test_ctrl_c_stops_a_parallel_frontier_with_one_line_and_nothing_left(
    tmp_path_factory, tmp_path, ready
):
    from click.testing import CliRunner

    # Long enough that the runs are still going when the signal comes, on any machine.
    trace = tmp_path_factory.mktemp("long") / "long.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "20000", "--rate", "50"]
    assert CliRunner().invoke(cli, synth).exit_code == 0
    code, stderr = interrupt_after(trace, tmp_path, ready)
    assert "Traceback" not in stderr
    assert stderr == "error: interrupted; no output was written\n"
    assert code == 130
    assert list(tmp_path.iterdir()) == []


def test_seeds_give_each_point_its_means_and_intervals(small_trace, tmp_path, runner):
    out = tmp_path / "out"
    args = ["frontier", str(small_trace), "--vary", "max_num_seqs=4,64", "--seeds", "3"]
    result = runner.invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out / "frontier.parquet")
    for row in table.to_dicts():
        kept = sorted((out / "runs" / row["run"] / "seeds").glob("seed-*.json"))
        values = [json.loads(p.read_text())["latency_s"]["tpot"]["p50"] for p in kept]
        assert len(values) == 3
        assert row["tpot_p50_s"] == pytest.approx(sum(values) / 3, rel=1e-12)
        assert row["tpot_p50_s_ci_low"] <= row["tpot_p50_s"] <= row["tpot_p50_s_ci_high"]
        assert (
            row["usd_per_mtoken_ci_low"] <= row["usd_per_mtoken"] <= row["usd_per_mtoken_ci_high"]
        )
        assert row["output_tokens_per_s_per_user"] == pytest.approx(1 / row["tpot_p50_s"])
