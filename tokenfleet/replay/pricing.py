"""Pricing the rest of a long decode run ahead, in one StepTime call.

A run that outlasts the steps priced so far makes the replica an event at the last priced step
end (a checkpoint), so each top-up should cover many steps: pricing one more step costs a small
fraction of a microsecond, a checkpoint event a few. A top-up prices as many steps again as the
run already has (at least _AHEAD_STEPS), so a run of n steps has O(log n) checkpoints and prices
at most about twice the steps it uses even when an arrival cuts it short. Step durations depend
on the batch, not on the clock, so pricing ahead is exact; steps priced past where a run ends
are simply dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_AHEAD_STEPS = 64  # the fewest steps a top-up prices


def decode_times_of(step_time) -> Callable[..., list[float]]:
    """`step_time.decode_times`, or the same from its `step_s_array` for a step-time model
    without it (end times of consecutive decode steps, summed in order, up to the first end at
    or after `until_s`)."""
    lean = getattr(step_time, "decode_times", None)
    if lean is not None:
        return lean
    step_s_array = step_time.step_s_array

    def decode_times(
        decode_seqs: int,
        context_tokens: int,
        steps: int,
        start_s: float,
        until_s: float = math.inf,
    ) -> list[float]:
        d = decode_seqs
        ends = np.array(
            step_s_array(0, 0.0, d, np.arange(context_tokens, context_tokens + d * steps, d)),
            dtype=np.float64,
        ).reshape(steps)
        ends[0] += start_s
        ends = ends.cumsum()
        return ends[: int(ends.searchsorted(until_s)) + 1].tolist()

    return decode_times


class RunPricer:
    """Tops up the priced steps of decode runs, for the replicas sharing one StepTime."""

    __slots__ = ("decode_times",)

    def __init__(self, step_time) -> None:
        self.decode_times = decode_times_of(step_time)

    def top_up(self, asker, now: float, step_s: float) -> None:
        """`asker` has run out of priced steps at `now` (its last step took `step_s`): price
        as many steps again as its run has, at least _AHEAD_STEPS, up to the run's end."""
        times = asker.run_times
        k = len(times)
        m = min(asker.run_n_max - k, k if k > _AHEAD_STEPS else _AHEAD_STEPS)
        d = asker.n_dec
        times += self.decode_times(d, asker.run_ctx0 + d * k, m, times[-1])
