"""From microbenchmark rows to a hardware profile: fit the coefficients against the chosen
datasheet (`datasheet.choose_datasheet`), and write the profile TOML with its raw measurements
beside it.

Efficiencies are relative to a datasheet peak. Without a datasheet (a CPU, or a GPU no built-in
profile describes and whose architecture we cannot derive) the GEMM peak is the best measured
point and the bandwidth the fitted streaming rate, the efficiencies fitted relative to them;
the profile says so in [meta]. A fit whose R² is below MIN_FIT_R2 is listed in `poor_fits`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tokenfleet import __version__
from tokenfleet.atomic import atomic_path
from tokenfleet.calibrate.backends.base import DeviceInfo
from tokenfleet.calibrate.coefficients import (
    Bandwidth,
    Interconnect,
    attention_efficiency,
    fit_gemm_curves,
    fit_interconnect,
    fit_read_bandwidth,
    profile_gemm_peak,
)
from tokenfleet.calibrate.datasheet import Datasheet
from tokenfleet.calibrate.fit import GemmFit
from tokenfleet.calibrate.microbench import BenchResult
from tokenfleet.hardware.profile import COEFFICIENT_KEYS, GpuProfile, save_profile

NOISY_SPREAD = 0.2  # repeats this far apart make a point suspect
# R² of log time below which a fit is poor: the CLI refuses to write it unless told to. 30 real
# NumPy calibrations (19 --quick, 9 --quick --model llama-3.1-8b, 2 full) on a 2-core host at
# load average 4-6 gave GEMM fits of R² 0.30-0.98 (points slowed by other processes, and the
# GEMV path at M = 1 beating the curve) and read fits of -11.7-1.0: five sizes spanning 4x
# leave little spread to explain. 0.2 passes every GEMM fit and 28 of the 30 read fits; the
# other two read 4x the bytes in 1.2x and 1.7x the time, measuring the contention, not the
# memory. The fit that must not pass explained nothing: R² 0.0024, residuals of 560%.
MIN_FIT_R2 = 0.2


@dataclass
class Calibration:
    """A fitted profile and what goes with it: [meta], the printed summary, the raw rows."""

    profile: GpuProfile
    meta: dict[str, Any]
    summary: dict[str, Any]
    table: pa.Table
    notes: list[str] = field(default_factory=list)
    poor_fits: list[str] = field(default_factory=list)  # fits below MIN_FIT_R2, in phrases


def build_calibration(
    info: DeviceInfo,
    result: BenchResult,
    datasheet: Datasheet,
    *,
    name: str | None = None,
    quick: bool = False,
    settings: dict[str, Any] | None = None,
) -> Calibration:
    """Fit the hardware coefficients to `result` and assemble the profile and its summary."""
    table = result.table()
    rows = table.to_pylist()
    notes = [*result.notes, *_noise_notes(rows)]
    sources: dict[str, str] = {}  # coefficient -> how it was obtained, in the order fitted
    launch = next((r["median_s"] for r in rows if r["kind"] == "launch"), None)
    launch_s = 0.0 if launch is None else launch

    # Bandwidth first: the GEMM roofline's memory side depends on it.
    bw = fit_read_bandwidth(rows, datasheet, launch_s, notes, sources)
    gemm_fits = fit_gemm_curves(rows, datasheet, bw.peak_bw, bw.bw_eff)
    primary = gemm_fits[0]
    peaks, gemm_eff_max = profile_gemm_peak(primary, datasheet, notes, sources)
    link = fit_interconnect(rows, info, datasheet, launch_s, bw.stream_rate, notes, sources)
    attn_eff = attention_efficiency(datasheet, gemm_eff_max, sources)
    base = datasheet.base
    profile = GpuProfile(
        name=name or _default_name(info),
        description=_description(info, primary.dtype),
        **{key: _round(value) for key, value in peaks.items()},
        peak_tflops_fp8=datasheet.peak_tflops_fp8,
        peak_tflops_fp4=datasheet.peak_tflops_fp4,
        hbm_gb=round(datasheet.hbm_gb, 3),
        hbm_tb_s=round(bw.peak_bw / 1e12, 6),
        link_gb_s=round(link.link_gb_s, 3),
        tdp_w=datasheet.tdp_w,
        gemm_eff_max=_round(gemm_eff_max),
        gemm_half_tokens=_round(primary.gemm_half_tokens),
        attn_eff=_round(attn_eff),
        bw_eff=_round(bw.bw_eff),
        link_eff=_round(link.link_eff),
        allreduce_latency_us=_round(link.latency_us),
        default_engine=base.default_engine if base else "vllm-v1",
    )
    measured = _measured(rows, primary, bw, launch)
    fits = _fit_report(gemm_fits, bw, link)
    poor = _poor_fits(fits)
    report = _Report(measured=measured, fits=fits, sources=sources, notes=notes, poor_fits=poor)
    meta = _meta(info, datasheet, report, quick=quick, settings=settings or {})
    summary = _summary(profile, info, datasheet, primary, bw, report)
    return Calibration(
        profile=profile, meta=meta, summary=summary, table=table, notes=notes, poor_fits=poor
    )


@dataclass(frozen=True)
class _Report:
    """What both the profile's [meta] and the printed summary report besides the profile."""

    measured: dict[str, Any]
    fits: dict[str, Any]
    sources: dict[str, str]
    notes: list[str]
    poor_fits: list[str]


