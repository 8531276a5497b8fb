"""`tokenfleet report`: every figure drawn from real runs (an Azure conv slice, a frontier over
it), at its size and not blank; the page links each and names the run; the cost gap's factors
multiply to the runs' real ratio; a real browser renders the page; bad input is one line."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import TRACES
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tokenfleet.cli.main import cli
from tokenfleet.replay.run import run_replay
from tokenfleet.replay.scenario import load_scenario
from tokenfleet.report.build import PAGE_FILE, write_report
from tokenfleet.report.inputs import load_run
from tokenfleet.report.replay_figures import cost_components
from tokenfleet.report.study_figures import Point, draw_frontier, gap_factors
from tokenfleet.report.style import DPI, FIGSIZE, cdf_points, colours
from tokenfleet.study.frontier import run_frontier
from tokenfleet.traces.convert import convert_trace

WIDTH, HEIGHT = round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)

# Two tiers with SLOs and prices, on rented GPUs; the same with owned GPUs.
RENTED = """
[[tiers]]
name = "standard"
ttft_slo_s = 0.2
tpot_slo_s = 0.02
[[pools]]
name = "rented"
gpu = "h100-sxm"
replicas = 2
"""
OWNED = """
[[tiers]]
name = "standard"
ttft_slo_s = 0.2
tpot_slo_s = 0.02
[[pools]]
name = "owned"
gpu = "h100-sxm"
replicas = 1
[pools.pricing]
kind = "owned"
"""


@pytest.fixture(scope="module")
def conv_trace(tmp_path_factory, shared_data) -> Path:
    """The first 500 requests of the Azure 2023 conversation trace."""
    path = tmp_path_factory.mktemp("trace") / "conv.parquet"
    convert_trace(TRACES / "AzureLLMInferenceTrace_conv.csv", path, limit=500)
    return path


def replay(trace: Path, tmp: Path, name: str, scenario_text: str) -> Path:
    scenario_file = tmp / f"{name}.toml"
    scenario_file.write_text(scenario_text)
    out = tmp / name
    run_replay(trace, load_scenario(scenario_file), out)
    return out


@pytest.fixture(scope="module")
def runs(conv_trace, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    return {
        "rented": replay(conv_trace, tmp, "rented", RENTED),
        "owned": replay(conv_trace, tmp, "owned", OWNED),
    }


@pytest.fixture(scope="module")
def frontier_dir(conv_trace, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("frontier") / "fr"
    run_frontier(conv_trace, load_scenario(None), out, [("max_num_seqs", [2, 16, 256])], jobs=1)
    return out


def check_png(path: Path) -> np.ndarray:
    """The figure is there, at the size every figure has, and has something drawn on it."""
    assert path.is_file(), path
    image = Image.open(path)
    assert image.size == (WIDTH, HEIGHT), path
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 10, f"{path} looks blank (pixel std {pixels.std():.1f})"
    return pixels


def test_a_replay_report_draws_each_figure_and_a_page_naming_the_run(runs, tmp_path):
    out = tmp_path / "report"
    report = write_report([runs["rented"]], out)
    names = sorted(p.name for p in report.figures)
    assert names == ["latency.png", "money.png", "timeline.png"]
    for name in names:
        check_png(out / name)
    html = (out / PAGE_FILE).read_text()
    for name in names:
        assert f'src="{name}"' in html
    assert "llama-3.1-8b" in html and "h100-sxm" in html
    assert "conv.parquet" in html and "least-requests" in html  # trace and balancer


def test_the_figures_differ_between_runs_so_they_show_the_run(runs, tmp_path):
    a = write_report([runs["rented"]], tmp_path / "a")
    b = write_report([runs["owned"]], tmp_path / "b")
    money_a = np.asarray(Image.open(a.page.parent / "money.png").convert("L"), dtype=float)
    money_b = np.asarray(Image.open(b.page.parent / "money.png").convert("L"), dtype=float)
    assert np.abs(money_a - money_b).mean() > 1.0  # owned: capital, opex, power bars


def test_owned_cost_components_add_up_to_the_pools_cost(runs):
    run = load_run(runs["owned"], "owned")
    parts = cost_components(run)["owned"]
    assert set(parts) == {"capital", "opex", "power"}
    assert all(v > 0 for v in parts.values())
    assert math.isclose(sum(parts.values()), run.summary["pools"][0]["cost_usd"], rel_tol=1e-9)
    rented = load_run(runs["rented"], "rented")
    assert cost_components(rented) == {
        "rented": {"on-demand rent": rented.summary["pools"][0]["cost_usd"]}
    }


def test_several_runs_are_set_side_by_side_and_the_gap_factors_multiply_to_the_real_ratio(
    runs, tmp_path
):
    out = tmp_path / "cmp"
    report = write_report([runs["owned"], runs["rented"]], out)
    names = {p.name for p in report.figures}
    assert {"runs.png", "runs-latency.png", "gap.png", "money-1.png", "money-2.png"} <= names
    for name in names:
        check_png(out / name)
    owned, rented = load_run(runs["owned"], "owned"), load_run(runs["rented"], "rented")

    def per_mtoken(run) -> float:
        return run.summary["economics"]["fleet"]["usd_per_mtoken"]["blended"]

    factors = gap_factors(owned, rented, None)
    assert factors[0].name.startswith("ownership")  # owned against rented
    assert math.isclose(
        math.prod(f.ratio for f in factors), per_mtoken(rented) / per_mtoken(owned), rel_tol=1e-9
    )
    # A third run splits the GPU-hours factor; the product is still the real ratio.
    split = gap_factors(owned, rented, rented)
    assert [f.name for f in split][1:3] == [
        "utilisation and backfill (GPU-hours)",
        "caching (GPU-hours)",
    ]
    assert math.isclose(split[2].ratio, 1.0)
    assert math.isclose(
        math.prod(f.ratio for f in split), per_mtoken(rented) / per_mtoken(owned), rel_tol=1e-9
    )


def test_a_frontier_report_marks_the_pareto_runs_and_tabulates_them(frontier_dir, tmp_path):
    out = tmp_path / "fr-report"
    report = write_report([frontier_dir], out)
    assert [p.name for p in report.figures] == ["frontier.png"]
    check_png(out / "frontier.png")
    html = (out / PAGE_FILE).read_text()
    table = pl.read_parquet(frontier_dir / "frontier.parquet")
    for label in table["run"]:
        assert f"<td>{label}</td>" in html
    assert "max_num_seqs" in html


def test_a_one_point_frontier_draws_its_point_and_no_line():
    fig = draw_frontier([Point("max_num_seqs=8", 50.0, 900.0, 0.3, True)], "one")
    for ax in fig.axes:
        assert len(ax.lines) == 0  # no Pareto line through one point
        assert sum(len(c.get_offsets()) for c in ax.collections) == 1
    two = draw_frontier(
        [Point("a", 50.0, 900.0, 0.3, True), Point("b", 80.0, 500.0, 0.6, True)], "two"
    )
    assert all(len(ax.lines) == 1 for ax in two.axes)


@given(st.lists(st.floats(1e-6, 1e6), min_size=1, max_size=3000))
def test_a_cdf_is_drawn_from_order_statistics_that_keep_both_tails(values):
    data = np.sort(np.array(values))
    x, y = cdf_points(data)
    assert len(x) <= 512
    assert x[0] == data[0] and x[-1] == data[-1] and y[-1] == 1.0
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) > 0)
    # F(x) is the share of samples <= x, up to ties.
    assert np.all(np.searchsorted(data, x, side="right") >= np.round(y * len(data)))


def test_a_tier_keeps_its_colour_whatever_else_is_drawn():
    assert colours(["fast", "standard"])["fast"] == colours(["batch", "fast", "x"])["fast"]
    many = colours([f"t{i}" for i in range(12)])
    assert len(set(list(many.values())[:10])) == 10


def test_replay_and_frontier_write_their_report_with_report(conv_trace, tmp_path, runner):
    out = tmp_path / "run"
    result = runner.invoke(cli, ["replay", str(conv_trace), "--out", str(out), "--report", "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "report" / PAGE_FILE).is_file()
    check_png(out / "report" / "latency.png")
    fr = tmp_path / "fr"
    args = ["frontier", str(conv_trace), "--vary", "max_num_seqs=8", "--out", str(fr)]
    result = runner.invoke(cli, [*args, "--jobs", "1", "--report", "--json", "-q"])
    assert result.exit_code == 0, result.output
    check_png(fr / "report" / "frontier.png")  # a one-row frontier: its point
    assert result.stdout.lstrip().startswith("[")  # --json keeps stdout the table


def bad(runner, args: list[str], message: str) -> None:
    result = runner.invoke(cli, ["report", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_bad_input_is_one_line_and_leaves_no_report(runs, tmp_path, runner):
    out = tmp_path / "out"
    bad(runner, [str(tmp_path), "--out", str(out)], "no summary.json or frontier.parquet")
    bad(runner, [str(tmp_path / "nope"), "--out", str(out)], "no such directory")
    cut = tmp_path / "cut"
    shutil.copytree(runs["rented"], cut, ignore=shutil.ignore_patterns("report"))
    data = (cut / "requests.parquet").read_bytes()
    (cut / "requests.parquet").write_bytes(data[: len(data) // 2])
    bad(runner, [str(cut), "--out", str(out)], "requests.parquet: not readable as Parquet")
    bad(runner, [str(runs["rented"]), "--out", str(runs["rented"])], "would delete")
    bad(
        runner,
        [str(runs["rented"]), "--caching-run", str(runs["owned"]), "--out", str(out)],
        "--caching-run needs two replay directories",
    )
    assert not out.exists()


def test_a_frontier_table_with_no_rows_is_refused(frontier_dir, tmp_path, runner):
    empty = tmp_path / "empty"
    empty.mkdir()
    pl.read_parquet(frontier_dir / "frontier.parquet").head(0).write_parquet(
        empty / "frontier.parquet"
    )
    bad(runner, [str(empty), "--out", str(tmp_path / "o")], "holds no runs")


BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,900",
]


def screenshot(browser: str, page: Path, tmp: Path) -> np.ndarray:
    shot = tmp / f"{page.stem}-shot.png"
    profile = tmp / f"{page.stem}-profile"
    subprocess.run(
        [
            browser,
            *BROWSER_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=25,
    )
    return np.asarray(Image.open(shot).convert("RGB"), dtype=float)


def test_a_real_browser_renders_the_page_with_its_title_and_figures(runs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("TOKENFLEET_REQUIRE_BROWSER"):
            pytest.fail("CI installs Chromium (.ci/run) but no chromium binary is on PATH")
        pytest.skip("no Chromium here (Debian: apt-get install chromium); CI installs it")
    out = tmp_path / "report"
    write_report([runs["rented"]], out)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    page = screenshot(browser, out / PAGE_FILE, tmp_path)
    empty = screenshot(browser, blank, tmp_path)
    assert page.shape == empty.shape
    assert empty.std() < 1.0  # a blank render is one colour
    title = page[:90].mean(axis=2)  # the <h1> band at the top
    assert (title < 100).mean() > 0.002, "no dark title text at the top of the page"
    assert np.abs(page - empty).mean() > 5.0
