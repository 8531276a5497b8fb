"""The datasheet a measurement is compared against: a built-in profile (named, or matched to
the device's name), else peaks derived from the GPU's properties, else none (a CPU).

Efficiencies are relative to a datasheet peak, so a profile measured on a GPU keeps the vendor
figures and carries the measurement in its efficiencies; without one they are relative to the
best measured GEMM point and the fitted streaming rate. A CPU is never compared with a GPU's
datasheet: the profile would carry that GPU's link and attention figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tokenfleet.calibrate.backends.base import DeviceInfo
from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import GpuProfile, list_profiles, load_profile

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


@dataclass(frozen=True)
class Datasheet:
    """The peaks efficiencies are relative to, and where they come from."""

    source: str  # "built-in a100-80gb", "device properties", "none (...)"
    peak_tflops_bf16: float | None  # None: relative to the best measured point
    hbm_tb_s: float | None  # None: use the fitted streaming rate
    hbm_gb: float
    link_gb_s: float | None
    tdp_w: float
    peak_tflops_fp8: float = 0.0
    peak_tflops_fp4: float = 0.0
    base: GpuProfile | None = None


def choose_datasheet(info: DeviceInfo, base: str | None) -> Datasheet:
    """`base` (a built-in name or profile path) if given; else the built-in matching the GPU's
    name; else peaks derived from the GPU's properties; a CPU has no datasheet."""
    if info.kind == "cpu" and base is not None:
        raise UserError(
            f"gpu = {base}: a CPU measurement is not compared with a GPU's datasheet (the "
            "profile would carry that GPU's link and attention figures); leave it out"
        )
    if base is not None:
        return _from_profile(load_profile(base), f"--gpu {base}")
    if info.kind == "cpu":
        return Datasheet(
            source="none: a CPU has no datasheet here, peaks are the best measured point and "
            "the fitted streaming rate",
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
    """A built-in or given profile's peaks as the datasheet, the profile kept as the base."""
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
