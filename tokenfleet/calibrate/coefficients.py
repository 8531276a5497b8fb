"""Each group of a profile's coefficients from the microbenchmark rows, relative to the
datasheet: read bandwidth, the GEMM curve, the interconnect, and attention (not measured).

Every step appends to `notes` what a reader should know about its figures and records in
`sources` how each coefficient was obtained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenfleet.calibrate.backends.base import DTYPE_BYTES, DeviceInfo
from tokenfleet.calibrate.datasheet import Datasheet
from tokenfleet.calibrate.fit import FitQuality, GemmFit, fit_allreduce, fit_bandwidth, fit_gemm

PCIE4_X16_GB_S = 64.0  # both directions summed: the link assumed when nothing better is known


@dataclass(frozen=True)
class Bandwidth:
    """The read-bandwidth fit: the GEMM roofline and the link placeholder build on it."""

    peak_bw: float  # bytes/s the efficiency is relative to
    bw_eff: float
    stream_rate: float  # fitted bytes/s
    quality: FitQuality


@dataclass(frozen=True)
class Interconnect:
    """The link figures of the profile, measured or (with `quality` None) carried over."""

    link_gb_s: float
    link_eff: float
    latency_us: float
    quality: FitQuality | None  # None: not measured


def fit_read_bandwidth(
    rows: list[dict[str, Any]],
    datasheet: Datasheet,
    launch_s: float,
    notes: list[str],
    sources: dict[str, str],
) -> Bandwidth:
    """bw_eff from the reads at several sizes, relative to the datasheet (or the fitted rate)."""
    reads = [r for r in rows if r["kind"] == "memory" and r["name"] == "read"]
    if len(reads) < 2:
        raise ValueError("the memory benchmark must read at least two buffer sizes")
    nbytes = np.array([r["bytes"] for r in reads], dtype=float)
    seconds = np.array([r["median_s"] for r in reads])
    stream_rate = 1.0 / fit_bandwidth(nbytes, seconds, 1.0, launch_s)[1].slope_s_per_unit
    peak_bw = datasheet.hbm_tb_s * 1e12 if datasheet.hbm_tb_s else stream_rate
    bw_eff, line = fit_bandwidth(nbytes, seconds, peak_bw, launch_s)
    if bw_eff > 1.0:
        notes.append(
            f"read bandwidth {stream_rate / 1e9:.0f} GB/s exceeds the datasheet's "
            f"{peak_bw / 1e9:.0f} GB/s; bw_eff capped at 1"
        )
    sources["bw_eff"] = (
        f"fitted: matrix-vector reads of {len(reads)} buffer sizes "
        f"({_span(nbytes / 1e6, 'MB')}) less the launch time, vs "
        f"{_peak_label(datasheet.hbm_tb_s)}"
    )
    return Bandwidth(peak_bw, min(bw_eff, 1.0), stream_rate, line.quality)


def fit_gemm_curves(
    rows: list[dict[str, Any]],
    datasheet: Datasheet,
    peak_bw: float,
    bw_eff: float,
) -> list[GemmFit]:
    """One fit per measured dtype; the first is the profile's curve."""
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows if r["kind"] == "gemm"))
    if not dtypes:
        raise ValueError("no GEMM measurements")
    fits = []
    for dtype in dtypes:
        points = [r for r in rows if r["kind"] == "gemm" and r["dtype"] == dtype]
        m, n, k, s = (
            np.array([r[c] for r in points], dtype=float) for c in ("m", "n", "k", "median_s")
        )
        peak = _datasheet_tflops(dtype, datasheet)
        if peak is None:  # no tensor-core datasheet figure for this dtype: its best point
            peak = float(np.max(2 * m * n * k / s)) / 1e12
        fits.append(
            fit_gemm(
                dtype, m, n, k, s, itemsize=DTYPE_BYTES[dtype], peak_tflops=peak,
                peak_bw_bytes_s=peak_bw, bw_eff=bw_eff,
            )
        )  # fmt: skip
    return fits


def profile_gemm_peak(
    primary: GemmFit, datasheet: Datasheet, notes: list[str], sources: dict[str, str]
) -> tuple[dict[str, float], float]:
    """The profile's compute peak under the key of the dtype it is a peak of, and gemm_eff_max:
    the fitted efficiency relative to it. A 16-bit curve gives peak_tflops_bf16; an fp32 curve
    (a CPU) gives peak_tflops_fp32 and peak_tflops_bf16 = 0, since no 16-bit figure was
    measured. Both stay the fit's own figures, so the profile holds what the fit reports."""
    dtype = primary.dtype
    key = "peak_tflops_bf16" if dtype in ("bf16", "fp16") else f"peak_tflops_{dtype}"
    peaks = {"peak_tflops_bf16": 0.0, "peak_tflops_fp32": 0.0, key: primary.peak_tflops}
    datasheet_peak = _datasheet_tflops(dtype, datasheet)
    if datasheet_peak is not None:
        versus = f"{datasheet_peak:g} TFLOPS ({datasheet.source})"
        sources[key] = f"datasheet: {datasheet.source}"
        if primary.gemm_eff_max >= 1.0:
            notes.append(
                f"{dtype} GEMM reaches the datasheet's {datasheet_peak:g} TFLOPS; "
                "gemm_eff_max capped at 1 (is the datasheet the right one? see --gpu)"
            )
    else:
        versus = f"the best measured point, {primary.peak_tflops:.4g} TFLOPS"
        sources[key] = f"measured: the best {dtype} GEMM point (no datasheet figure for {dtype})"
    sources["gemm_eff_max"] = sources["gemm_half_tokens"] = (
        f"fitted: {primary.quality.points} {dtype} GEMM points over M "
        f"(tokens per step), roofline with bw_eff, vs {versus}"
    )
    return peaks, primary.gemm_eff_max


