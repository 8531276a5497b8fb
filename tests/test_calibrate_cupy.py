"""The CuPy backend's logic (CUDA-event timing, device query, cuBLAS call layout, NCCL, error
mapping) against a small fake of the CuPy module, since this machine has no GPU.

The fake's arrays are NumPy arrays with a `.data.ptr`; its "kernels" advance a fake device
clock by a programmed duration, so event timing has known answers.
"""

from __future__ import annotations

import builtins
import re
import sys
import types
from typing import Any

import numpy as np
import pytest

from tokenfleet.calibrate.backends import NoUsableGpu, open_backend
from tokenfleet.calibrate.backends.cupy_backend import CupyBackend
from tokenfleet.calibrate.calibration import build_calibration
from tokenfleet.calibrate.datasheet import choose_datasheet
from tokenfleet.calibrate.microbench import GemmShape, plan_benchmarks, run_microbenchmarks
from tokenfleet.cli.main import cli
from tokenfleet.errors import UserError


class FakeGpu:
    """The programmed device: its properties and how long each kind of kernel takes."""

    def __init__(
        self,
        *,
        devices: int = 1,
        name: str = "NVIDIA H100 80GB HBM3",
        memory_bytes: int = 256 << 20,
        peak_tflops: float = 500.0,
        m_half: float = 64.0,
        bandwidth_gb_s: float = 2000.0,
        launch_s: float = 4e-6,
        major: int = 9,
        driver: int | None = 12020,  # None: the driver query fails
        runtime: int = 12040,
        count_error: int | None = None,
    ) -> None:
        self.devices = devices
        self.name = name
        self.memory_bytes = memory_bytes
        self.peak_tflops = peak_tflops
        self.m_half = m_half
        self.bandwidth_gb_s = bandwidth_gb_s
        self.launch_s = launch_s
        self.major = major
        self.driver = driver
        self.runtime = runtime
        self.count_error = count_error
        self.clock_ms = 0.0
        self.gemm_calls: list[tuple] = []
        self.weight_pointers: list[int] = []
        self.allreduce_calls: list[tuple] = []

    def advance(self, seconds: float) -> None:
        self.clock_ms += seconds * 1e3

    def gemm_seconds(self, m: int, n: int, k: int, itemsize: int) -> float:
        """StepTime's roofline with efficiency M / (M + m_half) of the peak."""
        efficiency = m / (m + self.m_half)
        compute = 2.0 * m * n * k / (self.peak_tflops * 1e12 * efficiency)
        memory = (m * k + k * n + m * n) * itemsize / (self.bandwidth_gb_s * 1e9)
        return max(compute, memory)


