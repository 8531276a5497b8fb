"""`tokenfleet calibrate` end to end on the NumPy backend (this machine's CPU) at small sizes:
the profile is written, labelled as a CPU measurement, loads back and drives StepTime; and
every user mistake ends in one line, exit code 2 and no file."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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
    """One quick CPU calibration at a tiny model's layer shapes, shared by the tests below. A
    busy host may bend its fit below the R² threshold: accepted here, since these tests check
    what is written, not how idle the machine was."""
    from click.testing import CliRunner

    folder = tmp_path_factory.mktemp("calibrate")
    model = folder / "tiny.toml"
    model.write_text(TINY_MODEL)
    out = folder / "cpu.toml"
    args = ["calibrate", "--backend", "numpy", "--quick", "--model", str(model), "--tp", "2"]
    result = CliRunner().invoke(cli, [*args, "--accept-poor-fit", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_cpu_profile_loads_back_labelled_as_a_cpu(calibrated) -> None:
    out, summary = calibrated
    profile = load_profile(str(out))
    assert profile.description.startswith("CPU measurement, not a GPU")
    assert profile.meta["kind"] == "cpu" and profile.meta["backend"] == "numpy"
    assert "not a GPU" in profile.meta["measurement"]
    assert profile.meta["device"]["threads"] >= 1 and profile.meta["device"]["library"]
    assert profile.meta["datasheet_source"].startswith("none")
    assert profile.measured_on_cpu and not load_profile("a100-80gb").measured_on_cpu
    assert profile.meta["settings"] == {"model": str(out.parent / "tiny.toml"), "tp": 2,
                                        "dtypes": ["fp32"]}  # fmt: skip
    # An fp32 measurement is an fp32 peak: no 16-bit figure was measured.
    assert profile.peak_tflops_bf16 == 0 and profile.peak_tflops_fp32 > 0
    assert profile.peak_flops("bf16") == profile.peak_tflops_fp32 * 1e12
    best = profile.meta["measured"]["best_tflops"]
    assert profile.peak_tflops_fp32 == pytest.approx(best, rel=1e-5)
    for key in ("gemm_eff_max", "attn_eff", "bw_eff", "link_eff"):
        assert 0 < getattr(profile, key) <= 1
    # What the terminal/JSON reports is what the file holds.
    assert summary["kind"] == "cpu" and summary["profile"] == profile.name
    assert summary["measured"] == pytest.approx(profile.meta["measured"])
    assert summary["coefficients"]["bw_eff"]["value"] == profile.bw_eff
    # The coefficients reported are the fit's own, not a rescaled copy.
    fit = profile.meta["fit"]["gemm_fp32"]
    assert profile.gemm_eff_max == pytest.approx(fit["gemm_eff_max"], rel=1e-5)
    assert profile.peak_tflops_fp32 == pytest.approx(fit["peak_tflops"], rel=1e-5)
    assert summary["coefficients"]["gemm_eff_max"]["value"] == profile.gemm_eff_max
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
    # Every read streams from memory, not cache, where memory leaves room for two such sizes.
    largest = max(r["bytes"] for r in reads)
    cache = profile.meta["device"]["cache_bytes"]
    assert min(r["bytes"] for r in reads) >= min(2 * cache, largest * 0.75 * 0.99)
    assert {r["name"] for r in rows if r["kind"] == "memory"} == {"read", "write", "copy"}
    assert [r["kind"] for r in rows].count("launch") == 1


def test_fitted_curve_reproduces_the_measurements_it_reports(calibrated) -> None:
    out, _ = calibrated
    profile = load_profile(str(out))
    table = pq.read_table(out.with_name(profile.meta["measurements_file"])).to_pylist()
    gemm = [r for r in table if r["kind"] == "gemm"]
    m, n, k, s = (np.array([r[c] for r in gemm], dtype=float) for c in ("m", "n", "k", "median_s"))
    predicted = gemm_seconds(
        m, n, k, 4, peak_flops=profile.peak_tflops_fp32 * 1e12,
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
    read = model.weight_bytes("bf16") - 2 * model.embedding_params  # the table: a row lookup
    weights_s = read / (cpu.hbm_tb_s * 1e12 * cpu.bw_eff)
    decode = step.step_s(0, 0.0, 1, 1000)
    assert decode >= weights_s  # a decode step reads every weight once
    prefill = step.step_s(2048, 2048 * 2049 / 2, 0, 0)
    flops = (model.flops_per_token_dense - 2 * model.lm_head_params) * 2048  # prefill: no logits
    assert prefill >= flops / (cpu.peak_tflops_fp32 * 1e12)
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
        (["--gpu", "a100-80gb", "--out", "{tmp}/p.toml"], "not compared with a GPU's datasheet"),
        (["--tp", "2", "--out", "{tmp}/p.toml"], "give --model too"),
        (["--model", "llama-3.1-8b", "--tp", "0", "--out", "{tmp}/p.toml"], "not in the range"),
        (["--model", "llama-3.1-8b", "--tp", "3", "--out", "{tmp}/p.toml"], "does not divide"),
        (["--device", "3", "--out", "{tmp}/p.toml"], "--backend numpy measures the CPU"),
        (["--dtype", "fp64", "--out", "{tmp}/p.toml"], "list fp32 first"),
        (["--dtype", "fp32,fp32", "--out", "{tmp}/p.toml"], "fp32 is listed twice"),
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
    summary = json.loads(result.stdout)
    assert summary["finished"] == 20
    assert summary["pools"][0]["gpu"] == load_profile(str(out)).name
    warning = f"warning: pool 'default': gpu = {out} describes a CPU (calibrated with NumPy)\n"
    assert result.stderr == warning
    args[args.index("--gpu") + 1] = "a100-80gb"  # a GPU profile: no warning
    gpu = runner.invoke(cli, [*args, "--out", str(tmp_path / "gpu"), "--json", "--quiet"])
    assert gpu.exit_code == 0 and gpu.stderr == ""
    steptime = ["steptime", "--model", model, "--gpu", str(out)]
    table = runner.invoke(cli, steptime)
    assert table.exit_code == 0 and table.stderr == (
        f"warning: --gpu {out} describes a CPU (calibrated with NumPy)\n"
    )


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
    table = json.loads(result.stdout)
    cpu = load_profile(str(out))
    assert table["gpu"] == cpu.name
    step = StepTime(get_model(model), cpu, tp=1)
    decode = [r for r in table["rows"] if r["phase"] == "decode"]
    assert decode, table["rows"][:2]
    for row in decode[:5]:
        expected = step.step_s(0, 0.0, row["batch"], row["batch"] * row["context_tokens"])
        assert row["step_ms"] == pytest.approx(expected * 1e3)


def cpu_rows(gemm_seconds_at=None) -> list[dict]:
    """Microbenchmark rows a 2-core CPU gives: an fp32 GEMM curve (0.1 TFLOPS, half at 40
    tokens) with one lucky point 30% fast, as a shared host makes them, reads at 18 GB/s.
    `gemm_seconds_at(m)` replaces the curve."""
    rows = []
    n = k = 1024
    for m in M_QUICK:
        t = 2 * m * n * k / (0.1e12 * m / (m + 40)) * (0.7 if m == 4096 else 1.0)
        t = gemm_seconds_at(m) if gemm_seconds_at else t
        rows.append(_row("gemm", "square-1024", "fp32", t, m=m, n=n, k=k, flops=2.0 * m * n * k))
    for part in (64 << 20, 96 << 20, 128 << 20, 192 << 20, 256 << 20):
        rows.append(_row("memory", "read", "fp32", 2e-6 + part / 18e9, bytes=part))
    rows.append(_row("memory", "write", "fp32", (256 << 20) / 9e9, bytes=256 << 20))
    rows.append(_row("memory", "copy", "fp32", (512 << 20) / 9e9, bytes=512 << 20))
    rows.append(_row("launch", "tiny_kernel", "fp32", 2e-6))
    return rows


def _row(kind: str, name: str, dtype: str, seconds: float, **values) -> dict:
    base = dict.fromkeys(("m", "n", "k", "bytes", "flops"))
    row = {**base, "kind": kind, "name": name, "dtype": dtype, "devices": 1, **values}
    row |= {"median_s": seconds, "min_s": seconds, "max_s": seconds, "iqr_s": 0.0, "repeats": 5}
    row["tflops"] = row["flops"] / seconds / 1e12 if row["flops"] else None
    row["gb_per_s"] = row["bytes"] / seconds / 1e9 if row["bytes"] else None
    return row


@pytest.fixture()
def measures(monkeypatch):
    """Replace the microbenchmarks with given rows: the CLI's handling of a result, fast."""
    from tokenfleet.calibrate.microbench import BenchResult

    def install(rows: list[dict]) -> None:
        result = BenchResult(rows=rows, wall_s=1.0)
        monkeypatch.setattr(
            "tokenfleet.calibrate.microbench.run_microbenchmarks", lambda *a, **k: result
        )

    return install


