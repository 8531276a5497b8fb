"""Fitting an engine preset's overheads to measured runs (study/run_fit.py): the fit recovers
overheads it did not start from, from figures a known preset produced, and writes a preset
the loader reads back."""

from __future__ import annotations

import dataclasses

import pytest

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
    figures almost as the per-step one does, and the pair is not identifiable there.)"""
    truth = dataclasses.replace(
        load_engine("vllm-v1"), name="truth", aliases=(), frontend_out_ms=12.0, step_overhead_ms=1.6
    )
    engine = str(write_preset(truth, tmp_path / "truth.toml"))
    # the "measurements": what the known preset predicts, run by run
    measured = [dataclasses.replace(r, measured=predict(r, engine)) for r in two_runs]
    keys = FITTED_KEYS[:2]
    fit = fit_overheads(measured, base="vllm-v1", keys=keys)
    assert fit.keys == ("frontend_out_ms", "step_overhead_ms") and fit.base.name == "vllm-v1"
    assert fit.preset.frontend_out_ms == pytest.approx(12.0, rel=0.02)
    assert fit.preset.step_overhead_ms == pytest.approx(1.6, rel=0.05)
    # the untouched keys keep the base's values; the written preset reads back
    assert fit.preset.layer_launch_us == fit.base.layer_launch_us
    back = load_engine(str(write_preset(fit.preset, tmp_path / "fitted.toml")))
    assert back == fit.preset
