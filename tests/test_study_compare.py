"""`tokenfleet compare` puts run summaries side by side with differences from the first run."""

import json

import polars as pl
import pytest

from tokenfleet.cli.main import cli
from tokenfleet.errors import UserError
from tokenfleet.study.compare import compare_runs, comparison_frame, flatten, write_table


def write_run(path, summary):
    path.mkdir()
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def pool(name, **fields):
    return {"name": name, "gpu": "h100-sxm", "tp": 1, "batcher": "vllm", "replicas": 1, **fields}


def test_flatten_keeps_numbers_and_text_under_dotted_keys():
    flat = flatten(
        {"a": {"b": 2, "c": {"d": 0.5}}, "name": "x", "ok": True, "rows": [1, 2], "p": None}
    )
    # A flag is text (no percent change of it), plain lists and nulls hold no one figure.
    assert flat == {"a.b": 2, "a.c.d": 0.5, "name": "x", "ok": "true"}


def test_pools_are_keyed_by_name_so_runs_line_up_by_pool_not_position():
    flat = flatten({"pools": [pool("big", replicas=4), {"replicas": 2}]})
    assert flat["pools.big.replicas"] == 4
    assert flat["pools.1.replicas"] == 2  # no name: its position


def test_differences_are_against_the_first_run_and_stay_numbers(tmp_path):
    a = write_run(tmp_path / "owned", {"cost": {"usd": 100.0}, "latency": {"ttft_p99_s": 0.2}})
    b = write_run(tmp_path / "rented", {"cost": {"usd": 150.0}, "latency": {"ttft_p99_s": 0.2}})
    (row,) = compare_runs([a, b]).rows()
    assert row["figure"] == "cost.usd"
    assert row["owned"] == 100.0 and row["rented"] == 150.0
    assert row["rented - owned"] == pytest.approx(50.0)
    assert row["rented vs owned %"] == pytest.approx(50.0)


def test_figures_of_one_run_only_and_nested_ones_are_compared_not_refused(tmp_path):
    # The replay summary grows keys over time: an old run lacks them, a new one nests them.
    old = write_run(tmp_path / "old", {"requests": 10, "load": 0.5})
    new = write_run(
        tmp_path / "new",
        {"requests": 12, "load": {"mean": 0.5, "peak": 0.9}, "model": {"name": "m", "tp": 2}},
    )
    rows = {r["figure"]: r for r in compare_runs([old, new]).rows()}
    assert rows["load"]["old"] == 0.5 and rows["load"]["new"] is None
    assert rows["load.peak"]["old"] is None and rows["load.peak"]["new"] == 0.9
    assert rows["load.peak"]["new - old"] is None
    assert rows["model.name"]["new"] == "m" and rows["model.name"]["new - old"] is None
    assert rows["requests"]["new - old"] == 2


def test_last_bit_noise_is_not_a_difference(tmp_path):
    a = write_run(tmp_path / "a", {"revenue": 0.07045420000000001, "x": 1.0})
    b = write_run(tmp_path / "b", {"revenue": 0.0704542, "x": 2.0})
    assert [r["figure"] for r in compare_runs([a, b]).rows()] == ["x"]


def test_parquet_keeps_numbers_as_numbers_and_text_apart(tmp_path):
    a = write_run(tmp_path / "a", {"x": 1, "gpu": "h100-sxm"})
    b = write_run(tmp_path / "b", {"x": 2.5, "gpu": "a100-80gb"})
    comparison = compare_runs([a, b])
    write_table(comparison_frame(comparison, comparison.rows()), tmp_path / "cmp.parquet")
    table = pl.read_parquet(tmp_path / "cmp.parquet")
    assert table.schema["a"] == pl.Float64 and table.schema["b - a"] == pl.Float64
    rows = {r["figure"]: r for r in table.to_dicts()}
    assert rows["x"]["b"] == 2.5 and rows["x"]["b vs a %"] == pytest.approx(150.0)
    assert rows["gpu"]["a"] is None and rows["gpu"]["a text"] == "h100-sxm"


def test_cli_hides_equal_figures_unless_asked(tmp_path, runner):
    a = write_run(tmp_path / "a", {"x": 1.0, "y": 2.0})
    b = write_run(tmp_path / "b", {"x": 1.0, "y": 3.0})
    result = runner.invoke(cli, ["compare", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"figure": "y", "a": 2.0, "b": 3.0, "b - a": 1.0, "b vs a %": 50.0}
    ]
    result = runner.invoke(cli, ["compare", str(a), str(b), "--json", "--all"])
    assert [row["figure"] for row in json.loads(result.stdout)] == ["x", "y"]