def make_fake_cupy(gpu: FakeGpu) -> types.ModuleType:
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "13.0.0-fake"

    class DeviceArray(np.ndarray):
        @property
        def data(self) -> Any:  # CuPy's MemoryPointer: only .ptr is used
            return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

        def fill(self, value: Any) -> None:
            gpu.advance(gpu.launch_s + self.nbytes / (gpu.bandwidth_gb_s * 1e9))
            np.ndarray.fill(self, value)

    def on_device(a: Any) -> Any:
        return np.asarray(a).view(DeviceArray)

    for dtype in ("float16", "float32", "float64", "uint16", "uint32"):
        setattr(cupy, dtype, getattr(np, dtype))
    cupy.zeros = lambda *a, **k: on_device(np.zeros(*a, **k))
    cupy.ones = lambda *a, **k: on_device(np.ones(*a, **k))
    cupy.empty = lambda *a, **k: on_device(np.empty(*a, **k))
    cupy.empty_like = lambda a, **k: on_device(np.empty_like(a, **k))

    def matmul(a: Any, b: Any, out: Any = None) -> Any:
        gpu.advance(gpu.launch_s + (a.nbytes + b.nbytes) / (gpu.bandwidth_gb_s * 1e9))
        return np.matmul(a, b, out=out)

    def copyto(dst: Any, src: Any) -> None:
        gpu.advance(gpu.launch_s + (dst.nbytes + src.nbytes) / (gpu.bandwidth_gb_s * 1e9))
        np.copyto(dst, src)

    def add(a: Any, b: Any, out: Any = None) -> Any:
        gpu.advance(gpu.launch_s)
        return np.add(a, b, out=out)

    cupy.matmul, cupy.copyto, cupy.add = matmul, copyto, add
    rng = np.random.default_rng(0)
    cupy.random = types.SimpleNamespace(
        standard_normal=lambda shape, dtype: on_device(rng.standard_normal(shape, dtype=dtype))
    )

    class MemoryPool:
        def __init__(self) -> None:
            self.freed = 0

        def total_bytes(self) -> int:
            return 123 << 20

        def free_all_blocks(self) -> None:
            self.freed += 1

    pool = MemoryPool()
    cupy.get_default_memory_pool = lambda: pool

    class CUDARuntimeError(RuntimeError):
        def __init__(self, status: int, text: str) -> None:
            super().__init__(text)
            self.status = status

    errors = {
        35: "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime",
        100: "cudaErrorNoDevice: no CUDA-capable device is detected",
        999: "cudaErrorUnknown: unknown error",
    }

    def get_device_count() -> int:
        if gpu.count_error is not None:
            raise CUDARuntimeError(gpu.count_error, errors[gpu.count_error])
        return gpu.devices

    def driver_version() -> int:
        if gpu.driver is None:
            raise CUDARuntimeError(35, errors[35])
        return gpu.driver

    runtime = types.SimpleNamespace(
        CUDARuntimeError=CUDARuntimeError,
        getDeviceCount=get_device_count,
        getDeviceProperties=lambda i: {
            "name": gpu.name.encode(),
            "totalGlobalMem": gpu.memory_bytes,
            "multiProcessorCount": 132,
            "clockRate": 1_980_000,  # kHz
            "memoryClockRate": 2_619_000,
            "memoryBusWidth": 5120,
            "l2CacheSize": 50 << 20,
            "major": gpu.major,
            "minor": 0,
        },
        driverGetVersion=driver_version,
        runtimeGetVersion=lambda: gpu.runtime,
    )

    class Device:
        def __init__(self, index: int = 0) -> None:
            self.id = index
            self.cublas_handle = 4242

        def use(self) -> None:
            pass

        def synchronize(self) -> None:
            pass

        def __enter__(self) -> Device:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    class Event:
        def __init__(self) -> None:
            self.time_ms = None

        def record(self, stream: Any = None) -> None:
            self.time_ms = gpu.clock_ms

        def synchronize(self) -> None:
            pass

    def gemm_ex(handle, transa, transb, m, n, k, alpha, a, atype, lda, b, btype, ldb, beta, c,
                ctype, ldc, compute, algo):  # fmt: skip
        gpu.gemm_calls.append((handle, transa, transb, m, n, k, atype, lda, btype, ldb, ctype, ldc,
                               compute, algo))  # fmt: skip
        gpu.weight_pointers.append(a)  # cuBLAS's A is the row-major weight matrix
        itemsize = {0: 4, 2: 2, 14: 2}[atype]
        gpu.advance(gpu.gemm_seconds(n, m, k, itemsize))  # cuBLAS n is the row-major M

    class Communicator:
        @staticmethod
        def initAll(devices: list[int]) -> list[Communicator]:  # noqa: N802 (CuPy's name)
            return [Communicator() for _ in devices]

        def allReduce(self, send, recv, count, datatype, op, stream):  # noqa: N802
            gpu.allreduce_calls.append((count, datatype, op))

    nccl = types.SimpleNamespace(
        NcclCommunicator=Communicator,
        groupStart=lambda: None,
        groupEnd=lambda: None,
        NCCL_FLOAT16=6,
        NCCL_SUM=0,
    )
    cupy.cuda = types.SimpleNamespace(
        runtime=runtime,
        Device=Device,
        Event=Event,
        get_elapsed_time=lambda start, end: end.time_ms - start.time_ms,
        get_current_stream=lambda: types.SimpleNamespace(ptr=0),
        cublas=types.SimpleNamespace(gemmEx=gemm_ex, getVersion=lambda handle: 120400),
        nccl=nccl,
    )
    return cupy


@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """Install a fake `cupy` built from a FakeGpu; returns a function to (re)program it."""

    def install(**settings: Any) -> FakeGpu:
        gpu = FakeGpu(**settings)
        monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy(gpu))
        return gpu

    return install


def test_device_properties_come_from_the_runtime(fake_gpu) -> None:
    fake_gpu(devices=2)
    backend = open_backend("cupy", device=1)
    info = backend.info
    assert isinstance(backend, CupyBackend)
    assert (info.kind, info.name, info.index, info.device_count) == (
        "gpu", "NVIDIA H100 80GB HBM3", 1, 2,
    )  # fmt: skip
    assert (info.compute_units, info.clock_mhz, info.memory_clock_mhz) == (132, 1980.0, 2619.0)
    assert (info.memory_bus_bits, info.cache_bytes, info.compute_capability) == (
        5120,
        50 << 20,
        "9.0",
    )
    assert (info.driver_version, info.runtime_version) == ("12.2", "12.4")
    assert info.library.startswith("cuBLAS 120400")
    assert backend.default_gemm_dtypes == ("bf16",)


