"""Pricing decode runs of many replicas in one vectorised StepTime call.

A vectorised call costs tens of microseconds whatever its length, about as much as pricing a
few dozen steps one by one. When a replica's run outlasts the steps priced so far, its pool's
pricer tops up, in the same call, every replica of the pool whose run is about to run out of
priced steps, so the fixed cost is shared. Step durations depend on the batch, not on the
clock, so pricing ahead is exact; steps priced past where a run ends are simply dropped.
"""

from __future__ import annotations

from itertools import accumulate

import numpy as np

_AHEAD_STEPS = 32  # how far ahead a top-up prices, in steps of the run that asked


class RunPricer:
    """Tops up the priced steps of the runs of the replicas sharing one StepTime."""

    __slots__ = ("step_s_array", "members")

    def __init__(self, step_time) -> None:
        self.step_s_array = step_time.step_s_array
        self.members: list = []  # the replicas priced here

    def top_up(self, asker, now: float, step_s: float) -> None:
        """`asker` has run out of priced steps at `now` (its steps last about `step_s`): price
        it, and every member whose priced steps end within half the horizon, up to the
        horizon, a few dozen steps ahead. (Estimated from each run's last step duration.)"""
        far = now + _AHEAD_STEPS * step_s
        low = now + _AHEAD_STEPS // 2 * step_s
        wanted = []
        for rep in self.members:
            times = rep.run_times
            k = len(times)
            left = rep.run_n_max - k  # > 0 only in a run with steps still to price
            if left <= 0:
                continue
            last = times[-1]
            if last < low or rep is asker:
                step = last - (times[-2] if k > 1 else rep.t_start)
                m = int((far - last) / step) + 1 if step > 0 else left
                wanted.append((rep, m if m < left else left))
        self.price(wanted)

    def price(self, wanted: list) -> None:
        """Append `m` priced steps to each (replica, m) run, in one vectorised call."""
        counts = np.fromiter((m for _, m in wanted), np.int64, len(wanted))
        decoders = np.fromiter((rep.n_dec for rep, _ in wanted), np.int64, len(wanted))
        first_ctx = np.fromiter(
            (rep.run_ctx0 + rep.n_dec * len(rep.run_times) for rep, _ in wanted),
            np.int64,
            len(wanted),
        )
        total = int(counts.sum())
        starts = np.cumsum(counts) - counts
        index = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
        d = np.repeat(decoders, counts)
        ctx = np.repeat(first_ctx, counts) + d * index
        durations = self.step_s_array(
            np.zeros(total, np.int64), np.zeros(total, np.float64), d, ctx
        ).tolist()
        offset = 0
        for rep, m in wanted:
            times = rep.run_times
            k = len(times)
            times.extend(accumulate(durations[offset : offset + m], initial=times[-1]))
            del times[k]  # `initial` repeats the last known time
            offset += m
