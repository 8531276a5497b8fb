"""`tokenfleet compare` puts run summaries side by side with differences from the first run."""

import json

import polars as pl
import pytest

from tokenfleet.cli.main import cli
from tokenfleet.errors import UserError
from tokenfleet.study.compare import compare_runs, flatten, write_table


def write_run(path, summary):
    path.mkdir()
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_flatten_keeps_numbers_and_strings_under_dotted_keys():
    flat = flatten({"a": {"b": 2, "c": {"d": 0.5}}, "name": "x", "ok": True, "rows": [1, 2]})
    assert flat == {"a.b": 2.0, "a.c.d": 0.5, "name": "x", "ok": 1.0}


def test_differences_are_against_the_first_run(tmp_path):
    a = write_run(tmp_path / "owned", {"cost": {"usd": 100.0}, "latency": {"ttft_p99_s": 0.2}})
    b = write_run(tmp_path / "rented", {"cost": {"usd": 150.0}, "latency": {"ttft_p99_s": 0.2}})
    table = compare_runs([a, b]).filter(pl.col("figure") == "cost.usd").row(0, named=True)
    assert table["owned"] == "100" and table["rented"] == "150"
    assert table["rented - owned"] == pytest.approx(50.0)
    assert table["rented vs owned %"] == pytest.approx(50.0)


def test_cli_hides_equal_figures_unless_asked(tmp_path, runner):
    a = write_run(tmp_path / "a", {"x": 1.0, "y": 2.0})
    b = write_run(tmp_path / "b", {"x": 1.0, "y": 3.0})
    result = runner.invoke(cli, ["compare", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    assert [row["figure"] for row in json.loads(result.output)] == ["y"]
    result = runner.invoke(cli, ["compare", str(a), str(b), "--json", "--all"])
    assert [row["figure"] for row in json.loads(result.output)] == ["x", "y"]


def test_a_directory_without_summary_is_one_line_exit_2(tmp_path, runner):
    a = write_run(tmp_path / "a", {"x": 1.0})
    (tmp_path / "empty").mkdir()
    out = tmp_path / "cmp.parquet"
    result = runner.invoke(cli, ["compare", str(a), str(tmp_path / "empty"), "--parquet", str(out)])
    assert result.exit_code == 2
    assert "no summary.json" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_directory_as_parquet_output_is_refused_naming_the_flag(tmp_path, runner):
    a = write_run(tmp_path / "a", {"x": 1.0})
    b = write_run(tmp_path / "b", {"x": 2.0})
    with pytest.raises(UserError, match="is a directory") as err:
        write_table(compare_runs([a, b]), tmp_path)
    assert "--" not in str(err.value)
    result = runner.invoke(cli, ["compare", str(a), str(b), "--parquet", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --parquet {tmp_path}: is a directory")


def test_one_run_is_not_a_comparison(tmp_path):
    with pytest.raises(UserError, match="at least two"):
        compare_runs([write_run(tmp_path / "a", {"x": 1.0})])