def test_cuda_events_time_the_device_clock(fake_gpu) -> None:
    gpu = fake_gpu()
    backend = open_backend("cupy")
    calls = []

    def kernel() -> None:
        calls.append(1)
        gpu.advance(1.5e-3 if len(calls) > 2 else 1.0)  # the two warm-ups are slow

    timing = backend.time(kernel, warmup=2, repeats=5, inner=4)
    assert len(calls) == 2 + 5 * 4
    assert timing.repeats == 5
    assert timing.median_s == pytest.approx(1.5e-3) and timing.max_s == pytest.approx(1.5e-3)
    assert timing.iqr_s == pytest.approx(0.0, abs=1e-12)


def test_budget_stops_repeats_after_three_samples(fake_gpu) -> None:
    gpu = fake_gpu()
    backend = open_backend("cupy")
    timing = backend.time(lambda: gpu.advance(0.4), warmup=0, repeats=50, budget_s=1.0)
    assert timing.repeats == 3


def test_gemm_is_row_major_through_cublas_gemm_ex(fake_gpu) -> None:
    gpu = fake_gpu()
    backend = open_backend("cupy")
    backend.gemm("bf16", 8, 32, 16)()
    backend.gemm("fp16", 8, 32, 16)()
    # C[8,32] = A[8,16] @ B[16,32] row-major is C^T = B^T A^T column-major: m=32, n=8, k=16.
    handle, ta, tb, m, n, k, atype, lda, btype, ldb, ctype, ldc, compute, algo = gpu.gemm_calls[0]
    assert (handle, ta, tb, m, n, k) == (4242, 0, 0, 32, 8, 16)
    assert (lda, ldb, ldc) == (32, 16, 32)
    assert (atype, btype, ctype, compute, algo) == (14, 14, 14, 68, -1)  # bf16, fp32 accumulate
    assert gpu.gemm_calls[1][6] == 2  # fp16


def test_dtypes_the_device_cannot_run_are_refused(fake_gpu) -> None:
    fake_gpu(major=7)  # Volta: no bf16 tensor cores
    backend = open_backend("cupy")
    assert "bf16" not in backend.gemm_dtypes and backend.default_gemm_dtypes == ("fp16",)
    with pytest.raises(UserError, match="compute capability 8.0"):
        backend.check_dtypes(["bf16"])
    with pytest.raises(UserError, match="cuBLASLt"):
        backend.check_dtypes(["fp8"])
    with pytest.raises(UserError, match="list bf16 or fp16 first"):
        plan_benchmarks(backend, quick=True, dtypes=("fp32",))


NO_DEVICE = "no CUDA device"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        # No driver at all: the runtime says cudaErrorInsufficientDriver, the driver version 0.
        ({"count_error": 35, "driver": 0}, "no CUDA device (no NVIDIA driver is installed)"),
        ({"count_error": 35, "driver": None}, "no CUDA device (no NVIDIA driver is installed)"),
        ({"count_error": 100}, "no CUDA device (cudaErrorNoDevice)"),
        ({"devices": 0}, "no CUDA device (CuPy sees 0 GPUs)"),
        (
            {"count_error": 35, "driver": 11080, "runtime": 12040},
            "the NVIDIA driver supports CUDA 11.8, older than CuPy's CUDA runtime 12.4",
        ),
        ({"count_error": 999}, "CUDA error while opening the GPU: cudaErrorUnknown"),
    ],
)
def test_no_usable_gpu_is_one_line_saying_why(fake_gpu, settings, message) -> None:
    fake_gpu(**settings)
    with pytest.raises(NoUsableGpu, match=re.escape(message)) as err:
        open_backend("cupy")
    text = str(err.value)
    assert "\n" not in text and text.startswith("no usable GPU: ")
    assert text.endswith("or measure the CPU with the numpy backend")
    assert (NO_DEVICE in text) != ("driver supports" in text or "CUDA error" in text)
    assert err.value.message("--backend numpy").endswith("the CPU with --backend numpy")


def test_device_index_beyond_the_machine_is_refused(fake_gpu) -> None:
    fake_gpu(devices=2)
    with pytest.raises(UserError, match="device = 3: this machine has 2 GPU"):
        open_backend("cupy", device=3)


def test_missing_cupy_names_the_extra_and_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(NoUsableGpu, match="CuPy is not installed") as err:
        open_backend("cupy")
    assert "pip install 'tokenfleet[gpu]'" in str(err.value)
    assert "the numpy backend" in str(err.value)


def test_cupy_that_fails_to_load_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """CuPy installed but its CUDA libraries missing: not "not installed"."""
    real_import = builtins.__import__

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "cupy":
            missing = "libcudart.so.12: cannot open shared object file"
            raise ImportError(missing, name="cupy_backends")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(NoUsableGpu, match=r"CuPy failed to load \(libcudart.so.12"):
        open_backend("cupy")


