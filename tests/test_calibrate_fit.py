"""The fitters recover known coefficients from synthetic measurements made with the step-time
model's own formulas (plus 1% noise): the hardware fit from microbenchmark rows, the engine fit
from step logs priced by StepTime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.calibrate.backends.base import DeviceInfo
from tokenfleet.calibrate.calibration import build_calibration
from tokenfleet.calibrate.datasheet import choose_datasheet
from tokenfleet.calibrate.fit import fit_line, gemm_seconds, least_squares, quality
from tokenfleet.calibrate.fit_steps import fit_engine, predict_ms
from tokenfleet.calibrate.microbench import (
    ALLREDUCE_BYTES_FULL,
    M_FULL,
    READ_FRACTIONS,
    BenchResult,
)
from tokenfleet.calibrate.step_log import StepLog
from tokenfleet.hardware.profile import load_engine, load_profile
from tokenfleet.models import get_model
from tokenfleet.perf.steptime import StepTime

A100 = load_profile("a100-80gb")
GPU_INFO = DeviceInfo(
    backend="cupy", kind="gpu", name="NVIDIA A100-SXM4-80GB", index=0, device_count=8,
    memory_bytes=80 * 10**9, compute_units=108, clock_mhz=1410.0, memory_clock_mhz=1593.0,
    memory_bus_bits=5120, cache_bytes=40 << 20, compute_capability="8.0", driver_version="12.2",
    runtime_version="12.2", library="cuBLAS 120201", threads=1, threads_source="test",
)  # fmt: skip


def _timing_row(kind, name, dtype, seconds, **values) -> dict:
    base = dict.fromkeys(("m", "n", "k", "bytes", "flops", "tflops", "gb_per_s"))
    return {
        **base, "kind": kind, "name": name, "dtype": dtype, "devices": 1, "median_s": seconds,
        "min_s": seconds, "max_s": seconds, "iqr_s": 0.0, "repeats": 5, **values,
    }  # fmt: skip


def synthetic_rows(truth: dict, rng: np.random.Generator, noise: float = 0.01) -> list[dict]:
    """Microbenchmark rows an A100 with coefficients `truth` would give (profile formulas)."""
    peak, bw = A100.peak_tflops_bf16 * 1e12, A100.hbm_tb_s * 1e12 * truth["bw_eff"]
    rows = []
    for n, k in ((8192, 8192), (28672, 8192), (8192, 3584)):
        for m in M_FULL:
            eff = truth["gemm_eff_max"] * m / (m + truth["gemm_half_tokens"])
            t = max(2 * m * n * k / (peak * eff), 2 * (m * k + k * n + m * n) / bw)
            t *= np.exp(rng.normal(0, noise))
            rows.append(_timing_row("gemm", f"{n}x{k}", "bf16", t, m=m, n=n, k=k))
    for nbytes in (int(2**30 * f) for f in READ_FRACTIONS):
        t = (4e-6 + nbytes / bw) * np.exp(rng.normal(0, noise))
        rows.append(
            _timing_row("memory", "read", "fp32", t, bytes=nbytes, gb_per_s=nbytes / t / 1e9)
        )
    link = A100.link_gb_s / 2 * 1e9 * truth["link_eff"]  # one direction, as StepTime uses it
    for nbytes in ALLREDUCE_BYTES_FULL:
        ring = 2 * 7 / 8 * nbytes
        t = (truth["allreduce_latency_us"] * 1e-6 + ring / link) * np.exp(rng.normal(0, noise))
        rows.append(_timing_row("allreduce", "nccl_sum", "fp16", t, bytes=nbytes) | {"devices": 8})
    rows.append(_timing_row("launch", "tiny_kernel", "fp32", 4e-6))
    return rows


def _check_recovery(truth: dict, seed: int, keys: tuple[str, ...]) -> None:
    rows = synthetic_rows(truth, np.random.default_rng(seed))
    cal = build_calibration(GPU_INFO, BenchResult(rows=rows), choose_datasheet(GPU_INFO, None))
    for key in keys:
        assert getattr(cal.profile, key) == pytest.approx(truth[key], rel=0.02), key
    assert cal.profile.peak_tflops_bf16 == A100.peak_tflops_bf16  # the datasheet, not bent
    assert cal.meta["datasheet_source"].startswith("built-in a100-80gb")
    gemm = cal.meta["fit"]["gemm_bf16"]
    assert gemm["r2"] > 0.99 and gemm["max_residual"] < 0.06
    # The fitted GEMM curve reproduces the noise-free truth at every token count.
    m, n, k = np.array(M_FULL, dtype=float), 8192.0, 8192.0
    common = {"peak_flops": A100.peak_tflops_bf16 * 1e12, "peak_bw_bytes_s": A100.hbm_tb_s * 1e12}
    fitted = gemm_seconds(
        m, n, k, 2, gemm_eff_max=cal.profile.gemm_eff_max,
        gemm_half_tokens=cal.profile.gemm_half_tokens, bw_eff=cal.profile.bw_eff, **common,
    )  # fmt: skip
    true = gemm_seconds(
        m, n, k, 2, gemm_eff_max=truth["gemm_eff_max"], gemm_half_tokens=truth["gemm_half_tokens"],
        bw_eff=truth["bw_eff"], **common,
    )  # fmt: skip
    assert np.abs(fitted / true - 1).max() < 0.02


def test_hardware_fit_recovers_known_coefficients() -> None:
    truth = {
        "gemm_eff_max": 0.72, "gemm_half_tokens": 96.0, "bw_eff": 0.88, "link_eff": 0.55,
        "allreduce_latency_us": 14.0,
    }  # fmt: skip
    _check_recovery(truth, seed=1, keys=tuple(truth))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    eff=st.floats(0.3, 0.95),
    half=st.floats(4.0, 512.0),
    bw_eff=st.floats(0.5, 0.95),
    link_eff=st.floats(0.3, 0.9),
    latency=st.floats(3.0, 40.0),
    seed=st.integers(0, 2**16),
)
def test_hardware_fit_recovers_any_physical_coefficients(
    eff, half, bw_eff, link_eff, latency, seed
):
    """Every coefficient within 2%, except where the bend of the efficiency curve hides under
    the memory roof (small gemm_half_tokens): there only the curve itself is checked, since
    no measurement can place the bend and no prediction depends on it."""
    truth = {
        "gemm_eff_max": eff, "gemm_half_tokens": half, "bw_eff": bw_eff, "link_eff": link_eff,
        "allreduce_latency_us": latency,
    }  # fmt: skip
    _check_recovery(truth, seed, keys=tuple(k for k in truth if k != "gemm_half_tokens"))


def test_fit_quality_reports_r2_and_worst_point() -> None:
    measured = np.array([1.0, 2.0, 4.0, 8.0])
    exact = quality(measured, measured)
    assert exact.r2 == 1.0 and exact.max_residual == 0.0
    off = quality(np.array([1.0, 2.0, 4.0, 10.0]), measured)
    assert off.max_residual == pytest.approx(0.25) and off.r2 < 1.0


def test_line_fit_weights_small_and_large_times_alike() -> None:
    x = np.logspace(3, 9, 13)
    t = 5e-6 + x / 2e11
    line = fit_line(x, t)
    assert line.intercept_s == pytest.approx(5e-6, rel=1e-6)
    assert 1 / line.slope_s_per_unit == pytest.approx(2e11, rel=1e-6)
    held = fit_line(x, t * 1.01, intercept_s=5e-6)  # a known fixed cost stays fixed
    assert held.intercept_s == 5e-6 and 1 / held.slope_s_per_unit < 2e11


def test_least_squares_respects_bounds_and_shrugs_off_an_outlier() -> None:
    x = np.arange(1.0, 30.0)
    y = 3.0 * x + 2.0
    y[5] = 400.0  # one wild point

    def residuals(p):
        return np.log((p[0] * x + p[1]) / y)

    lower, upper = np.array([0.0, 0.0]), np.array([10.0, 10.0])
    robust = least_squares(residuals, np.array([1.0, 1.0]), lower, upper, robust_scale=0.1)
    assert robust == pytest.approx([3.0, 2.0], rel=0.02)
    capped = least_squares(residuals, np.array([1.0, 1.0]), lower, np.array([2.0, 10.0]))
    assert capped[0] == 2.0


def synthetic_steps(model: str, tps: tuple[int, ...], truth, rng: np.random.Generator) -> StepLog:
    """A step log priced by StepTime with engine `truth`: prefill, decode and mixed steps at
    each tp of `tps`, each point the median of 9 repeats with 1% noise (as a real log folds its
    repeats)."""
    spec = get_model(model)
    rows = []
    for tp in tps:
        for prompt in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768):
            rows.append((tp, "prefill", prompt, prompt * (prompt + 1) / 2, 0, 0))
        for batch in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024):
            for ctx in (128, 512, 2048, 8192):
                rows.append((tp, "decode", 0, 0.0, batch, batch * ctx))
        for chunk, batch in ((16, 1), (16, 8), (64, 4), (256, 8), (512, 32), (128, 64)):
            rows.append((tp, "mixed", chunk, chunk * (1024 + (chunk + 1) / 2), batch, batch * 1024))
    tp = np.array([r[0] for r in rows])
    cols = [np.array([r[i] for r in rows], dtype=float)[:, None] for i in (2, 3, 4, 5)]
    seconds = np.empty(len(rows))
    for value in tps:
        idx = tp == value
        step = StepTime(spec, A100, tp=value, engine=truth)
        seconds[idx] = step.step_s_array(*(c[idx] for c in cols))[:, 0]
    noise = np.median(np.exp(rng.normal(0, 0.01, (len(rows), 9))), axis=1)
    return StepLog(
        source="synthetic.csv", label=[str(r) for r in rows], phase=[r[1] for r in rows],
        model=[model] * len(rows), tp=tp, prefill_tokens=cols[0], prefill_attn_pairs=cols[1],
        decode_seqs=cols[2], decode_context_tokens=cols[3], step_ms=seconds * 1e3 * noise,
        repeats=np.full(len(rows), 9),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("base_name", "truth_values"),
    [
        ("vllm-v0-2023", {"step_overhead_ms": 7.5, "seq_overhead_us": 120.0,
                          "layer_launch_us": 700.0, "allreduce_overhead_us": 150.0}),
        ("vllm-v1", {"step_overhead_ms": 2.2, "seq_overhead_us": 25.0, "layer_graph_us": 30.0,
                     "allreduce_overhead_us": 40.0}),
    ],
)  # fmt: skip
def test_engine_fit_recovers_overheads_from_steptime_logs(base_name, truth_values):
    """Overheads are recovered where the log can see them: an eager engine's all-reduce overhead
    shows only in GPU-bound steps at tp > 1, a graph gap only against the step overhead, so the
    truths here are large enough for 1% noise not to drown them (small ones fit as well as the
    data allows, and the base preset holds what the data cannot see)."""
    base = load_engine(base_name)
    truth = dataclasses.replace(base, name="truth", **truth_values)
    log = synthetic_steps("llama-3.1-8b", (1, 2, 4), truth, np.random.default_rng(7))
    fit = fit_engine(log, A100, base, name="fitted")
    assert set(truth_values) <= set(fit.fitted_keys)
    for key in truth_values:
        assert getattr(fit.preset, key) == pytest.approx(getattr(truth, key), rel=0.02), key
    assert fit.after.median_residual < 0.01 < fit.before.median_residual
    assert fit.preset.cuda_graphs == base.cuda_graphs
    after = predict_ms(log, A100, fit.preset)
    assert np.median(np.abs(after / log.step_ms - 1)) == pytest.approx(fit.after.median_residual)
