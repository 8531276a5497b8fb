"""Percentile-bootstrap intervals over independent replications (`replay --seeds`), and the
test `compare` uses to say whether two runs differ by more than their seeds' noise.

Resamples are drawn with a fixed seed, so the same values always give the same interval.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def bootstrap_interval(values: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `values` (figures x replications): the percentile bootstrap interval of the
    row's mean. One set of resampled indices serves every row (figures of one replication stay
    together, as they were measured together)."""
    picks = _resamples(np.random.default_rng(BOOTSTRAP_SEED), values.shape[1])
    low, high = np.empty(len(values)), np.empty(len(values))
    for i, row in enumerate(values):  # a row at a time: resamples x N floats, not figures x that
        low[i], high[i] = _percentiles(row[picks].mean(axis=1), level)
    return low, high


def differs_beyond_noise(a: list[float], b: list[float], level: float = LEVEL) -> bool:
    """Whether the bootstrap interval of mean(b) - mean(a) (each run's replications resampled
    apart) excludes zero: the difference is larger than the seeds' noise."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    da = va[_resamples(rng, len(va))].mean(axis=1)
    db = vb[_resamples(rng, len(vb))].mean(axis=1)
    lo, hi = _percentiles(db - da, level)
    return bool(lo > 0 or hi < 0)


def _resamples(rng: np.random.Generator, n: int) -> np.ndarray:
    """RESAMPLES rows of n indices drawn with replacement."""
    return rng.integers(0, n, size=(RESAMPLES, n))


def _percentiles(samples: np.ndarray, level: float) -> np.ndarray:
    """The two-sided `level` percentile interval of `samples`."""
    tail = (1.0 - level) / 2 * 100
    return np.percentile(samples, [tail, 100 - tail])
