"""The array-module interface both backends implement, so the microbenchmarks are written once:
`Backend`, what it measures (`Timing`) and the provenance it reports (`DeviceInfo`)."""

from __future__ import annotations

import math
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from tokenfleet.errors import UserError

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}
Kernel = Callable[[], object]  # one call of the work being timed, queued on the device


@dataclass(frozen=True)
class Timing:
    """Summary of repeated timings of one kernel (seconds per call)."""

    median_s: float
    min_s: float
    max_s: float
    iqr_s: float
    repeats: int

    @classmethod
    def from_samples(cls, samples_s: list[float]) -> Timing:
        """Median, extremes and interquartile range of per-call samples."""
        if not samples_s:
            raise ValueError("no timing samples")
        q = (
            statistics.quantiles(samples_s, n=4, method="inclusive")
            if len(samples_s) > 1
            else [samples_s[0]] * 3
        )
        return cls(
            median_s=statistics.median(samples_s),
            min_s=min(samples_s),
            max_s=max(samples_s),
            iqr_s=q[2] - q[0],
            repeats=len(samples_s),
        )


@dataclass(frozen=True)
class DeviceInfo:
    """What was measured: written into the profile so a reader knows the provenance."""

    backend: str  # "cupy" | "numpy"
    kind: str  # "gpu" | "cpu"
    name: str
    index: int
    device_count: int
    memory_bytes: int
    compute_units: int  # SMs on a GPU, usable cores on a CPU
    clock_mhz: float | None
    memory_clock_mhz: float | None
    memory_bus_bits: int | None
    cache_bytes: int  # L2 on a GPU, last-level cache on a CPU
    compute_capability: str | None
    driver_version: str | None
    runtime_version: str | None
    library: str  # cuBLAS version, or the BLAS NumPy links
    threads: int
    threads_source: str

    def as_dict(self) -> dict[str, Any]:
        """The device table of the profile's [meta]."""
        return asdict(self)


class Backend(ABC):
    """The array module plus the device-specific parts: timing, GEMM, device facts, memory."""

    name: str
    xp: ModuleType
    info: DeviceInfo
    gemm_dtypes: tuple[str, ...]
    default_gemm_dtypes: tuple[str, ...]
    dtype_refusals: dict[str, str] = {}  # dtype -> why this backend cannot multiply in it

    @abstractmethod
    def synchronize(self) -> None:
        """Wait until all queued work on the device has finished."""

    @abstractmethod
    def time(
        self, fn: Kernel, *, warmup: int, repeats: int, inner: int = 1, budget_s: float = math.inf
    ) -> Timing:
        """Time `fn` (per call): `warmup` untimed calls, then up to `repeats` samples of `inner`
        back-to-back calls each, stopping early (after at least 3 samples) once `budget_s` of
        measured time is spent."""

    @abstractmethod
    def gemm(self, dtype: str, m: int, n: int, k: int) -> Kernel:
        """Allocate operands for C[m,n] = A[m,k] @ B[k,n] in `dtype`; return the call to time.
        Successive calls cycle through `weight_copies` copies of B, so a weight matrix smaller
        than the cache is still read from memory, as a model's weights are in a real step."""

    @abstractmethod
    def peak_memory_bytes(self) -> int:
        """Most memory this run has held on the device (GPU pool, or process peak RSS)."""

    def allreduce(self, nbytes: int) -> Kernel | None:
        """An all-reduce of `nbytes` across the visible devices, or None with a single device."""
        return None

    @abstractmethod
    def release(self) -> None:
        """Free cached device memory between benchmarks."""

    def time_allreduce(self, fn: Kernel, *, warmup: int, repeats: int) -> Timing:
        """Time a collective made by `allreduce`."""
        return self.time(fn, warmup=warmup, repeats=repeats)

    def weight_copies(self, weight_bytes: int, limit: int = 64) -> int:
        """Copies of a weight matrix that together cover twice this device's cache (at least
        one), so cycling through them reads memory, not cache."""
        return max(1, min(limit, -(-2 * self.info.cache_bytes // max(weight_bytes, 1))))

    def check_dtypes(self, dtypes: list[str]) -> list[str]:
        """Refuse a dtype this device cannot multiply in, naming the ones it can."""
        for dtype in dtypes:
            if dtype not in self.gemm_dtypes:
                why = self.dtype_refusals.get(dtype, "")
                raise UserError(
                    f"dtype = {dtype} is not available on {self.info.name} ({self.name} backend)"
                    f"{': ' + why if why else ''}; choose from {', '.join(self.gemm_dtypes)}"
                )
        return dtypes


def wall_time(
    fn: Kernel,
    sync: Callable[[], None],
    *,
    warmup: int,
    repeats: int,
    inner: int,
    budget_s: float,
) -> Timing:
    """Host-clock timing with a synchronisation before reading the clock."""
    for _ in range(warmup):
        fn()
    sync()
    samples: list[float] = []
    spent = 0.0
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        sync()
        elapsed = (time.perf_counter_ns() - start) * 1e-9
        samples.append(elapsed / inner)
        spent += elapsed
        if spent > budget_s and len(samples) >= 3:
            break
    return Timing.from_samples(samples)