@pytest.mark.parametrize(
    ("backend", "settings", "message"),
    [
        ([], None, "no usable GPU: CuPy is not installed"),
        ([], {"count_error": 35, "driver": 0}, "no usable GPU: no CUDA device (no NVIDIA driver"),
        (["--backend", "cupy"], {"devices": 0}, "no usable GPU: no CUDA device"),
        (["--device", "3"], {"devices": 1}, "device = 3: this machine has 1 GPU(s)"),
    ],
)
def test_cli_never_measures_the_cpu_unless_asked(
    monkeypatch, fake_gpu, runner, tmp_path, backend, settings, message
) -> None:
    """The default backend is the GPU: without one it stops in one line naming --backend
    numpy, and measures nothing (the CPU included)."""
    if settings is None:
        monkeypatch.setitem(sys.modules, "cupy", None)
    else:
        fake_gpu(**settings)
    measured = []
    monkeypatch.setattr("tokenfleet.calibrate.microbench.run_microbenchmarks", measured.append)
    out = tmp_path / "p.toml"
    result = runner.invoke(cli, ["calibrate", *backend, "--quick", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {message}")
    if message.startswith("no usable GPU"):
        assert result.stderr.rstrip().endswith("or measure the CPU with --backend numpy")
        assert "older" not in result.stderr
    assert measured == [] and list(tmp_path.iterdir()) == []


def test_fake_gpu_calibration_recovers_the_programmed_curve(fake_gpu) -> None:
    """Events -> rows -> fit: the fitted curve is the one the fake device runs at."""
    gpu = fake_gpu(peak_tflops=0.8 * 312.0, m_half=64.0, bandwidth_gb_s=1800.0)
    backend = open_backend("cupy")
    plan = plan_benchmarks(backend, quick=True, shapes=(GemmShape("s", 512, 512),))
    result = run_microbenchmarks(backend, plan)
    assert {r["kind"] for r in result.rows} == {"gemm", "memory", "launch"}
    cal = build_calibration(backend.info, result, choose_datasheet(backend.info, "a100-80gb"))
    profile = cal.profile
    assert profile.gemm_eff_max == pytest.approx(0.8, rel=1e-3)
    assert profile.gemm_half_tokens == pytest.approx(64.0, rel=1e-3)
    assert profile.bw_eff == pytest.approx(1800.0 / 2039.0, rel=1e-3)
    # A bf16 curve against the datasheet: the tensor peak is the datasheet's, no fp32 figure.
    assert (profile.peak_tflops_bf16, profile.peak_tflops_fp32) == (312.0, 0.0)
    assert cal.summary["coefficients"]["peak_tflops_bf16"]["source"] == "datasheet: --gpu a100-80gb"
    assert cal.poor_fits == [] and "poor_fits" not in cal.meta
    launch = cal.meta["measured"]["kernel_launch_us"]
    assert launch == pytest.approx(gpu.launch_s * 1e6)
    assert cal.meta["kind"] == "gpu" and cal.meta["device"]["name"] == gpu.name
    assert "all-reduce not measured" in " ".join(cal.notes)


def test_nccl_all_reduce_spans_every_gpu(fake_gpu) -> None:
    gpu = fake_gpu(devices=2)
    backend = open_backend("cupy")
    plan = plan_benchmarks(backend, quick=True, shapes=(GemmShape("s", 64, 64),))
    result = run_microbenchmarks(backend, plan)
    rows = [r for r in result.rows if r["kind"] == "allreduce"]
    assert [r["bytes"] for r in rows] == list(plan.allreduce_bytes)
    assert all(r["devices"] == 2 for r in rows)
    counts = sorted({c[0] for c in gpu.allreduce_calls})
    assert counts == [b // 2 for b in plan.allreduce_bytes]  # fp16 elements
    assert {c[1:] for c in gpu.allreduce_calls} == {(6, 0)}  # NCCL_FLOAT16, NCCL_SUM


def test_small_weights_rotate_through_copies_larger_than_the_cache(fake_gpu) -> None:
    """A weight matrix that fits in L2 would be read from cache; the backend cycles through
    copies that together cover twice the L2, as a model's weights stream from HBM."""
    gpu = fake_gpu()
    backend = open_backend("cupy")
    weight_bytes = 1024 * 1024 * 2
    run = backend.gemm("fp16", 4, 1024, 1024)  # 2 MiB of weights against a 50 MiB L2
    for _ in range(120):
        run()
    pointers = gpu.weight_pointers
    distinct = len(set(pointers))
    assert distinct * weight_bytes >= 2 * backend.info.cache_bytes
    assert pointers[:distinct] == pointers[distinct : 2 * distinct]  # a fixed cycle
    big = backend.gemm("fp16", 4, 8192, 8192)  # 128 MiB: one copy is enough
    big()
    big()
    assert gpu.weight_pointers[-1] == gpu.weight_pointers[-2]
