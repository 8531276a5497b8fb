"""`tokenfleet sweep GRID.toml`: cells, the table, resuming, failures, and Ray."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from tokenfleet.cli.main import cli
from tokenfleet.study.executors import LocalExecutor
from tokenfleet.study.frontier import pareto_mask
from tokenfleet.study.sweep import load_plan, run_sweep
from tokenfleet.traces.synth import SynthSpec, synth_trace

GRID = """
traces = ["conv.parquet", "synth.parquet"]
seeds = 2

[grid]
max_num_seqs = [8, 64]
replicas = [1, 2]

[[cells]]
batcher = "sglang"
replicas = 2
"""
BAD_CELL = """
[[cells]]
gpu = "no-such-gpu"
"""
COST = "economics.fleet.usd_per_mtoken.blended"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, azure_slice) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    (root / "conv.parquet").write_bytes(azure_slice.read_bytes())
    synth_trace(root / "synth.parquet", SynthSpec(requests=1500, rate_rps=20.0, seed=3))
    (root / "grid.toml").write_text(GRID)
    return root


@pytest.fixture(scope="module")
def swept(folder) -> tuple[Path, pl.DataFrame]:
    out = folder / "out"
    result = CliRunner().invoke(cli, ["sweep", str(folder / "grid.toml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, pl.read_parquet(out / "sweep.parquet")


def test_one_row_per_cell_and_seed_with_settings_figures_and_pareto(swept):
    out, table = swept
    assert table.height == 2 * (4 + 1) * 2  # traces x cells x seeds
    assert table.columns[:6] == ["cell", "trace", "max_num_seqs", "replicas", "batcher", "seed"]
    assert table["seed"].unique().sort().to_list() == [0, 1]
    grid_rows = table.filter(pl.col("batcher").is_null())
    assert set(zip(grid_rows["max_num_seqs"], grid_rows["replicas"], strict=True)) == {
        (8, 1), (8, 2), (64, 1), (64, 2),
    }  # fmt: skip
    # Each row's figures are its run's summary, read back from cells/.
    for row in table.head(3).to_dicts():
        summary = json.loads((out / "cells" / row["cell"] / "summary.json").read_text())
        assert row["latency_s.ttft.p99"] == summary["latency_s"]["ttft"]["p99"]
        assert row[COST] == summary["economics"]["fleet"]["usd_per_mtoken"]["blended"]
        assert row["seed"] == summary["seed"]

    # The synthetic trace is re-drawn per seed; the real one is not, and its scenario draws
    # nothing at random: its two seeds agree.
    def per_seed(trace: str, seed: int) -> list[float]:
        rows = table.filter(pl.col("trace").str.ends_with(trace), pl.col("seed") == seed)
        return rows.sort("cell")["latency_s.ttft.p99"].to_list()

    assert per_seed("conv.parquet", 0) == per_seed("conv.parquet", 1)
    assert per_seed("synth.parquet", 0) != per_seed("synth.parquet", 1)
    # Pareto: per trace, over each cell's mean across the seeds.
    for _, part in table.group_by("trace"):
        means = (
            part.with_columns(key=pl.col("cell").str.replace(r",seed=\d+$", ""))
            .group_by("key", maintain_order=True)
            .agg(pl.col(COST).mean(), pl.col("output_tokens_per_s_per_user").mean(), "pareto")
        )
        expected = pareto_mask(
            means[COST].to_list(), means["output_tokens_per_s_per_user"].to_list()
        )
        assert [flags[0] for flags in means["pareto"].to_list()] == expected
        assert any(expected)


def test_a_rerun_reuses_finished_cells_and_a_failed_cell_is_named(swept, folder, tmp_path):
    out, table = swept
    grid = folder / "grid-bad.toml"
    grid.write_text(GRID + BAD_CELL)
    stamp = (out / "cells" / table["cell"][0] / "summary.json").stat().st_mtime_ns
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--out", str(out)])
    assert result.exit_code == 1
    assert "cell conv,gpu=no-such-gpu,seed=0 failed: unknown GPU 'no-such-gpu'" in result.output
    assert "4 of 24 cells failed" in result.output
    assert f"{table.height} found finished from an earlier run" in result.output
    again = pl.read_parquet(out / "sweep.parquet")
    assert_frame_equal(again.drop("gpu"), table)  # NaN figures (nothing to divide) alike
    assert (out / "cells" / table["cell"][0] / "summary.json").stat().st_mtime_ns == stamp


class StopsAfter(LocalExecutor):
    """A local executor interrupted (Ctrl-C) as its cell `n + 1` finishes, before the sweep
    hears of it."""

    def __init__(self, n: int) -> None:
        super().__init__(1)
        self.n = n

    def run(self, fn, tasks):
        for k, outcome in enumerate(super().run(fn, tasks)):
            if k == self.n:
                raise KeyboardInterrupt
            yield outcome


def test_an_interrupted_sweep_keeps_its_finished_cells(folder, tmp_path):
    plan = load_plan(folder / "grid.toml", seeds=1)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, out, StopsAfter(3))
    assert len([p for p in (out / "cells").iterdir() if (p / "summary.json").is_file()]) == 4
    assert not (out / "sweep.parquet").exists()
    result = run_sweep(plan, out, LocalExecutor(1))
    assert result.reused == 4 and result.table.height == len(plan.cells) and not result.failed


BAD_GRIDS = [
    ("tracez = []\n", "unknown key 'tracez'"),
    ('traces = ["conv.parquet"]\n[grid]\nmax_num_seqs = []\n', "an axis needs at least one value"),
    ('traces = ["conv.parquet"]\n[grid]\nmax_seqs = [1]\n', "unknown setting 'max_seqs'"),
    ('traces = ["conv.parquet"]\n[grid]\nreplicas = ["two"]\n', "expected a whole number"),
    ('traces = ["conv.parquet"]\n', "no cell"),
    ('traces = ["nope.parquet"]\n[grid]\nreplicas = [1]\n', "nope.parquet: no such file"),
    ('traces = ["conv.parquet"]\nseeds = 0\n[grid]\nreplicas = [1]\n', "seeds = 0"),
]


@pytest.mark.parametrize(("body", "message"), BAD_GRIDS)
def test_a_bad_grid_is_one_line_and_writes_nothing(folder, tmp_path, body, message):
    grid = folder / f"bad-{abs(hash(body))}.toml"
    grid.write_text(body)
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_bad_executor_flags_are_one_line(folder, tmp_path, monkeypatch):
    grid = str(folder / "grid.toml")
    out = str(tmp_path / "out")
    cases = [
        (["--jobs", "0"], "--jobs 0: expected at least 1"),
        (["--address", "1.2.3.4:6379"], "--address is a Ray cluster's; add --executor ray"),
    ]
    for flags, message in cases:
        result = CliRunner().invoke(cli, ["sweep", grid, "--out", out, *flags])
        assert result.exit_code == 2 and message in result.output, result.output
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # Ray not installed
    result = CliRunner().invoke(cli, ["sweep", grid, "--out", out, "--executor", "ray"])
    assert result.exit_code == 2
    assert "pip install 'tokenfleet[ray]'" in result.output
    assert not Path(out).exists()


# ---------------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_table_as_local_processes(local_ray, swept, folder):
    _, table = swept
    out = folder / "out-ray"
    result = CliRunner().invoke(
        cli, ["sweep", str(folder / "grid.toml"), "--out", str(out), "--executor", "ray"]
    )
    assert result.exit_code == 0, result.output
    ray_table = pl.read_parquet(out / "sweep.parquet")
    assert_frame_equal(ray_table, table)
    assert local_ray.is_initialized()  # a Ray the sweep did not start is left running


def test_an_unreachable_ray_address_is_one_line_within_30_s(folder, tmp_path):
    start = time.monotonic()
    result = CliRunner().invoke(
        cli,
        ["sweep", str(folder / "grid.toml"), "--out", str(tmp_path / "o"), "--executor", "ray"]
        + ["--address", "127.0.0.1:9"],
    )
    assert time.monotonic() - start < 30
    assert result.exit_code == 2
    assert "--address 127.0.0.1:9: no Ray cluster answers there" in result.output
