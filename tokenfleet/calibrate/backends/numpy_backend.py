"""The CPU backend: NumPy and the BLAS it links, timed on the host clock. Its figures describe
the CPU and say so (`DeviceInfo.kind == "cpu"`); it is also the path the tests run."""

from __future__ import annotations

import itertools
import math
import os
import platform
import resource

import numpy as np

from tokenfleet.calibrate.backends.base import (
    DTYPE_BYTES,
    Backend,
    DeviceInfo,
    Kernel,
    Timing,
    wall_time,
)

_CPU_GEMM_DTYPES = {"fp32": np.float32, "fp64": np.float64}


class NumpyBackend(Backend):
    """The CPU through NumPy and the BLAS it links: honest CPU figures, and the tested path."""

    name = "numpy"
    gemm_dtypes = tuple(_CPU_GEMM_DTYPES)
    default_gemm_dtypes = ("fp32",)
    dtype_refusals = {
        "fp16": "NumPy has no half-precision BLAS GEMM, it would time a scalar loop",
        "bf16": "NumPy has no bfloat16 type",
        "fp8": "NumPy has no fp8 type",
    }

    def __init__(self) -> None:
        self.xp = np
        self.info = _cpu_info()

    def synchronize(self) -> None:
        """NumPy calls return when their work is done."""

    def time(
        self, fn: Kernel, *, warmup: int, repeats: int, inner: int = 1, budget_s: float = math.inf
    ) -> Timing:
        return wall_time(
            fn, self.synchronize, warmup=warmup, repeats=repeats, inner=inner, budget_s=budget_s
        )

    def gemm(self, dtype: str, m: int, n: int, k: int) -> Kernel:
        np_dtype = _CPU_GEMM_DTYPES[self.check_dtypes([dtype])[0]]
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k), dtype=np.float32).astype(np_dtype)
        copies = self.weight_copies(k * n * DTYPE_BYTES[dtype])
        weights = itertools.cycle(
            [rng.standard_normal((k, n), dtype=np.float32).astype(np_dtype) for _ in range(copies)]
        )
        c = np.empty((m, n), dtype=np_dtype)
        return lambda: np.matmul(a, next(weights), out=c)

    def peak_memory_bytes(self) -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def release(self) -> None:
        """Nothing is cached: NumPy frees an array when its last reference goes."""


def _cpu_info() -> DeviceInfo:
    """The CPU as the OS and NumPy's BLAS describe it: the provenance of a CPU profile."""
    threads, source, blas = _blas_threads()
    return DeviceInfo(
        backend="numpy",
        kind="cpu",
        name=f"CPU: {_cpu_model()}",
        index=0,
        device_count=1,
        memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        compute_units=len(os.sched_getaffinity(0)),
        clock_mhz=None,
        memory_clock_mhz=None,
        memory_bus_bits=None,
        cache_bytes=_last_level_cache_bytes(),
        compute_capability=None,
        driver_version=None,
        runtime_version=f"numpy {np.__version__}",
        library=blas,
        threads=threads,
        threads_source=source,
    )


def _cpu_model() -> str:
    """The CPU's model name, for the profile's description."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _last_level_cache_bytes() -> int:
    """This core's largest cache from sysfs (the per-complex L3 on chiplet CPUs)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    sizes = [0]
    for entry in os.listdir(base) if os.path.isdir(base) else ():
        try:
            with open(f"{base}/{entry}/size", encoding="utf-8") as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        if text.rstrip("KMG").isdigit():
            sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes) or 32 * 1024**2  # unknown: assume a large server L3


def _blas_threads() -> tuple[int, str, str]:
    """(threads, where that number came from, BLAS name and version) for NumPy's BLAS."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                name = f"{pool.get('internal_api')} {pool.get('version')}"
                return int(pool["num_threads"]), "threadpoolctl", name
    blas = "unknown BLAS"
    try:
        config = np.show_config(mode="dicts")
        dep = config["Build Dependencies"]["blas"]
        blas = f"{dep.get('name', 'blas')} {dep.get('version', '')}".strip()
    except (TypeError, KeyError):
        pass
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value), var, blas
    return len(os.sched_getaffinity(0)), "cores in the CPU affinity mask (BLAS default)", blas
