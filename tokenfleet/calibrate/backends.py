"""One array-module interface over CuPy (a GPU) and NumPy (the CPU).

The microbenchmarks are written once against `Backend`; each backend times work the way its
device needs: CUDA events around the kernels on a GPU, `perf_counter_ns` on the CPU. A CPU
measurement is labelled as one (`DeviceInfo.kind == "cpu"`), never passed off as a GPU.
"""

from __future__ import annotations

import itertools
import os
import platform
import resource
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np

from tokenfleet.errors import UserError

GPU_INSTALL_HINT = (
    "install CuPy with pip install 'tokenfleet[gpu]', or measure the CPU with --backend numpy"
)
BACKEND_NAMES = ("auto", "cupy", "numpy")

# cudaError_t values we explain in words (CUDA runtime API, driver_types.h).
CUDA_ERROR_INSUFFICIENT_DRIVER = 35
CUDA_ERROR_NO_DEVICE = 100

# cudaDataType_t (library_types.h) and cuBLAS constants for cublasGemmEx.
_CUDA_R_32F = 0
_CUDA_R_16F = 2
_CUDA_R_16BF = 14
_CUBLAS_OP_N = 0
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT = -1
# bf16 needs compute capability 8.0 (Ampere) or newer.
# dtype -> (cudaDataType, bytes per element, minimum compute capability)
_GPU_GEMM_DTYPES = {
    "bf16": (_CUDA_R_16BF, 2, 8.0),
    "fp16": (_CUDA_R_16F, 2, 5.3),
    "fp32": (_CUDA_R_32F, 4, 0.0),
}
_CPU_GEMM_DTYPES = {"fp32": np.float32, "fp64": np.float64}
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}


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
        return asdict(self)


class Backend(ABC):
    """The array module plus the device-specific parts: timing, GEMM, device facts, memory."""

    name: str
    xp: ModuleType
    info: DeviceInfo
    gemm_dtypes: tuple[str, ...]
    default_gemm_dtypes: tuple[str, ...]

    @abstractmethod
    def synchronize(self) -> None:
        """Wait until all queued work on the device has finished."""

    @abstractmethod
    def time(
        self,
        fn: Callable[[], object],
        *,
        warmup: int,
        repeats: int,
        inner: int = 1,
        budget_s: float = float("inf"),
    ) -> Timing:
        """Time `fn` (per call): `warmup` untimed calls, then up to `repeats` samples of `inner`
        back-to-back calls each, stopping early (after at least 3 samples) once `budget_s` of
        measured time is spent."""

    @abstractmethod
    def gemm(self, dtype: str, m: int, n: int, k: int) -> Callable[[], object]:
        """Allocate operands for C[m,n] = A[m,k] @ B[k,n] in `dtype`; return the call to time.
        Successive calls cycle through `weight_copies` copies of B, so a weight matrix smaller
        than the cache is still read from memory, as a model's weights are in a real step."""

    @abstractmethod
    def peak_memory_bytes(self) -> int:
        """Most memory this run has held on the device (GPU pool, or process peak RSS)."""

    def allreduce(self, nbytes: int) -> Callable[[], object] | None:
        """An all-reduce of `nbytes` across the visible devices, or None with a single device."""
        return None

    @abstractmethod
    def release(self) -> None:
        """Free cached device memory between benchmarks."""

    def time_allreduce(self, fn: Callable[[], object], *, warmup: int, repeats: int) -> Timing:
        """Time a collective made by `allreduce`."""
        return self.time(fn, warmup=warmup, repeats=repeats)

    def check_dtypes(self, dtypes: list[str]) -> list[str]:
        """Refuse a dtype this device cannot multiply in, naming the ones it can."""
        for dtype in dtypes:
            if dtype not in self.gemm_dtypes:
                why = _DTYPE_REFUSALS.get((self.name, dtype), "")
                raise UserError(
                    f"--dtype {dtype} is not available on {self.info.name} ({self.name} backend)"
                    f"{': ' + why if why else ''}; choose from {', '.join(self.gemm_dtypes)}"
                )
        return dtypes


