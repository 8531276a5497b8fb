"""Least-squares fits of the hardware coefficients of a profile from microbenchmark rows.

The curve forms are the ones StepTime prices a step with (see profile.py):

- GEMM: one call of C[M,n] = A[M,k] @ W[k,n] takes
  `max(2 M n k / (peak * gemm_eff(M)), bytes / (peak_bw * bw_eff))` with
  `gemm_eff(M) = gemm_eff_max * M / (M + gemm_half_tokens)`;
- memory: reading B bytes takes `t0 + B / (peak_bw * bw_eff)`;
- all-reduce over g GPUs of B bytes takes
  `allreduce_latency_us + 2 (g - 1) / g * B / (link_bw * link_eff)` (ring bus bandwidth).

Only NumPy: a small bounded Levenberg-Marquardt (`least_squares`) serves every nonlinear fit,
including the step-log fit in tokenfleet.calibrate.fit_steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Soft-L1 scale of the GEMM fit, in log time: a point slowed 3x by another process sharing the
# device (common on a shared CPU) pulls the curve far less than it would in least squares.
ROBUST_SCALE = 0.1


@dataclass(frozen=True)
class FitQuality:
    """How well a fitted curve reproduces its measurements."""

    r2: float  # coefficient of determination of log(time): curves span decades
    max_residual: float  # largest |predicted / measured - 1|
    median_residual: float  # median |predicted / measured - 1|
    points: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "r2": self.r2,
            "max_residual": self.max_residual,
            "median_residual": self.median_residual,
            "points": self.points,
        }


@dataclass(frozen=True)
class GemmFit:
    dtype: str
    gemm_eff_max: float
    gemm_half_tokens: float
    peak_tflops: float  # the peak the efficiencies are relative to
    best_tflops: float  # the highest achieved point
    quality: FitQuality


@dataclass(frozen=True)
class LineFit:
    """t = intercept_s + slope_s_per_unit * x."""

    intercept_s: float
    slope_s_per_unit: float
    quality: FitQuality


def quality(predicted: np.ndarray, measured: np.ndarray) -> FitQuality:
    predicted = np.asarray(predicted, dtype=float)
    measured = np.asarray(measured, dtype=float)
    rel = np.abs(predicted / measured - 1.0)
    log_m, log_p = np.log(measured), np.log(predicted)
    ss_tot = float(np.sum((log_m - log_m.mean()) ** 2))
    ss_res = float(np.sum((log_m - log_p) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return FitQuality(
        r2=r2,
        max_residual=float(rel.max()),
        median_residual=float(np.median(rel)),
        points=int(measured.size),
    )


def least_squares(
    residuals: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    robust_scale: float | None = None,
    x_scale: np.ndarray | None = None,
    max_iter: int = 200,
    tol: float = 1e-12,
) -> np.ndarray:
    """Minimise sum(residuals(x)**2) within [lower, upper]: Levenberg-Marquardt with a
    forward-difference Jacobian and steps clipped to the bounds. Small problems only (a handful
    of parameters), which is all a step-time model has. `x_scale` is each parameter's typical
    size, for the finite-difference steps (a parameter starting at 0 still gets a sane step).

    With `robust_scale` the loss is soft-L1 (quadratic below the scale, linear above), so one
    anomalous measurement cannot drag every coefficient towards itself."""
    if robust_scale is not None:
        plain, scale = residuals, robust_scale

        def residuals(x: np.ndarray) -> np.ndarray:
            r = plain(x)
            rho = 2.0 * scale**2 * (np.sqrt(1.0 + (r / scale) ** 2) - 1.0)
            return np.sign(r) * np.sqrt(rho)

    x = np.clip(np.asarray(x0, dtype=float), lower, upper)
    typical = np.ones_like(x) if x_scale is None else np.asarray(x_scale, dtype=float)
    r = residuals(x)
    cost = float(r @ r)
    damping = 1e-3
    for _ in range(max_iter):
        jac = _jacobian(residuals, x, r, upper, typical)
        grad = jac.T @ r
        hess = jac.T @ jac
        improved = converged = False
        while damping < 1e12:
            step = np.linalg.solve(hess + damping * np.diag(np.diag(hess) + 1e-12), -grad)
            trial = np.clip(x + step, lower, upper)
            r_trial = residuals(trial)
            cost_trial = float(r_trial @ r_trial)
            if cost_trial < cost:
                converged = cost - cost_trial <= tol * max(cost, 1e-300)
                x, r, cost = trial, r_trial, cost_trial
                damping = max(damping / 10, 1e-12)
                improved = True
                break
            damping *= 10
        if not improved or converged:
            break
    return x


def _jacobian(
    residuals: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    r: np.ndarray,
    upper: np.ndarray,
    typical: np.ndarray,
) -> np.ndarray:
    jac = np.empty((r.size, x.size))
    for i in range(x.size):
        h = 1e-6 * max(abs(x[i]), typical[i], 1e-12)
        if x[i] + h > upper[i]:
            h = -h  # step inward at an upper bound
        shifted = x.copy()
        shifted[i] += h
        jac[:, i] = (residuals(shifted) - r) / h
    return jac


def gemm_seconds(
    m: np.ndarray,
    n: np.ndarray,
    k: np.ndarray,
    itemsize: float,
    *,
    peak_flops: float,
    gemm_eff_max: float,
    gemm_half_tokens: float,
    peak_bw_bytes_s: float,
    bw_eff: float,
) -> np.ndarray:
    """StepTime's roofline for one GEMM: the slower of compute at gemm_eff(M) and memory."""
    eff = gemm_eff_max * m / (m + gemm_half_tokens)
    compute = 2.0 * m * n * k / (peak_flops * eff)
    memory = (m * k + k * n + m * n) * itemsize / (peak_bw_bytes_s * bw_eff)
    return np.maximum(compute, memory)