def test_printed_coefficients_are_the_fitted_ones(measures, runner, tmp_path) -> None:
    """No datasheet: the efficiency is fitted relative to the best point and printed as such,
    not as 1 beside a rescaled peak; the peak is the fp32 figure it is."""
    measures(cpu_rows())
    out = tmp_path / "cpu.toml"
    result = runner.invoke(cli, ["calibrate", "--backend", "numpy", "--out", str(out)])
    assert result.exit_code == 0, result.output
    profile = load_profile(str(out))
    fit = profile.meta["fit"]["gemm_fp32"]
    assert profile.gemm_eff_max == pytest.approx(fit["gemm_eff_max"], rel=1e-5)
    assert 0.6 < profile.gemm_eff_max < 0.8  # the lucky point is no asymptote
    best = max(r["tflops"] for r in cpu_rows() if r["kind"] == "gemm")
    assert profile.peak_tflops_fp32 == pytest.approx(best, rel=1e-5)
    assert profile.peak_tflops_bf16 == 0
    printed = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines() if line}
    assert float(printed["gemm_eff_max"]) == pytest.approx(profile.gemm_eff_max, rel=1e-3)
    assert float(printed["peak_tflops_fp32"]) == pytest.approx(best, rel=1e-3)
    assert "peak_tflops_bf16" not in printed


