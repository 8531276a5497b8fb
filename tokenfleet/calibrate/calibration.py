"""From microbenchmark rows to a hardware profile: pick the datasheet to compare against, fit
the coefficients, and write the profile TOML with its raw measurements beside it.

Efficiencies are relative to a datasheet peak, so a profile measured on a GPU keeps the vendor
figures and carries the measurement in its efficiencies. Without a datasheet (a CPU, or a GPU
no built-in profile describes and whose architecture we cannot derive) the peaks are the fitted
asymptotes and the efficiencies are 1; the profile says so in [meta].
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenfleet import __version__
from tokenfleet.atomic import atomic_path
from tokenfleet.calibrate.backends.base import DTYPE_BYTES, DeviceInfo
from tokenfleet.calibrate.fit import (
    FitQuality,
    GemmFit,
    fit_allreduce,
    fit_bandwidth,
    fit_gemm,
)
from tokenfleet.calibrate.microbench import BenchResult
from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import (
    COEFFICIENT_KEYS,
    GpuProfile,
    list_profiles,
    load_profile,
    save_profile,
)

# Built-in profile for a device name CuPy reports (PCIe variants differ in bandwidth, power and
# link from the SXM boards the built-ins describe, so they are not matched).
_BUILTIN_BY_NAME = (
    (r"GB200", "gb200"),
    (r"B200", "b200"),
    (r"H200", "h200"),
    (r"H100.*(SXM|HBM3)", "h100-sxm"),
    (r"A100.*80", "a100-80gb"),
    (r"L40S", "l40s"),
    (r"MI325", "mi325x"),
    (r"MI300X", "mi300x"),
)
# Dense fp16/bf16 tensor FLOPs per clock per SM by compute capability (NVIDIA architecture
# whitepapers): V100/T4 1024, A100 2048, GA10x/AD10x 1024, H100 4096, B200 8192.
_TENSOR_FLOPS_PER_CLOCK_SM = {
    "7.0": 1024,
    "7.5": 1024,
    "8.0": 2048,
    "8.6": 1024,
    "8.9": 1024,
    "9.0": 4096,
    "10.0": 8192,
}
NOISY_SPREAD = 0.2  # repeats this far apart make a point suspect
PCIE4_X16_GB_S = 64.0  # both directions summed: the link assumed when nothing better is known


@dataclass(frozen=True)
class Datasheet:
    """The peaks efficiencies are relative to, and where they come from."""

    source: str  # "built-in a100-80gb", "device properties", "none (...)"
    peak_tflops_bf16: float | None  # None: use the fitted asymptote
    hbm_tb_s: float | None  # None: use the fitted streaming rate
    hbm_gb: float
    link_gb_s: float | None
    tdp_w: float
    peak_tflops_fp8: float = 0.0
    peak_tflops_fp4: float = 0.0
    base: GpuProfile | None = None


@dataclass
class Calibration:
    profile: GpuProfile
    meta: dict[str, Any]
    summary: dict[str, Any]
    table: pa.Table
    notes: list[str] = field(default_factory=list)


def choose_datasheet(info: DeviceInfo, base: str | None) -> Datasheet:
    """`base` (a built-in name or profile path) if given; else the built-in matching the GPU's
    name; else peaks derived from the GPU's properties; a CPU has no datasheet."""
    if base is not None:
        return _from_profile(load_profile(base), f"--gpu {base}")
    if info.kind == "cpu":
        return Datasheet(
            source="none: a CPU has no datasheet here, peaks are the fitted asymptotes",
            peak_tflops_bf16=None,
            hbm_tb_s=None,
            hbm_gb=info.memory_bytes / 1e9,
            link_gb_s=None,
            tdp_w=0.0,
        )
    for pattern, name in _BUILTIN_BY_NAME:
        if re.search(pattern, info.name) and "PCIe" not in info.name and name in list_profiles():
            return _from_profile(load_profile(name), f"built-in {name} (matched {info.name!r})")
    flops_per_clock = _TENSOR_FLOPS_PER_CLOCK_SM.get(info.compute_capability or "")
    peak = (
        info.compute_units * info.clock_mhz * 1e6 * flops_per_clock / 1e12
        if flops_per_clock and info.clock_mhz
        else None
    )
    bandwidth = (
        2 * info.memory_clock_mhz * 1e6 * info.memory_bus_bits / 8 / 1e12
        if info.memory_clock_mhz and info.memory_bus_bits
        else None
    )
    return Datasheet(
        source=(
            f"device properties of {info.name!r} (SMs x boost clock x tensor FLOPs per clock for "
            f"sm_{info.compute_capability}; memory clock x bus width; no built-in profile matches, "
            "pass --gpu NAME to compare against one)"
        ),
        peak_tflops_bf16=peak,
        hbm_tb_s=bandwidth,
        hbm_gb=info.memory_bytes / 1e9,
        link_gb_s=None,
        tdp_w=0.0,
    )


