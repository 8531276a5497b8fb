"""Decode-only steps in closed form: where a *piece* of them ends, without listing them.

While a replica's batch holds only decodes and does not change, StepTime prices step m of the
stretch (m = 1, 2, ...) as A + B K_m - B K_{m-1}, so the m-th step ends at
t0 + m A + B K_m, where K_m = m c1 + d m (m - 1) / 2 sums the growing contexts of d sequences
(`StepTime.decode_piece` gives A, B and how long its regime holds). A run of any length then
costs O(1): its end, and the first step end at or after a given time (the root of the
quadratic, checked against the exact ends), are computed. `one_step_pieces` gives the same
interface to a step-time model without a closed form: every piece is one step long.
"""

from __future__ import annotations

from collections.abc import Callable
from math import sqrt

INF = float("inf")
NO_END = 1 << 62  # the step a piece valid for every context ends at


def one_step_pieces(step_s: Callable) -> Callable[[int, int], tuple[float, float, int, float]]:
    """`decode_piece` for a step-time model without one: each piece is a single step priced by
    `step_s`, so step ends are its durations summed in order (exact, but O(steps) per run)."""

    def decode_piece(decode_seqs: int, context_tokens: int) -> tuple[float, float, int, float]:
        return step_s(0, 0.0, decode_seqs, context_tokens), 0.0, 0, context_tokens + 1

    return decode_piece


class DecodePiece:
    """Steps [s0, s1) of `d` decoding sequences starting at t0: the closed form of their ends.

    One object per replica, restarted for each new piece (`number` tells pieces apart)."""

    __slots__ = ("s0", "s1", "t0", "a", "b", "c1", "d", "number", "price")

    def __init__(self, decode_piece: Callable[[int, int], tuple[float, float, int, float]]):
        self.price = decode_piece  # StepTime.decode_piece (or one_step_pieces)
        self.s0 = self.s1 = 0
        self.t0 = self.a = self.b = 0.0
        self.c1 = self.d = 0
        self.number = 0

    def restart(self, step: int, now: float, d: int, context: int) -> None:
        """A new piece from step `step` at `now`: d sequences holding `context` tokens in all
        (the step's own new tokens included)."""
        a, b, shift, ctx_end = self.price(d, context)
        self.s0 = step
        self.s1 = step - int((context - ctx_end) // d) if ctx_end < INF else NO_END
        self.t0 = now
        self.a = a
        self.b = b
        self.c1 = context + shift
        self.d = d
        self.number += 1

    def end_of(self, step: int) -> float:
        """End time of step `step` of the piece."""
        m = step - self.s0 + 1
        return self.t0 + (m * self.a + self.b * (m * self.c1 + self.d * (m * (m - 1) // 2)))

    def first_end_at(self, t: float) -> tuple[int, float]:
        """The first step of the piece that ends at or after `t`, and its end: the root of the
        quadratic, then checked against the exact ends (they never decrease with the step)."""
        t0, a, b, c1, d = self.t0, self.a, self.b, self.c1, self.d
        x = t - t0
        m = 1
        if x > 0.0:
            # m a + b (m c1 + d m (m - 1) / 2) >= x, i.e. q m^2 + r m >= x:
            q = 0.5 * b * d
            r = a + b * c1 - q
            m = int(2.0 * x / (r + sqrt(r * r + 4.0 * q * x)))
            if m < 1:  # (not max(): its keyword parsing costs more than the root)
                m = 1
        # From the estimate, down while the step before also ends at or after t, else up to
        # the first that does. (The end of step m is end_of's formula, inlined: a balancer or an
        # arrival asks once per request, and a call per end cost 2% of a replay.)
        found = 0
        while True:
            end = t0 + (m * a + b * (m * c1 + d * (m * (m - 1) // 2)))
            if end >= t:
                found, found_end = m, end
                if m == 1:
                    break
                m -= 1
            elif found:
                break
            else:
                m += 1
        return self.s0 + found - 1, found_end