def test_a_poor_fit_is_refused_unless_accepted(measures, runner, tmp_path) -> None:
    rng = np.random.default_rng(5)
    measures(cpu_rows(lambda m: float(rng.uniform(1e-3, 1.0))))  # times unrelated to M
    out = tmp_path / "cpu.toml"
    args = ["calibrate", "--backend", "numpy", "--out", str(out)]
    refused = runner.invoke(cli, args)
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: poor fit")
    assert "gemm_fp32 R²" in refused.stderr and "--accept-poor-fit" in refused.stderr
    assert list(tmp_path.iterdir()) == []
    accepted = runner.invoke(cli, [*args, "--accept-poor-fit", "--json"])
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stderr.startswith(f"warning: {out}: written with a poor fit (gemm_fp32 R²")
    profile = load_profile(str(out))
    assert profile.meta["poor_fits"][0].startswith("gemm_fp32 R²")
    assert json.loads(accepted.stdout)["poor_fits"] == profile.meta["poor_fits"]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("/proc/p.toml", "--out /proc/p.toml: cannot create a file in /proc"),
        ("/proc/x/p.toml", "--out /proc/x/p.toml: directory /proc/x does not exist"),
    ],
)
def test_out_where_no_file_can_be_made_is_one_line(runner, monkeypatch, out, message) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    measured = []
    monkeypatch.setattr("tokenfleet.calibrate.microbench.run_microbenchmarks", measured.append)
    result = runner.invoke(cli, ["calibrate", "--backend", "numpy", "--out", out])
    assert result.exit_code == 2 and result.stdout == "" and measured == []
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {message}")


def test_a_cpu_profile_carries_its_kind_into_an_engine_fit(calibrated, runner, tmp_path):
    out, _ = calibrated
    steps = tmp_path / "steps.csv"
    steps.write_text(
        "prefill_tokens,decode_seqs,decode_context_tokens,step_ms\n"
        "0,1,100,40\n0,4,400,45\n0,16,1600,60\n128,0,0,300\n512,0,0,900\n"
    )
    fitted = tmp_path / "fit.toml"
    args = ["calibrate", "fit-steps", str(steps), "--gpu", str(out), "--model", "llama-3.1-8b"]
    result = runner.invoke(cli, [*args, "--json", "--out", str(fitted)])
    assert result.exit_code == 0, result.output
    assert load_profile(str(fitted)).measured_on_cpu


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_calibrate_all_gpus_without_cupy_creates_nothing(tmp_path) -> None:
    script = Path(__file__).parents[1] / "scripts" / "calibrate_all_gpus.sh"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(script.parents[1])}
    run = subprocess.run(
        ["bash", str(script), "profiles", "--quick"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("error: no usable GPU: CuPy is not installed")
    assert run.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
