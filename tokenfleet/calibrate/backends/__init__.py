"""Measuring devices through one array-module interface (`base.Backend`): CuPy on a GPU
(`cupy_backend`), NumPy on the CPU (`numpy_backend`), and `open_backend` to choose one.

The microbenchmarks are written once against `Backend`; each backend times work the way its
device needs: CUDA events around the kernels on a GPU, `perf_counter_ns` on the CPU. A CPU
measurement is labelled as one (`DeviceInfo.kind == "cpu"`), never passed off as a GPU, and the
CPU is measured only when asked for: without a usable GPU the cupy backend stops (`NoUsableGpu`).
"""

from __future__ import annotations

from tokenfleet.calibrate.backends.base import Backend
from tokenfleet.calibrate.backends.cupy_backend import NoUsableGpu, open_cupy
from tokenfleet.calibrate.backends.numpy_backend import NumpyBackend
from tokenfleet.errors import UserError

BACKEND_NAMES = ("cupy", "numpy")

__all__ = ["BACKEND_NAMES", "Backend", "NoUsableGpu", "open_backend"]


def open_backend(name: str, device: int = 0) -> Backend:
    """The backend asked for; `cupy` never falls back to the CPU (a calibration that measured
    the CPU instead of the GPU would be a GPU profile describing a CPU)."""
    if name not in BACKEND_NAMES:
        raise UserError(f"backend = {name}: choose one of {', '.join(BACKEND_NAMES)}")
    if name == "numpy":
        return NumpyBackend()
    return open_cupy(device)