def fit_gemm(
    dtype: str,
    m: np.ndarray,
    n: np.ndarray,
    k: np.ndarray,
    seconds: np.ndarray,
    *,
    itemsize: float,
    peak_tflops: float,
    peak_bw_bytes_s: float,
    bw_eff: float,
) -> GemmFit:
    """Fit gemm_eff_max and gemm_half_tokens to measured GEMM times (log residuals, soft-L1),
    with the memory roof fixed by the separately fitted bandwidth."""
    m, n, k, seconds = (np.asarray(a, dtype=float) for a in (m, n, k, seconds))
    peak_flops = peak_tflops * 1e12
    achieved = 2.0 * m * n * k / seconds

    def predict(x: np.ndarray) -> np.ndarray:
        return gemm_seconds(
            m, n, k, itemsize, peak_flops=peak_flops, gemm_eff_max=x[0], gemm_half_tokens=x[1],
            peak_bw_bytes_s=peak_bw_bytes_s, bw_eff=bw_eff,
        )  # fmt: skip

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(predict(x) / seconds)

    # Start from the best point as the asymptote and a half-point on a coarse grid.
    eff_start = min(float(achieved.max()) / peak_flops, 1.0)
    starts = [np.array([eff_start, h]) for h in (1.0, 8.0, 32.0, 128.0, 512.0)]
    lower, upper = np.array([1e-4, 0.0]), np.array([1.0, 1e5])
    best = min(
        (least_squares(residuals, s, lower, upper, robust_scale=ROBUST_SCALE) for s in starts),
        key=lambda x: float(np.sum(np.sqrt(1 + (residuals(x) / ROBUST_SCALE) ** 2))),
    )
    return GemmFit(
        dtype=dtype,
        gemm_eff_max=float(best[0]),
        gemm_half_tokens=float(best[1]),
        peak_tflops=peak_tflops,
        best_tflops=float(achieved.max()) / 1e12,
        quality=quality(predict(best), seconds),
    )


def fit_line(x: np.ndarray, seconds: np.ndarray, intercept_s: float | None = None) -> LineFit:
    """Weighted linear least squares of t = a + b x with relative residuals (weights 1/t), so a
    microsecond point counts as much as a second one; a and b are kept >= 0. A known
    `intercept_s` is held fixed and only the slope is fitted."""
    x, seconds = np.asarray(x, dtype=float), np.asarray(seconds, dtype=float)
    u = x / seconds
    if intercept_s is None:
        design = np.column_stack([1.0 / seconds, u])
        coef, *_ = np.linalg.lstsq(design, np.ones_like(x), rcond=None)
        intercept_s = float(coef[0])
    if intercept_s < 0:  # no fixed cost visible: slope alone
        intercept_s = 0.0
    slope = float(np.sum(u * (1.0 - intercept_s / seconds)) / np.sum(u * u))
    slope = max(slope, 1e-30)
    return LineFit(intercept_s, slope, quality(intercept_s + slope * x, seconds))


def fit_bandwidth(
    nbytes: np.ndarray, seconds: np.ndarray, peak_bw_bytes_s: float, launch_s: float
) -> tuple[float, LineFit]:
    """bw_eff from reads of several buffer sizes through t = launch + bytes / (peak * bw_eff):
    the launch probe measures the fixed cost per call, so it must not count against the
    bandwidth, and fixing it leaves every point to pin down the streaming rate."""
    line = fit_line(nbytes, seconds, intercept_s=launch_s)
    return 1.0 / (line.slope_s_per_unit * peak_bw_bytes_s), line


def fit_allreduce(
    nbytes: np.ndarray, seconds: np.ndarray, devices: int, link_bw_bytes_s: float
) -> tuple[float, float, LineFit]:
    """(link_eff, allreduce_latency_us) from all-reduce times over message sizes (ring model)."""
    bus_bytes = 2.0 * (devices - 1) / devices * np.asarray(nbytes, dtype=float)
    line = fit_line(bus_bytes, seconds)
    return 1.0 / (line.slope_s_per_unit * link_bw_bytes_s), line.intercept_s * 1e6, line