def _poor_fits(fits: dict[str, Any]) -> list[str]:
    """Each fit whose curve explains too little of its measurements, as a phrase."""
    return [
        f"{key} R² {fit['r2']:.4f} (max residual {fit['max_residual']:.0%})"
        for key, fit in fits.items()
        if fit["r2"] < MIN_FIT_R2
    ]


def _noise_notes(rows: list[dict[str, Any]]) -> list[str]:
    """A warning when repeats disagree: the figures are then as noisy as the device."""
    noisy = [r for r in rows if r["median_s"] > 0 and r["iqr_s"] / r["median_s"] > NOISY_SPREAD]
    if not noisy:
        return []
    return [
        f"{len(noisy)} of {len(rows)} points vary by more than {NOISY_SPREAD:.0%} between "
        "repeats (interquartile range / median): is something else running on the device?"
    ]


def _measured(
    rows: list[dict[str, Any]], primary: GemmFit, bw: Bandwidth, launch_s: float | None
) -> dict[str, Any]:
    """The raw headline figures, before any fit bends them."""
    measured = {
        "best_tflops": primary.best_tflops,
        "gemm_dtype": primary.dtype,
        "read_gb_s": bw.stream_rate / 1e9,
        **{
            f"{r['name']}_gb_s": r["gb_per_s"]
            for r in rows
            if r["kind"] == "memory" and r["name"] != "read"
        },
    }
    if launch_s is not None:
        measured["kernel_launch_us"] = launch_s * 1e6
    return measured


def _fit_report(gemm_fits: list[GemmFit], bw: Bandwidth, link: Interconnect) -> dict[str, Any]:
    """Each fit's coefficients and quality, so a reader can judge how well the curve holds."""
    fits: dict[str, Any] = {
        f"gemm_{g.dtype}": {
            "gemm_eff_max": g.gemm_eff_max,
            "gemm_half_tokens": g.gemm_half_tokens,
            "best_tflops": g.best_tflops,
            "peak_tflops": g.peak_tflops,
            **g.quality.as_dict(),
        }
        for g in gemm_fits
    }
    fits["bandwidth"] = {"stream_gb_s": bw.stream_rate / 1e9, **bw.quality.as_dict()}
    if link.quality is not None:
        fits["allreduce"] = link.quality.as_dict()
    return fits