_DTYPE_REFUSALS = {
    ("numpy", "fp16"): "NumPy has no half-precision BLAS GEMM, it would time a scalar loop",
    ("numpy", "bf16"): "NumPy has no bfloat16 type",
    ("numpy", "fp8"): "NumPy has no fp8 type",
    ("cupy", "fp8"): "fp8 GEMM needs cuBLASLt, which CuPy does not expose",
    ("cupy", "bf16"): "bf16 tensor cores need compute capability 8.0 or newer",
}


def weight_copies(cache_bytes: int, weight_bytes: int, limit: int = 64) -> int:
    """Copies of a weight matrix that together cover twice the cache (at least one)."""
    return max(1, min(limit, -(-2 * cache_bytes // max(weight_bytes, 1))))


def _wall_time(
    fn: Callable[[], object],
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


# --------------------------------------------------------------------------- NumPy (CPU)


class NumpyBackend(Backend):
    """The CPU through NumPy and the BLAS it links: honest CPU figures, and the tested path."""

    name = "numpy"
    gemm_dtypes = tuple(_CPU_GEMM_DTYPES)
    default_gemm_dtypes = ("fp32",)

    def __init__(self) -> None:
        self.xp = np
        self.info = _cpu_info()

    def synchronize(self) -> None:
        """NumPy calls return when their work is done."""

    def time(self, fn, *, warmup, repeats, inner=1, budget_s=float("inf")) -> Timing:
        return _wall_time(
            fn, self.synchronize, warmup=warmup, repeats=repeats, inner=inner, budget_s=budget_s
        )

    def gemm(self, dtype: str, m: int, n: int, k: int) -> Callable[[], object]:
        np_dtype = _CPU_GEMM_DTYPES[self.check_dtypes([dtype])[0]]
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k), dtype=np.float32).astype(np_dtype)
        copies = weight_copies(self.info.cache_bytes, k * n * DTYPE_BYTES[dtype])
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


# --------------------------------------------------------------------------- CuPy (GPU)


class CupyBackend(Backend):
    """A CUDA GPU through CuPy: CUDA events around kernels, cuBLAS GemmEx, NCCL all-reduce."""

    name = "cupy"

    def __init__(self, cupy: ModuleType, device: int) -> None:
        self.xp = cupy
        self._cupy = cupy
        self._device = cupy.cuda.Device(device)
        self._device.use()
        self.info = _gpu_info(cupy, device)
        cc = float(self.info.compute_capability or "0")
        self.gemm_dtypes = tuple(
            d for d, (_, _, min_cc) in _GPU_GEMM_DTYPES.items() if cc >= min_cc
        )
        self.default_gemm_dtypes = ("bf16",) if "bf16" in self.gemm_dtypes else ("fp16",)
        self._pool = cupy.get_default_memory_pool()
        self._peak_bytes = 0
        self._comms: list[Any] | None = None

    def synchronize(self) -> None:
        self._device.synchronize()

    def time(self, fn, *, warmup, repeats, inner=1, budget_s=float("inf")) -> Timing:
        """CUDA events recorded on the current stream around each sample: device time, no host
        jitter. With `inner` > 1 the sample spans back-to-back launches (the launch-rate probe)."""
        cuda = self._cupy.cuda
        for _ in range(warmup):
            fn()
        self.synchronize()
        stream = cuda.get_current_stream()
        start, end = cuda.Event(), cuda.Event()
        samples: list[float] = []
        spent = 0.0
        for _ in range(repeats):
            start.record(stream)
            for _ in range(inner):
                fn()
            end.record(stream)
            end.synchronize()
            elapsed = cuda.get_elapsed_time(start, end) * 1e-3  # milliseconds -> seconds
            samples.append(elapsed / inner)
            spent += elapsed
            if spent > budget_s and len(samples) >= 3:
                break
        self._peak_bytes = max(self._peak_bytes, self._pool.total_bytes())
        return Timing.from_samples(samples)

    def gemm(self, dtype: str, m: int, n: int, k: int) -> Callable[[], object]:
        """cublasGemmEx with fp32 accumulation, row-major C = A @ B computed as the column-major
        C^T = B^T A^T (so cuBLAS sees m=n, n=m). bf16 operands are stored as uint16 bit patterns,
        since CuPy has no bfloat16 dtype."""
        cp = self._cupy
        cuda_type, itemsize, _ = _GPU_GEMM_DTYPES[self.check_dtypes([dtype])[0]]
        a = _random_operand(cp, (m, k), dtype)
        copies = weight_copies(self.info.cache_bytes, k * n * itemsize)
        weights = itertools.cycle([_random_operand(cp, (k, n), dtype) for _ in range(copies)])
        c = cp.empty((m, n), dtype=a.dtype)
        alpha = np.array(1.0, dtype=np.float32)
        beta = np.array(0.0, dtype=np.float32)
        handle = self._device.cublas_handle
        gemm_ex = cp.cuda.cublas.gemmEx

        def run() -> None:
            b = next(weights)
            gemm_ex(
                handle, _CUBLAS_OP_N, _CUBLAS_OP_N, n, m, k,
                alpha.ctypes.data, b.data.ptr, cuda_type, n, a.data.ptr, cuda_type, k,
                beta.ctypes.data, c.data.ptr, cuda_type, n,
                _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT,
            )  # fmt: skip

        return run

    def allreduce(self, nbytes: int) -> Callable[[], object] | None:
        """NCCL all-reduce (fp16 sum) of `nbytes` across every visible GPU, one process."""
        if self.info.device_count < 2:
            return None
        cp = self._cupy
        nccl = cp.cuda.nccl
        devices = list(range(self.info.device_count))
        if self._comms is None:
            self._comms = nccl.NcclCommunicator.initAll(devices)
        count = max(nbytes // 2, 1)
        buffers, streams = [], []
        for dev in devices:
            with cp.cuda.Device(dev):
                buffers.append((cp.ones(count, dtype=cp.float16), cp.empty(count, cp.float16)))
                streams.append(cp.cuda.get_current_stream())
        comms = self._comms

        def run() -> None:
            nccl.groupStart()
            for comm, (send, recv), stream in zip(comms, buffers, streams, strict=True):
                comm.allReduce(
                    send.data.ptr,
                    recv.data.ptr,
                    count,
                    nccl.NCCL_FLOAT16,
                    nccl.NCCL_SUM,
                    stream.ptr,
                )
            nccl.groupEnd()

        return run

    def time_allreduce(self, fn: Callable[[], object], *, warmup: int, repeats: int) -> Timing:
        """An all-reduce spans every GPU, so it is timed on the host clock after synchronising
        all of them (events on one device would miss the slowest rank)."""

        def sync_all() -> None:
            for dev in range(self.info.device_count):
                self._cupy.cuda.Device(dev).synchronize()

        return _wall_time(
            fn, sync_all, warmup=warmup, repeats=repeats, inner=1, budget_s=float("inf")
        )

    def peak_memory_bytes(self) -> int:
        return max(self._peak_bytes, self._pool.total_bytes())

    def release(self) -> None:
        self._peak_bytes = max(self._peak_bytes, self._pool.total_bytes())
        self._pool.free_all_blocks()


def _random_operand(cp: ModuleType, shape: tuple[int, int], dtype: str) -> Any:
    values = cp.random.standard_normal(shape, dtype=cp.float32)
    if dtype == "bf16":  # truncate fp32 to its top 16 bits: the bfloat16 bit pattern
        return (values.view(cp.uint32) >> 16).astype(cp.uint16)
    return values.astype(cp.float16 if dtype == "fp16" else cp.float32)


def _gpu_info(cupy: ModuleType, device: int) -> DeviceInfo:
    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(device)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    clock_khz = props.get("clockRate") or 0
    mem_clock_khz = props.get("memoryClockRate") or 0
    handle = cupy.cuda.Device(device).cublas_handle
    return DeviceInfo(
        backend="cupy",
        kind="gpu",
        name=name,
        index=device,
        device_count=runtime.getDeviceCount(),
        memory_bytes=int(props["totalGlobalMem"]),
        compute_units=int(props["multiProcessorCount"]),
        clock_mhz=clock_khz / 1000 if clock_khz else None,
        memory_clock_mhz=mem_clock_khz / 1000 if mem_clock_khz else None,
        memory_bus_bits=props.get("memoryBusWidth"),
        cache_bytes=int(props.get("l2CacheSize") or 0),
        compute_capability=f"{props['major']}.{props['minor']}",
        driver_version=_cuda_version(runtime.driverGetVersion()),
        runtime_version=_cuda_version(runtime.runtimeGetVersion()),
        library=f"cuBLAS {cupy.cuda.cublas.getVersion(handle)}, CuPy {cupy.__version__}",
        threads=1,
        threads_source="one host thread drives the GPU",
    )


def _cuda_version(code: int) -> str:
    """CUDA encodes versions as 1000 * major + 10 * minor (12020 -> '12.2')."""
    return f"{code // 1000}.{(code % 1000) // 10}"


# --------------------------------------------------------------------------- choosing one


def open_backend(name: str, device: int = 0) -> tuple[Backend, str | None]:
    """The backend asked for, and for `auto` a note saying why the CPU was chosen (if it was).

    `cupy` never falls back: no CuPy, no GPU or an old driver is a UserError naming the fix.
    """
    if name not in BACKEND_NAMES:
        raise UserError(f"--backend {name}: choose one of {', '.join(BACKEND_NAMES)}")
    if name == "numpy":
        return NumpyBackend(), None
    try:
        return open_cupy(device), None
    except UserError as err:
        if name == "cupy":
            raise
        reason = str(err).split(";")[0]
        return NumpyBackend(), f"--backend auto: {reason}, so this measures the CPU with NumPy"


def open_cupy(device: int) -> CupyBackend:
    cupy = _import_cupy()
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
        if count == 0:
            raise UserError(f"CuPy sees no CUDA device; {GPU_INSTALL_HINT}")
        if not 0 <= device < count:
            raise UserError(f"--device {device}: {count} GPU(s) visible, use 0..{count - 1}")
        return CupyBackend(cupy, device)
    except runtime.CUDARuntimeError as err:
        raise UserError(_explain_cuda_error(err)) from None


def _import_cupy() -> ModuleType:
    try:
        import cupy
    except ImportError as err:
        reason = "CuPy is not installed" if err.name == "cupy" else f"CuPy failed to load ({err})"
        raise UserError(f"{reason}; {GPU_INSTALL_HINT}") from None
    return cupy


def _explain_cuda_error(err: Exception) -> str:
    status = getattr(err, "status", None)
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if status == CUDA_ERROR_INSUFFICIENT_DRIVER or "cudaErrorInsufficientDriver" in text:
        return (
            "the NVIDIA driver is older than CuPy's CUDA runtime (cudaErrorInsufficientDriver); "
            "update the driver or install the CuPy wheel for its CUDA version "
            "(pip install 'tokenfleet[gpu]' is CUDA 12), or use --backend numpy"
        )
    if status == CUDA_ERROR_NO_DEVICE or "cudaErrorNoDevice" in text:
        return f"no CUDA-capable GPU is visible (cudaErrorNoDevice); {GPU_INSTALL_HINT}"
    return f"CUDA error while opening the GPU: {text}; check nvidia-smi, or use --backend numpy"