def test_the_table_is_aligned_with_whole_figure_names_and_the_pools_lined_up(tmp_path, runner):
    long = "economics.tenants.some-tenant-with-a-long-name.usd_per_mtoken.blended"
    a = write_run(tmp_path / "a", {"pools": [pool("default", cost_usd=0.5)], long: 1250.0, "n": 2})
    b = write_run(
        tmp_path / "b",
        {"pools": [pool("default", replicas=3, cost_usd=1.5)], long: 1000.0, "n": 2},
    )
    result = runner.invoke(cli, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    pools, figures, hidden = result.output.rstrip("\n").split("\n\n")
    assert pools.splitlines() == [
        "run  pool     GPU       tp  batcher  replicas  cost $",
        "a    default  h100-sxm   1  vllm            1     0.5",
        "b    default  h100-sxm   1  vllm            3     1.5",
    ]
    lines = figures.splitlines()
    assert lines[0].split() == ["figure", "a", "b", "b", "-", "a", "b", "vs", "a"]
    row = next(line for line in lines if line.startswith(long + " "))
    assert row.split()[1:] == ["1,250", "1,000", "-250", "-20.0%"]
    assert len({len(line) for line in lines}) == 1  # right-aligned to one width
    assert "shape:" not in result.output and "…" not in result.output
    assert "pools.default.replicas" in figures  # a pool's figures are compared too
    assert hidden.startswith("(") and "--all" in hidden  # n is equal, and said to be hidden


def test_runs_equal_in_every_figure_say_so(tmp_path, runner):
    a = write_run(tmp_path / "a", {"x": 1.0})
    b = write_run(tmp_path / "b", {"x": 1.0})
    result = runner.invoke(cli, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert result.output == "no figure differs between the runs (--all shows all 1)\n"


def test_a_directory_without_summary_is_one_line_exit_2(tmp_path, runner):
    a = write_run(tmp_path / "a", {"x": 1.0})
    (tmp_path / "empty").mkdir()
    out = tmp_path / "cmp.parquet"
    result = runner.invoke(cli, ["compare", str(a), str(tmp_path / "empty"), "--parquet", str(out)])
    assert result.exit_code == 2
    assert "no summary.json" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text file (byte 0 is not UTF-8)"),
        (b"[1, 2]", "holds a JSON list, not a replay summary"),
        (b'"run"', "holds a JSON string, not a replay summary"),
        (b"{}", "holds no figures"),
        (b'{"model": {"name": "m"}, "pools": []}', "holds no figures"),
        (b"{not json", "not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_a_summary_that_is_not_one_is_refused_naming_the_file(tmp_path, runner, content, message):
    a = write_run(tmp_path / "a", {"x": 1.0})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "summary.json").write_bytes(content)
    with pytest.raises(UserError, match="b/summary.json: ") as err:
        compare_runs([a, tmp_path / "b"])
    assert message in str(err.value)
    result = runner.invoke(cli, ["compare", str(a), str(tmp_path / "b")])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


@pytest.mark.parametrize("target", ["summary.json", "requests.parquet", "new.parquet", "."])
def test_parquet_into_a_run_directory_is_refused_and_the_run_stays_comparable(
    tmp_path, runner, target
):
    a = write_run(tmp_path / "a", {"x": 1.0})
    b = write_run(tmp_path / "b", {"x": 2.0})
    (a / "requests.parquet").write_bytes(b"PAR1 the user's records")
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    out = a / target
    result = runner.invoke(cli, ["compare", str(a), str(b), "--parquet", str(out)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: --parquet {out}: lies inside run directory {a}, which this command reads; "
        "choose a path outside it\n"
    )
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before
    assert runner.invoke(cli, ["compare", str(a), str(b)]).exit_code == 0


def test_a_directory_as_parquet_output_is_refused_naming_the_flag(tmp_path, runner):
    a = write_run(tmp_path / "a", {"x": 1.0})
    b = write_run(tmp_path / "b", {"x": 2.0})
    comparison = compare_runs([a, b])
    with pytest.raises(UserError, match="is a directory") as err:
        write_table(comparison_frame(comparison, comparison.rows()), tmp_path)
    assert "--" not in str(err.value)
    result = runner.invoke(cli, ["compare", str(a), str(b), "--parquet", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --parquet {tmp_path}: is a directory")


def test_parquet_where_no_file_can_be_made_is_one_line(tmp_path, runner):
    a = write_run(tmp_path / "a", {"x": 1.0})
    b = write_run(tmp_path / "b", {"x": 2.0})
    result = runner.invoke(cli, ["compare", str(a), str(b), "--parquet", "/proc/x.parquet"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --parquet /proc/x.parquet: cannot write in /proc")
    assert result.stderr.count("\n") == 1


def test_one_run_is_not_a_comparison(tmp_path):
    with pytest.raises(UserError, match="at least two"):
        compare_runs([write_run(tmp_path / "a", {"x": 1.0})])


def test_a_run_named_like_a_column_gets_its_own_label(tmp_path):
    a = write_run(tmp_path / "figure", {"x": 1.0})
    b = write_run(tmp_path / "b", {"x": 2.0})
    assert compare_runs([a, b]).labels == ["figure#2", "b"]
