"""Measuring devices through one array-module interface (`base.Backend`): CuPy on a GPU
(`cupy_backend`), NumPy on the CPU (`numpy_backend`), and `open_backend` to choose one.

The microbenchmarks are written once against `Backend`; each backend times work the way its
device needs: CUDA events around the kernels on a GPU, `perf_counter_ns` on the CPU. A CPU
measurement is labelled as one (`DeviceInfo.kind == "cpu"`), never passed off as a GPU.
"""

from __future__ import annotations

from tokenfleet.calibrate.backends.base import Backend
from tokenfleet.calibrate.backends.cupy_backend import open_cupy
from tokenfleet.calibrate.backends.numpy_backend import NumpyBackend
from tokenfleet.errors import UserError

BACKEND_NAMES = ("auto", "cupy", "numpy")


def open_backend(name: str, device: int = 0) -> tuple[Backend, str | None]:
    """The backend asked for, and for `auto` a note saying why the CPU was chosen (if it was).

    `cupy` never falls back: no CuPy, no GPU or an old driver is a UserError naming the fix.
    """
    if name not in BACKEND_NAMES:
        raise UserError(f"backend = {name}: choose one of {', '.join(BACKEND_NAMES)}")
    if name == "numpy":
        return NumpyBackend(), None
    try:
        return open_cupy(device), None
    except UserError as err:
        if name == "cupy":
            raise
        reason = str(err).split(";")[0]
        return NumpyBackend(), f"backend = auto: {reason}, so this measures the CPU with NumPy"
