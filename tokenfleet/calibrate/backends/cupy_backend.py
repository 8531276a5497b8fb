"""The GPU backend: a CUDA GPU through CuPy, timed with CUDA events, multiplied with cuBLAS
GemmEx and all-reduced with NCCL; and the CUDA errors of opening one, explained with their fix."""

from __future__ import annotations

import itertools
import math
from types import ModuleType
from typing import Any

import numpy as np

from tokenfleet.calibrate.backends.base import Backend, DeviceInfo, Kernel, Timing, wall_time
from tokenfleet.errors import UserError

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


class CupyBackend(Backend):
    """A CUDA GPU through CuPy: CUDA events around kernels, cuBLAS GemmEx, NCCL all-reduce."""

    name = "cupy"
    dtype_refusals = {
        "fp8": "fp8 GEMM needs cuBLASLt, which CuPy does not expose",
        "bf16": "bf16 tensor cores need compute capability 8.0 or newer",
    }

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

    def time(
        self, fn: Kernel, *, warmup: int, repeats: int, inner: int = 1, budget_s: float = math.inf
    ) -> Timing:
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

    def gemm(self, dtype: str, m: int, n: int, k: int) -> Kernel:
        """cublasGemmEx with fp32 accumulation, row-major C = A @ B computed as the column-major
        C^T = B^T A^T (so cuBLAS sees m=n, n=m). bf16 operands are stored as uint16 bit patterns,
        since CuPy has no bfloat16 dtype."""
        cp = self._cupy
        cuda_type, itemsize, _ = _GPU_GEMM_DTYPES[self.check_dtypes([dtype])[0]]
        a = _random_operand(cp, (m, k), dtype)
        copies = self.weight_copies(k * n * itemsize)
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

    def allreduce(self, nbytes: int) -> Kernel | None:
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

    def time_allreduce(self, fn: Kernel, *, warmup: int, repeats: int) -> Timing:
        """An all-reduce spans every GPU, so it is timed on the host clock after synchronising
        all of them (events on one device would miss the slowest rank)."""

        def sync_all() -> None:
            for dev in range(self.info.device_count):
                self._cupy.cuda.Device(dev).synchronize()

        return wall_time(
            fn, sync_all, warmup=warmup, repeats=repeats, inner=1, budget_s=float("inf")
        )

    def peak_memory_bytes(self) -> int:
        return max(self._peak_bytes, self._pool.total_bytes())

    def release(self) -> None:
        self._peak_bytes = max(self._peak_bytes, self._pool.total_bytes())
        self._pool.free_all_blocks()


def _random_operand(cp: ModuleType, shape: tuple[int, int], dtype: str) -> Any:
    """A random matrix in `dtype`'s storage type (bf16 as uint16 bit patterns)."""
    values = cp.random.standard_normal(shape, dtype=cp.float32)
    if dtype == "bf16":  # truncate fp32 to its top 16 bits: the bfloat16 bit pattern
        return (values.view(cp.uint32) >> 16).astype(cp.uint16)
    return values.astype(cp.float16 if dtype == "fp16" else cp.float32)


def _gpu_info(cupy: ModuleType, device: int) -> DeviceInfo:
    """The GPU as the CUDA runtime describes it: the provenance of a GPU profile."""
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


class NoUsableGpu(UserError):
    """No GPU to measure: why (`reason`) and what to do (`fix`). The message ends with the CPU
    alternative; a front end names it its own way (`message("--backend numpy")`)."""

    def __init__(self, reason: str, fix: str) -> None:
        self.reason, self.fix = reason, fix
        super().__init__(self.message("the numpy backend"))

    def message(self, numpy_backend: str) -> str:
        """One line: no usable GPU, why, the fix, and how to measure the CPU instead."""
        return f"no usable GPU: {self.reason}; {self.fix}, or measure the CPU with {numpy_backend}"


_NO_DEVICE_FIX = "check nvidia-smi and CUDA_VISIBLE_DEVICES"


def open_cupy(device: int) -> CupyBackend:
    """GPU `device` through CuPy. No CuPy, no CUDA device or an old driver is a NoUsableGpu;
    a device index the machine does not have is a UserError naming the ones it has."""
    cupy = _import_cupy()
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except runtime.CUDARuntimeError as err:
        raise _explain_cuda_error(err, runtime) from None
    if count == 0:
        raise NoUsableGpu("no CUDA device (CuPy sees 0 GPUs)", _NO_DEVICE_FIX)
    if not 0 <= device < count:
        raise UserError(
            f"device = {device}: this machine has {count} GPU(s), numbered 0 to {count - 1}"
        )
    try:
        return CupyBackend(cupy, device)
    except runtime.CUDARuntimeError as err:
        raise _explain_cuda_error(err, runtime) from None


def _import_cupy() -> ModuleType:
    """CuPy (an optional extra), or a NoUsableGpu saying how to install it."""
    try:
        import cupy
    except ImportError as err:
        if err.name == "cupy":
            raise NoUsableGpu(
                "CuPy is not installed", "install it with pip install 'tokenfleet[gpu]'"
            ) from None
        raise NoUsableGpu(
            f"CuPy failed to load ({str(err).splitlines()[0]})",
            "reinstall the CuPy wheel for your CUDA version (pip install 'tokenfleet[gpu]' "
            "is CUDA 12)",
        ) from None
    return cupy


def _explain_cuda_error(err: Exception, runtime: Any) -> NoUsableGpu:
    """What a CUDA error on opening the GPU means and how to fix it. The runtime reports a
    machine with no NVIDIA driver at all as cudaErrorInsufficientDriver, like an old driver;
    the driver version (0 when there is none) tells the two apart."""
    status = getattr(err, "status", None)
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if status == CUDA_ERROR_NO_DEVICE or "cudaErrorNoDevice" in text:
        return NoUsableGpu("no CUDA device (cudaErrorNoDevice)", _NO_DEVICE_FIX)
    if status == CUDA_ERROR_INSUFFICIENT_DRIVER or "cudaErrorInsufficientDriver" in text:
        driver = _driver_version(runtime)
        if driver is None:
            return NoUsableGpu(
                "no CUDA device (no NVIDIA driver is installed)",
                "on a machine with an NVIDIA GPU, install its driver",
            )
        wanted = _cuda_version(runtime.runtimeGetVersion())
        return NoUsableGpu(
            f"the NVIDIA driver supports CUDA {driver}, older than CuPy's CUDA runtime {wanted} "
            "(cudaErrorInsufficientDriver)",
            f"update the driver, or install the CuPy wheel for CUDA {driver}",
        )
    return NoUsableGpu(f"CUDA error while opening the GPU: {text}", "check nvidia-smi")


def _driver_version(runtime: Any) -> str | None:
    """The CUDA version the installed driver supports, or None without a driver."""
    try:
        code = runtime.driverGetVersion()
    except runtime.CUDARuntimeError:
        return None
    return _cuda_version(code) if code > 0 else None