def _meta(
    info: DeviceInfo,
    datasheet: Datasheet,
    report: _Report,
    *,
    quick: bool,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The profile's [meta]: what was measured, where, when, against what, and how it fitted."""
    return _drop_none(
        {
            "kind": info.kind,
            "measurement": (
                "CPU measurement through NumPy: these figures describe the CPU, not a GPU"
                if info.kind == "cpu"
                else f"GPU measurement through CuPy on {info.name}"
            ),
            "device": info.as_dict(),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tokenfleet_version": __version__,
            "backend": info.backend,
            "quick": quick,
            "settings": settings,
            "datasheet_source": datasheet.source,
            "datasheet": {
                "peak_tflops_bf16": datasheet.peak_tflops_bf16,
                "hbm_tb_s": datasheet.hbm_tb_s,
                "link_gb_s": datasheet.link_gb_s,
            },
            "measured": report.measured,
            "fit": report.fits,
            "min_fit_r2": MIN_FIT_R2,
            "poor_fits": report.poor_fits or None,
            "sources": report.sources,
            "notes": report.notes,
        }
    )


def _summary(
    profile: GpuProfile,
    info: DeviceInfo,
    datasheet: Datasheet,
    primary: GemmFit,
    bw: Bandwidth,
    report: _Report,
) -> dict[str, Any]:
    """What the command prints: measured peaks against the datasheet's, and the profile's
    compute peak and each coefficient with where it came from."""
    peak_key = "peak_tflops_bf16" if profile.peak_tflops_bf16 > 0 else "peak_tflops_fp32"
    return {
        "profile": profile.name,
        "device": info.name,
        "kind": info.kind,
        "backend": info.backend,
        "datasheet_source": datasheet.source,
        "peaks": [
            {
                "figure": f"{primary.dtype} GEMM TFLOPS",
                "measured": primary.best_tflops,
                "datasheet": datasheet.peak_tflops_bf16 if primary.dtype != "fp32" else None,
            },
            {
                "figure": "read GB/s",
                "measured": bw.stream_rate / 1e9,
                "datasheet": datasheet.hbm_tb_s * 1e3 if datasheet.hbm_tb_s else None,
            },
        ],
        "coefficients": {
            key: {"value": getattr(profile, key), "source": report.sources[key]}
            for key in (peak_key, *COEFFICIENT_KEYS)
        },
        "fit": report.fits,
        "poor_fits": report.poor_fits,
        "measured": report.measured,
        "notes": report.notes,
    }


def write_calibration(calibration: Calibration, out: str | Path) -> Path:
    """Write the profile TOML and `<stem>.measurements.parquet` beside it."""
    return write_profile_with_table(
        calibration.profile, calibration.meta, calibration.table, out, "measurements"
    )


def write_profile_with_table(
    profile: GpuProfile, meta: dict[str, Any], table: pa.Table, out: str | Path, label: str
) -> Path:
    """Write the profile TOML and its data as `<stem>.<label>.parquet` beside it; both appear
    only if both were written (temporary files renamed at the end)."""
    out = Path(out)
    data_path = table_path(out, label)
    with atomic_path(data_path) as tmp:
        pq.write_table(table, tmp)
        save_profile(profile, out, {**meta, f"{label.replace('-', '_')}_file": data_path.name})
    return data_path


def table_path(out: str | Path, label: str) -> Path:
    """Where the data of profile `out` goes: `<stem>.<label>.parquet` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.{label}.parquet")


def _default_name(info: DeviceInfo) -> str:
    """A profile name from the device's name, when none is given."""
    return "measured-" + re.sub(r"[^a-z0-9]+", "-", info.name.lower()).strip("-")


def _description(info: DeviceInfo, dtype: str) -> str:
    """Says what was measured with what, a CPU plainly so."""
    if info.kind == "cpu":
        return (
            f"CPU measurement, not a GPU: {info.name.removeprefix('CPU: ')}, NumPy {dtype} GEMM "
            f"on {info.library} with {info.threads} threads"
        )
    return f"{info.name} (GPU {info.index}), measured by tokenfleet calibrate with CuPy"


def _round(value: float) -> float:
    """Six significant digits: the measurement noise is far larger, and the file stays legible."""
    return float(f"{value:.6g}")


def _drop_none(value: Any) -> Any:
    """TOML has no null: leave unknown figures out."""
    if isinstance(value, dict):
        kept = {k: _drop_none(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in kept.items() if v != {}}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value if v is not None]
    return value
