"""The summary's distributions (latencies, each group's TTFT): every value kept, or a sketch.

Where requests.parquet is written whole (`--records all`) the summary keeps every value and
takes numpy's percentiles: exact, as they always were. Where it is not (`sample:F`, `none`,
meant for runs of 10^8 requests, whose latency columns alone would take 4 GB) each
distribution is a DDSketch (the `ddsketch` package, Datadog's reference implementation,
Masson et al., VLDB 2019): every quantile it returns is within RELATIVE_ACCURACY (1%) of the
value of rank q (n - 1) among the values added, in a few kilobytes whatever n is. Means and
sums are kept exactly in both.

The sketch's `add` is a Python call per value (about 1 us); a batch is instead bucketed with
numpy by the sketch's own key mapping and each bucket added once with its count as weight:
a value lands in its bucket, or, when it lies exactly on an edge, in the neighbour, whose
representative is also within the accuracy.
"""

from __future__ import annotations

import math

import numpy as np
from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping

RELATIVE_ACCURACY = 0.01
SKETCH_NOTE = f"DDSketch, within {RELATIVE_ACCURACY:.0%} of the exact value"  # the summary's words


class ExactValues:
    """Every value, in the order added."""

    exact = True

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def add(self, values: np.ndarray) -> None:
        self.parts.append(values)

    def values(self) -> np.ndarray:
        """Everything added, NaN (no value, e.g. no TPOT below two tokens) included."""
        return np.concatenate(self.parts) if self.parts else np.zeros(0)

    def nansum(self) -> float:
        return float(np.nansum(self.values()))

    def figures(self, percentiles: tuple[int, ...], mean: bool = True) -> dict:
        """{"mean", "pP"...} over the values that are not NaN (None when there are none)."""
        values = self.values()
        values = values[~np.isnan(values)]
        names = [f"p{p}" for p in percentiles]
        if values.size == 0:
            cuts = [None] * len(names)
        else:
            cuts = np.percentile(values, percentiles).tolist()
        out = {"mean": float(np.mean(values)) if values.size else None} if mean else {}
        return out | dict(zip(names, cuts, strict=True))


class SketchedValues:
    """A DDSketch of the values, with their exact count and sum."""

    exact = False

    def __init__(self) -> None:
        self.sketch = DDSketch(RELATIVE_ACCURACY)
        self.mapping = LogarithmicMapping(RELATIVE_ACCURACY)
        self.log_gamma = math.log(self.mapping.gamma)
        self.count = 0
        self.sum = 0.0

    def add(self, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        if values.size == 0:
            return
        self.count += int(values.size)
        self.sum += float(values.sum())
        positive = values[values > self.mapping.min_possible]
        zeros = values.size - positive.size  # latencies are never negative
        if zeros:
            self.sketch.add(0.0, float(zeros))
        keys, counts = np.unique(np.ceil(np.log(positive) / self.log_gamma), return_counts=True)
        value = self.mapping.value
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            self.sketch.add(value(int(key)), float(count))

    def nansum(self) -> float:
        return self.sum

    def figures(self, percentiles: tuple[int, ...], mean: bool = True) -> dict:
        out = {"mean": self.sum / self.count if self.count else None} if mean else {}
        for p in percentiles:
            q = self.sketch.get_quantile_value(p / 100) if self.count else None
            out[f"p{p}"] = None if q is None else float(q)
        return out


def distribution(exact: bool) -> ExactValues | SketchedValues:
    return ExactValues() if exact else SketchedValues()