def _from_profile(profile: GpuProfile, source: str) -> Datasheet:
    return Datasheet(
        source=source,
        peak_tflops_bf16=profile.peak_tflops_bf16,
        hbm_tb_s=profile.hbm_tb_s,
        hbm_gb=profile.hbm_gb,
        link_gb_s=profile.link_gb_s,
        tdp_w=profile.tdp_w,
        peak_tflops_fp8=profile.peak_tflops_fp8,
        peak_tflops_fp4=profile.peak_tflops_fp4,
        base=profile,
    )


@dataclass(frozen=True)
class _Bandwidth:
    peak_bw: float  # bytes/s the efficiency is relative to
    bw_eff: float
    stream_rate: float  # fitted bytes/s
    quality: FitQuality


@dataclass(frozen=True)
class _Interconnect:
    link_gb_s: float
    link_eff: float
    latency_us: float
    quality: FitQuality | None  # None: not measured


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
    notes = list(result.notes)
    noisy = [r for r in rows if r["median_s"] > 0 and r["iqr_s"] / r["median_s"] > NOISY_SPREAD]
    if noisy:
        notes.append(
            f"{len(noisy)} of {len(rows)} points vary by more than {NOISY_SPREAD:.0%} between "
            "repeats (interquartile range / median): is something else running on the device?"
        )
    sources: dict[str, str] = {}
    launch = [r["median_s"] for r in rows if r["kind"] == "launch"]
    launch_s = launch[0] if launch else 0.0

    # Bandwidth first: the GEMM roofline's memory side depends on it.
    bw = _bandwidth(rows, datasheet, launch_s, notes, sources)
    gemm_fits = _fit_gemms(rows, datasheet, bw.peak_bw, bw.bw_eff)
    primary = gemm_fits[0]
    peak_tflops, gemm_eff_max = primary.peak_tflops, primary.gemm_eff_max
    if datasheet.peak_tflops_bf16 is None:  # no datasheet: the asymptote is the peak
        peak_tflops, gemm_eff_max = peak_tflops * gemm_eff_max, 1.0
    elif gemm_eff_max >= 1.0:
        notes.append(
            f"{primary.dtype} GEMM reaches the datasheet's {datasheet.peak_tflops_bf16:g} TFLOPS; "
            "gemm_eff_max capped at 1 (is the datasheet the right one? see --gpu)"
        )
    sources["gemm_eff_max"] = sources["gemm_half_tokens"] = (
        f"fitted: {primary.quality.points} {primary.dtype} GEMM points over M "
        f"(tokens per step), roofline with bw_eff, vs {_tflops_label(datasheet)}"
    )
    link = _interconnect(rows, info, datasheet, launch_s, bw.stream_rate, notes, sources)
    base = datasheet.base
    if base is not None:
        attn_eff = base.attn_eff
        sources["attn_eff"] = f"not measured: kept from {datasheet.source}"
    else:
        attn_eff = gemm_eff_max
        sources["attn_eff"] = "not measured: set to gemm_eff_max (attention is GEMMs too)"

    profile = GpuProfile(
        name=name or _default_name(info),
        description=_description(info, primary.dtype),
        peak_tflops_bf16=round(peak_tflops, 6),
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
    if launch:
        measured["kernel_launch_us"] = launch_s * 1e6
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
    meta = _drop_none(
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
            "settings": settings or {},
            "datasheet_source": datasheet.source,
            "datasheet": {
                "peak_tflops_bf16": datasheet.peak_tflops_bf16,
                "hbm_tb_s": datasheet.hbm_tb_s,
                "link_gb_s": datasheet.link_gb_s,
            },
            "measured": measured,
            "fit": fits,
            "sources": sources,
            "notes": notes,
        }
    )
    summary = {
        "profile": profile.name,
        "device": info.name,
        "kind": info.kind,
        "backend": info.backend,
        "datasheet_source": datasheet.source,
        "peaks": [
            {
                "figure": f"{primary.dtype} GEMM TFLOPS",
                "measured": primary.best_tflops,
                "datasheet": datasheet.peak_tflops_bf16,
            },
            {
                "figure": "read GB/s",
                "measured": bw.stream_rate / 1e9,
                "datasheet": datasheet.hbm_tb_s * 1e3 if datasheet.hbm_tb_s else None,
            },
        ],
        "coefficients": {
            key: {"value": getattr(profile, key), "source": sources[key]}
            for key in COEFFICIENT_KEYS
        },
        "fit": fits,
        "measured": measured,
        "notes": notes,
    }
    return Calibration(profile=profile, meta=meta, summary=summary, table=table, notes=notes)


