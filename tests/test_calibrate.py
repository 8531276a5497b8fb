"""`tokenfleet calibrate` end to end on the NumPy backend (this machine's CPU) at small sizes:
the profile is written, labelled as a CPU measurement, loads back and drives StepTime; and
every user mistake ends in one line, exit code 2 and no file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tokenfleet.calibrate.fit import gemm_seconds
from tokenfleet.calibrate.microbench import M_QUICK, MEASUREMENT_SCHEMA, model_gemm_shapes
from tokenfleet.cli.main import cli
from tokenfleet.hardware.profile import load_profile
from tokenfleet.models import get_model
from tokenfleet.perf.steptime import StepTime

TINY_MODEL = """
name = "tiny-test"
n_layers = 2
hidden_size = 256
n_heads = 4
n_kv_heads = 2
head_dim = 64
ffn_size = 512
vocab_size = 1000
"""


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, dict]:
    """One quick CPU calibration at a tiny model's layer shapes, shared by the tests below."""
    from click.testing import CliRunner

    folder = tmp_path_factory.mktemp("calibrate")
    model = folder / "tiny.toml"
    model.write_text(TINY_MODEL)
    out = folder / "cpu.toml"
    args = ["calibrate", "--backend", "numpy", "--quick", "--model", str(model), "--tp", "2"]
    result = CliRunner().invoke(cli, [*args, "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output)


def test_cpu_profile_loads_back_labelled_as_a_cpu(calibrated) -> None:
    out, summary = calibrated
    profile = load_profile(str(out))
    assert profile.description.startswith("CPU measurement, not a GPU")
    assert profile.meta["kind"] == "cpu" and profile.meta["backend"] == "numpy"
    assert "not a GPU" in profile.meta["measurement"]
    assert profile.meta["device"]["threads"] >= 1 and profile.meta["device"]["library"]
    assert profile.meta["datasheet_source"].startswith("none")
    for key in ("gemm_eff_max", "attn_eff", "bw_eff", "link_eff"):
        assert 0 < getattr(profile, key) <= 1
    # What the terminal/JSON reports is what the file holds.
    assert summary["kind"] == "cpu" and summary["profile"] == profile.name
    assert summary["measured"] == pytest.approx(profile.meta["measured"])
    assert summary["coefficients"]["bw_eff"]["value"] == profile.bw_eff
    assert Path(summary["measurements_file"]) == out.with_name("cpu.measurements.parquet")


def test_measurements_hold_every_benchmark(calibrated) -> None:
    out, _ = calibrated
    profile = load_profile(str(out))
    table = pq.read_table(out.with_name(profile.meta["measurements_file"]))
    assert table.schema.equals(MEASUREMENT_SCHEMA)
    rows = table.to_pylist()
    gemm = [r for r in rows if r["kind"] == "gemm"]
    shapes = {
        (s.name, s.n, s.k) for s in model_gemm_shapes(get_model(str(out.parent / "tiny.toml")), 2)
    }
    assert {(r["name"], r["n"], r["k"]) for r in gemm} == shapes
    assert {r["m"] for r in gemm} <= set(M_QUICK) and min(r["m"] for r in gemm) == 1
    for r in gemm:
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["tflops"] == pytest.approx(2 * r["m"] * r["n"] * r["k"] / r["median_s"] / 1e12)
    reads = [r for r in rows if r["kind"] == "memory" and r["name"] == "read"]
    assert len(reads) >= 2
    assert min(r["bytes"] for r in reads) >= 2 * profile.meta["device"]["cache_bytes"]
    assert {r["name"] for r in rows if r["kind"] == "memory"} == {"read", "write", "copy"}
    assert [r["kind"] for r in rows].count("launch") == 1


def test_fitted_curve_reproduces_the_measurements_it_reports(calibrated) -> None:
    out, _ = calibrated
    profile = load_profile(str(out))
    table = pq.read_table(out.with_name(profile.meta["measurements_file"])).to_pylist()
    gemm = [r for r in table if r["kind"] == "gemm"]
    m, n, k, s = (np.array([r[c] for r in gemm], dtype=float) for c in ("m", "n", "k", "median_s"))
    predicted = gemm_seconds(
        m, n, k, 4, peak_flops=profile.peak_tflops_bf16 * 1e12,
        gemm_eff_max=profile.gemm_eff_max, gemm_half_tokens=profile.gemm_half_tokens,
        peak_bw_bytes_s=profile.hbm_tb_s * 1e12, bw_eff=profile.bw_eff,
    )  # fmt: skip
    reported = profile.meta["fit"]["gemm_fp32"]
    assert np.abs(predicted / s - 1).max() == pytest.approx(reported["max_residual"], rel=0.01)
    assert reported["points"] == len(gemm)


def test_cpu_profile_drives_steptime(calibrated) -> None:
    out, _ = calibrated
    cpu = load_profile(str(out))
    model = get_model("llama-3.1-8b")
    step = StepTime(model, cpu, tp=1)
    weights_s = model.weight_bytes("bf16") / (cpu.hbm_tb_s * 1e12 * cpu.bw_eff)
    decode = step.step_s(0, 0.0, 1, 1000)
    assert decode >= weights_s  # a decode step reads every weight once
    prefill = step.step_s(2048, 2048 * 2049 / 2, 0, 0)
    flops = (model.flops_per_token_dense - 2 * model.lm_head_params) * 2048  # prefill: no logits
    assert prefill >= flops / (cpu.peak_tflops_bf16 * 1e12)
    gpu = StepTime(model, load_profile("a100-80gb"), tp=1)
    assert decode > 10 * gpu.step_s(0, 0.0, 1, 1000)  # a CPU is no A100, and says so


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/missing/p.toml"], "does not exist"),
        (["--out", "{tmp}"], "name it something.toml"),
        (["--out", "{tmp}/p.json"], "name it something.toml"),
        (["--dtype", "fp16", "--out", "{tmp}/p.toml"], "NumPy has no half-precision"),
        (["--dtype", "int3", "--out", "{tmp}/p.toml"], "choose from fp32, fp64"),
        (["--model", "no-such-model", "--out", "{tmp}/p.toml"], "unknown model"),
        (["--gpu", "no-such-gpu", "--out", "{tmp}/p.toml"], "unknown GPU"),
        (["--tp", "2", "--out", "{tmp}/p.toml"], "give --model too"),
        ([], "--out PROFILE.toml is required"),
        (["--backend", "tpu", "--out", "{tmp}/p.toml"], "'tpu' is not one of"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(runner, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(cli, ["calibrate", "--backend", "numpy", "--quick", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    if "Usage:" not in result.output:
        assert result.output.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_run_options_before_fit_steps_are_refused(runner, tmp_path) -> None:
    result = runner.invoke(
        cli, ["calibrate", "--quick", "fit-steps", "x.csv", "--gpu", "a100-80gb", "--out", "p.toml"]
    )
    assert result.exit_code == 2
    assert "--quick belongs to the measurement run" in result.output


def test_cpu_profile_drives_a_replay(calibrated, runner, tmp_path) -> None:
    out, _ = calibrated
    trace, run = tmp_path / "trace.parquet", tmp_path / "run"
    synth = runner.invoke(cli, ["traces", "synth", str(trace), "--requests", "20", "--seed", "1"])
    assert synth.exit_code == 0, synth.output
    model = str(out.parent / "tiny.toml")
    args = ["replay", str(trace), "--model", model, "--gpu", str(out), "--replicas", "1"]
    result = runner.invoke(cli, [*args, "--out", str(run), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["finished"] == 20
    assert summary["pools"][0]["gpu"] == load_profile(str(out)).name


def test_unwritable_out_directory_is_refused_before_measuring(runner, tmp_path, monkeypatch):
    monkeypatch.setattr("os.access", lambda path, mode: False)  # root ignores chmod
    started = []
    monkeypatch.setattr("tokenfleet.calibrate.backends.open_backend", started.append)
    out = tmp_path / "p.toml"
    result = runner.invoke(cli, ["calibrate", "--backend", "numpy", "--out", str(out)])
    assert result.exit_code == 2
    assert "is not writable; choose another path" in result.output
    assert started == [] and list(tmp_path.iterdir()) == []


def test_cpu_profile_drives_the_steptime_command(calibrated, runner) -> None:
    out, _ = calibrated
    model = str(out.parent / "tiny.toml")
    result = runner.invoke(cli, ["steptime", "--model", model, "--gpu", str(out), "--json", "-"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.output)
    cpu = load_profile(str(out))
    assert table["gpu"] == cpu.name
    step = StepTime(get_model(model), cpu, tp=1)
    decode = [r for r in table["rows"] if r["phase"] == "decode"]
    assert decode, table["rows"][:2]
    for row in decode[:5]:
        expected = step.step_s(0, 0.0, row["batch"], row["batch"] * row["context_tokens"])
        assert row["step_ms"] == pytest.approx(expected * 1e3)
