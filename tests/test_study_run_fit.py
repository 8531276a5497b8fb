"""Fitting an engine preset's overheads to measured runs (study/run_fit.py): the fit recovers
overheads it did not start from, from figures a known preset produced, and writes a preset
the loader reads back."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tokenfleet.cli.main import cli
from tokenfleet.hardware.profile import load_engine
from tokenfleet.study.measured_runs import load_runs, predict
from tokenfleet.study.run_fit import FITTED_KEYS, fit_overheads, shortened, write_preset


@pytest.fixture(scope="module")
def two_runs(shared_data):
    runs = load_runs(shared_data / "measured" / "vllm_h100_runs.json")
    # two models, two GPUs counts: a 7B at TP 1 and a 70B at TP 4, a minute a stage
    picked = [next(r for r in runs if r.model == m and not r.saturated)
              for m in ("qwen2.5-7b", "llama-3.1-70b")]  # fmt: skip
    return [shortened(r, 40.0) for r in picked]


def test_the_fit_recovers_the_overheads_that_made_the_figures(two_runs, tmp_path):
    """The frontend's time and the per-step overhead, from 0 and 0.8 ms, back to 12 and 1.6.
    (The per-sequence overhead is held: on two runs whose batches vary little it moves the
    figures almost as the per-step one does, and the pair is not identifiable there. The
    engine schedules synchronously here: with async scheduling each TTFT holds one step more,
    whose phase against the arrivals makes the figures jump as the step's length moves, and
    these two 40-second runs give back 12.8 and 1.44. The preset's per-step sampler term is
    set to 0: both runs sample with top-p, so it adds to every step as the per-step overhead
    does, and with it at its fitted 0.5 ms the fit stops at 1.25.)"""
    vllm = load_engine("vllm-v1")
    start = dataclasses.replace(vllm, name="start", aliases=(), frontend_out_ms=0.0,
                                step_overhead_ms=0.8, async_scheduling=False,
                                sampler_filter_ms=0.0)  # fmt: skip
    truth = dataclasses.replace(start, name="truth", frontend_out_ms=12.0, step_overhead_ms=1.6)
    engine = str(write_preset(truth, tmp_path / "truth.toml"))
    # the "measurements": what the known preset predicts, run by run
    measured = [dataclasses.replace(r, measured=predict(r, engine)) for r in two_runs]
    keys = FITTED_KEYS[:2]
    fit = fit_overheads(measured, base=str(write_preset(start, tmp_path / "start.toml")), keys=keys)
    assert fit.keys == ("frontend_out_ms", "step_overhead_ms") and fit.base.name == "start"
    assert fit.preset.frontend_out_ms == pytest.approx(12.0, rel=0.02)
    assert fit.preset.step_overhead_ms == pytest.approx(1.6, rel=0.05)
    # the untouched keys keep the base's values; the written preset reads back
    assert fit.preset.layer_launch_us == fit.base.layer_launch_us
    back = load_engine(str(write_preset(fit.preset, tmp_path / "fitted.toml")))
    assert back == fit.preset


def small_runs_file(shared_data, tmp_path, truth_engine: str, ttft_ms: float | None = None):
    """Two real runs cut to 30 s a stage, their figures those `truth_engine` predicts (TTFT
    replaced by `ttft_ms` where given), as a measured-runs file."""
    doc = json.loads((shared_data / "measured" / "vllm_h100_runs.json").read_text())
    keep = [r for r in doc["runs"] if r["id"] in ("64", "60")]
    for raw in keep:
        raw["workload"]["stages"] = [[rate, 30.0] for rate, _ in raw["workload"]["stages"]]
    doc["runs"] = keep
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(doc))
    for raw, run in zip(keep, load_runs(path), strict=True):
        figures = predict(run, truth_engine)
        raw["measured"]["stages"] = [dict(f) for f in figures]
        if ttft_ms is not None:
            for stage in raw["measured"]["stages"]:
                stage.update(ttft_mean_ms=ttft_ms, ttft_p90_ms=ttft_ms, ttft_p99_ms=ttft_ms)
    path.write_text(json.dumps(doc))
    return path


def test_calibrate_fit_runs_writes_the_preset_and_its_report(shared_data, tmp_path, runner):
    truth = dataclasses.replace(load_engine("vllm-v1"), name="t", aliases=(), frontend_out_ms=9.0)
    engine = str(write_preset(truth, tmp_path / "truth.toml"))
    runs = small_runs_file(shared_data, tmp_path, engine)
    out = tmp_path / "fitted.toml"
    args = ["calibrate", "fit-runs", str(runs), "--train", "qwen2.5-7b", "--out", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    fitted = load_engine(str(out))
    assert fitted.name == "vllm-v1-runs"
    assert fitted.frontend_out_ms == pytest.approx(9.0, rel=0.1)
    report = json.loads(out.with_suffix(".fit.json").read_text())
    assert report["fitted_to_runs"] == ["64"] and report["held_out_models"] == ["llama-3.1-70b"]
    held = report["held_out"]["after"]["summary"]["ttft_mean_ms"]["median_abs_pct"]
    assert held < report["held_out"]["before"]["ttft_mean_ms"]["median_abs_pct"]
    # The preset says what it was fitted to and its held-out error, as the report has it.
    assert "qwen2.5-7b" in fitted.fitted_to and "llama-3.1-70b" not in fitted.fitted_to
    e2e = report["held_out"]["after"]["summary"]["e2e_mean_ms"]["median_abs_pct"]
    assert f"held out: median |error| E2E mean {e2e:.1f}%" in fitted.fit_error
    # and the printed report has each figure's median and max on the held-out half
    worst = report["held_out"]["after"]["summary"]["e2e_mean_ms"]["max_abs_pct"]
    assert f"->{e2e:>6.1f}%  (max {worst:.1f}%)" in result.output


def test_calibrate_fit_runs_refuses_a_poor_fit_naming_the_runs(shared_data, tmp_path, runner):
    """A TTFT of 1 ms is below any prefill: no overheads reach it; nothing is written, unless
    --accept-poor-fit."""
    runs = small_runs_file(shared_data, tmp_path, "vllm-v1", ttft_ms=1.0)
    out = tmp_path / "fitted.toml"
    result = runner.invoke(cli, ["calibrate", "fit-runs", str(runs), "--out", str(out)])
    assert result.exit_code == 2
    assert "a poor fit, not written" in result.output and "ttft_mean_ms" in result.output
    assert "worst runs: " in result.output and not out.exists()
    kept = runner.invoke(
        cli, ["calibrate", "fit-runs", str(runs), "--out", str(out), "--accept-poor-fit"]
    )
    assert kept.exit_code == 0 and out.exists()
    assert "kept a poor fit" in kept.output