def _bandwidth(
    rows: list[dict[str, Any]],
    datasheet: Datasheet,
    launch_s: float,
    notes: list[str],
    sources: dict[str, str],
) -> _Bandwidth:
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
    return _Bandwidth(peak_bw, min(bw_eff, 1.0), stream_rate, line.quality)


def _interconnect(
    rows: list[dict[str, Any]],
    info: DeviceInfo,
    datasheet: Datasheet,
    launch_s: float,
    stream_rate: float,
    notes: list[str],
    sources: dict[str, str],
) -> _Interconnect:
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
        return _Interconnect(link_gb_s, min(link_eff, 1.0), latency_us, quality)
    base = datasheet.base
    if base is not None:
        sources["link_eff"] = sources["allreduce_latency_us"] = f"kept from {datasheet.source}"
        return _Interconnect(base.link_gb_s, base.link_eff, base.allreduce_latency_us, None)
    if info.kind == "cpu":
        copy = [r["gb_per_s"] for r in rows if r["kind"] == "memory" and r["name"] == "copy"]
        link_gb_s = copy[0] if copy else stream_rate / 1e9
        why = "memory copy bandwidth (ranks of a CPU share its memory)"
    else:
        link_gb_s, why = PCIE4_X16_GB_S, "PCIe 4.0 x16 assumed"
    sources["link_eff"] = f"not measured (one device): link_gb_s = {why}, link_eff = 1"
    sources["allreduce_latency_us"] = "not measured (one device): the measured launch overhead"
    return _Interconnect(link_gb_s, 1.0, launch_s * 1e6, None)


def _fit_gemms(
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
        if datasheet.peak_tflops_bf16 is not None and dtype in ("bf16", "fp16"):
            peak = datasheet.peak_tflops_bf16
        else:  # no tensor-core datasheet figure for this dtype: relative to the best point
            peak = float(np.max(2 * m * n * k / s)) / 1e12
        fits.append(
            fit_gemm(
                dtype, m, n, k, s, itemsize=DTYPE_BYTES[dtype], peak_tflops=peak,
                peak_bw_bytes_s=peak_bw, bw_eff=bw_eff,
            )
        )  # fmt: skip
    return fits


def _fit_allreduce(
    rows: list[dict[str, Any]], datasheet: Datasheet, notes: list[str]
) -> tuple[float, float, float, FitQuality] | None:
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
    data_path = out.with_name(f"{out.stem}.{label}.parquet")
    with atomic_path(data_path) as tmp:
        pq.write_table(table, tmp)
        save_profile(profile, out, {**meta, f"{label.replace('-', '_')}_file": data_path.name})
    return data_path


def check_writable(out: str | Path) -> None:
    """Refuse an output path before minutes of benchmarking, not after."""
    out = Path(out)
    if out.suffix != ".toml":
        raise UserError(f"--out {out}: a profile is TOML, name it something.toml")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"--out {out}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise UserError(f"--out {out}: directory {parent} is not writable; choose another path")
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; give a file name ending in .toml")


def _default_name(info: DeviceInfo) -> str:
    return "measured-" + re.sub(r"[^a-z0-9]+", "-", info.name.lower()).strip("-")


def _description(info: DeviceInfo, dtype: str) -> str:
    if info.kind == "cpu":
        return (
            f"CPU measurement, not a GPU: {info.name.removeprefix('CPU: ')}, NumPy {dtype} GEMM "
            f"on {info.library} with {info.threads} threads"
        )
    return f"{info.name} (GPU {info.index}), measured by tokenfleet calibrate with CuPy"


def _peak_label(hbm_tb_s: float | None) -> str:
    return f"datasheet {hbm_tb_s * 1e3:.0f} GB/s" if hbm_tb_s else "the fitted rate (no datasheet)"


def _tflops_label(datasheet: Datasheet) -> str:
    if datasheet.peak_tflops_bf16 is None:
        return "the fitted asymptote (no datasheet)"
    return f"{datasheet.peak_tflops_bf16:g} TFLOPS ({datasheet.source})"


def _span(values: np.ndarray, unit: str) -> str:
    return f"{values.min():.0f}-{values.max():.0f} {unit}"


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