def fit_interconnect(
    rows: list[dict[str, Any]],
    info: DeviceInfo,
    datasheet: Datasheet,
    launch_s: float,
    stream_rate: float,
    notes: list[str],
    sources: dict[str, str],
) -> Interconnect:
    """Link figures: fitted from the all-reduce sweep; else the base profile's; else (one
    device, no datasheet) an honest placeholder that says what it is."""
    measured = _fit_allreduce(rows, datasheet, notes)
    if measured is not None:
        link_gb_s, link_eff, latency_us, quality = measured
        if link_eff > 1.0:
            notes.append(
                f"all-reduce bus bandwidth beats {link_gb_s:g} GB/s of link; link_eff capped at 1"
            )
        sources["link_eff"] = sources["allreduce_latency_us"] = (
            f"fitted: NCCL all-reduce over {quality.points} message sizes"
        )
        return Interconnect(link_gb_s, min(link_eff, 1.0), latency_us, quality)
    base = datasheet.base
    if base is not None:
        sources["link_eff"] = sources["allreduce_latency_us"] = f"kept from {datasheet.source}"
        return Interconnect(base.link_gb_s, base.link_eff, base.allreduce_latency_us, None)
    if info.kind == "cpu":
        copy = [r["gb_per_s"] for r in rows if r["kind"] == "memory" and r["name"] == "copy"]
        link_gb_s = copy[0] if copy else stream_rate / 1e9
        why = "memory copy bandwidth (ranks of a CPU share its memory)"
    else:
        link_gb_s, why = PCIE4_X16_GB_S, "PCIe 4.0 x16 assumed"
    sources["link_eff"] = f"not measured (one device): link_gb_s = {why}, link_eff = 1"
    sources["allreduce_latency_us"] = "not measured (one device): the measured launch overhead"
    return Interconnect(link_gb_s, 1.0, launch_s * 1e6, None)


def _fit_allreduce(
    rows: list[dict[str, Any]], datasheet: Datasheet, notes: list[str]
) -> tuple[float, float, float, FitQuality] | None:
    """(link_gb_s, link_eff, latency_us, quality) from two or more all-reduce sizes, else None."""
    points = [r for r in rows if r["kind"] == "allreduce"]
    if len(points) < 2:
        return None
    devices = points[0]["devices"]
    nbytes = np.array([r["bytes"] for r in points], dtype=float)
    seconds = np.array([r["median_s"] for r in points])
    link_gb_s = datasheet.link_gb_s
    if link_gb_s is None:  # no datasheet link: the fitted bus bandwidth, both directions
        one_way = 1.0 / fit_allreduce(nbytes, seconds, devices, 1.0)[2].slope_s_per_unit
        link_gb_s = 2.0 * one_way / 1e9
        notes.append("link_gb_s is twice the measured all-reduce bus bandwidth (no datasheet)")
    # StepTime sends each ring step one way: half the both-directions link figure.
    link_eff, latency_us, line = fit_allreduce(nbytes, seconds, devices, link_gb_s * 1e9 / 2)
    return link_gb_s, link_eff, latency_us, line.quality


def attention_efficiency(
    datasheet: Datasheet, gemm_eff_max: float, sources: dict[str, str]
) -> float:
    """Attention is not measured: the base profile's figure, else the GEMM efficiency."""
    base = datasheet.base
    if base is not None:
        sources["attn_eff"] = f"not measured: kept from {datasheet.source}"
        return base.attn_eff
    sources["attn_eff"] = "not measured: set to gemm_eff_max (attention is GEMMs too)"
    return gemm_eff_max


def _peak_label(hbm_tb_s: float | None) -> str:
    """What bw_eff is relative to, for its source line."""
    return f"datasheet {hbm_tb_s * 1e3:.0f} GB/s" if hbm_tb_s else "the fitted rate (no datasheet)"


def _datasheet_tflops(dtype: str, datasheet: Datasheet) -> float | None:
    """The datasheet's peak for GEMMs in `dtype`: its 16-bit tensor peak, else none (then the
    curve is relative to its best measured point)."""
    return datasheet.peak_tflops_bf16 if dtype in ("bf16", "fp16") else None


def _span(values: np.ndarray, unit: str) -> str:
    """The range of measured sizes, for a source line."""
    return f"{values.min():.0f}-{values.max():.0f} {unit}"
